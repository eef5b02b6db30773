#!/usr/bin/env bash
# The device calls of session 67 (BENCHMARKS.md "session 67"): the wgmma weight-only kernel's activation ring.
# Session 67's first call (dev/session66.sh grid, ncu) found the consumers at 64-128 tokens waiting on the producer
# warp's stages (a third of the samples); TMA replaced it (the producer warps' A/B: commit a954ba8's dev/wgmma_ab.py).
#   bash dev/session67.sh stages          carry [".gpu/w8a8", ".gpu/ext"]
#   stages   the wgmma GPU tests, then W4 g128 on 4096 x 4096 and 8192 x 8192 at 16-128 tokens: each stage count's
#            plan and one-wave schedules against the route and bf16 (dev/wgmma_ab.py --stages)
#   depth, tmancu, h200, routecheck: below
#   later stages: dev/session66.sh's (grid, wgncu2, capacity), dev/session64.sh's (wgsan, wgroute, ...)
cd "$(dirname "$0")/.."
s67_stages=("$@")
set --
LOG=${LOG:-session67.log}
source dev/gpu_setup.sh
eval "$(sed -n '/^wgtests()/,/^}/p;/^wgab()/,/^}/p' dev/session64.sh)"
STAGE_COUNTS=${STAGE_COUNTS:-"0 4 8 12"}
stages() {  # the tests, then each stage count's plan and one-wave schedules (session 67 ran "pipes": stages x
  # cp.async producer warps, at commit a954ba8)
  WT_TIMEOUT=150 wgtests
  step "wgmma stage counts: $STAGE_COUNTS"
  timeout -k 10 "${WP_TIMEOUT:-240}" python3 dev/wgmma_ab.py --tokens "${WP_TOKENS:-16,32,64,128}" \
    --shapes "${WP_SHAPES:-4096x4096,8192x8192,14336x4096}" --stages "$STAGE_COUNTS" --json "$OUT/wgmma_stages.json" \
    2>&1 | grep -v "^USDT"
}
depth() {  # the lane rings' depth (kDepth, compile-time): variant libraries built here into .gpu/variants
  # (nvcc ... -DQTOOL_WGMMA_DEPTH=16 -o .gpu/variants/wgmma_d16.so; carry ".gpu/variants"), each tested, then timed
  local shapes=${WD_SHAPES:-4096x4096,8192x8192,14336x4096,4096x14336}
  step "wgmma depth 8 (the library)"
  timeout -k 10 "${WD_TIMEOUT:-100}" python3 dev/wgmma_ab.py --tokens 16,32,64,128 --shapes "$shapes" \
    --json "$OUT/wgmma_d8.json" 2>&1 | grep -v "^USDT"
  for lib in .gpu/variants/wgmma_d*.so; do
    local tag; tag=$(basename "$lib" .so)
    step "wgmma variant $tag: tests, then timed"
    QTOOL_WGMMA_LIBRARY=$PWD/$lib gputests "$tag" 60 tests/test_wgmma_gpu.py
    QTOOL_WGMMA_LIBRARY=$PWD/$lib timeout -k 10 "${WD_TIMEOUT:-100}" python3 dev/wgmma_ab.py --tokens 16,32,64,128 \
      --shapes "$shapes" --json "$OUT/$tag.json" 2>&1 | grep -v "^USDT"
  done
}
tmancu() {  # the TMA kernel's profile where it trails the route or bf16's bound most
  eval "$(sed -n '/^ncu_wg()/,/^}/p' dev/session66.sh)"
  NS_TIMEOUT=60 ncu_wg tma4k128 --shape 4096x4096 --tokens 128 --schedule 128,1,2
  NS_TIMEOUT=60 ncu_wg tma4k32 --shape 4096x4096 --tokens 32 --schedule 32,1,6
  NS_TIMEOUT=60 ncu_wg tma8k16 --shape 8192x8192 --tokens 16 --schedule 16,1,2
}
h200() {  # the H200's wgmma cells (every schedule on the 8B shapes) and issue 19's whole table (owed since session 58)
  WA_SHAPES=4096x4096,4096x6144,14336x4096,4096x14336,8192x8192,4096x28672 WA_TOKENS=16,32,64,128 \
    WA_TIMEOUT=${WA_TIMEOUT:-130} wgab > /dev/null
  python3 dev/wgmma_cells.py "$OUT/wgmma_ab.json"  # the cells it leads (here: --merge them into kernels/tuning.py)
  TABLE_TIMEOUT=${TABLE_TIMEOUT:-330} wotable
}
routecheck() {  # the measured wgmma cells through the dispatcher (QuantLinear), W4 g128
  timeout -k 10 200 python3 benchmarks/bench_kernels.py --formats w4a16-g128 --shapes 4096x4096,4096x6144 \
    --tokens 16,32,64,128 --json "$OUT/routecheck.json" > /tmp/rc.txt 2>&1; echo "exit $?"; tail -14 /tmp/rc.txt
}
final() {  # the TMA-only kernel: its tests, then the plan and schedules on two shapes against the route
  WT_TIMEOUT=90 wgtests
  WA_SHAPES=4096x4096,8192x8192 WA_TOKENS=16,32,64,128 WA_TIMEOUT=60 wgab > /dev/null
  python3 - "$OUT/wgmma_ab.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    sp = r["speedup"]
    best = max((v, k) for k, v in sp.items() if v and k not in ("route", "mixed") and "*" not in k)
    print(r["K"], r["N"], r["M"], "route %.2f plan %.2f best %s %.2f" % (sp["route"], sp["wgmma"], best[1], best[0]))
PY
}
for s in "${s67_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session66.sh "$s"; fi
done
