#!/usr/bin/env bash
# The device calls of session 68 (BENCHMARKS.md "session 68"). Session 68's first call measured branch
# wgmma-kgroups (`bash dev/session67.sh kgroups` on that branch: k groups 0-5% on three cells, the bulk variant
# 5-25% slower; not merged).
#   bash dev/session68.sh first68         carry [".gpu/w8a8", ".gpu/ext"]
#   first68  on an H200: what sessions 59-67 owe it (dev/session67.sh h200: the wgmma cells, issue 19's table);
#            on an H100: issue 18's end to end on this card, never measured on one (8B fp8 and w8a8-int8, batches
#            1 / 16, prefill 1 x 2048)
#   variants  the library and each .gpu/variants/wgmma_*.so (carry it): tests, then every schedule on three shapes
#   adaptive68  on an H200 h200short (the wgmma cells on two shapes, W4 / W8 at 1-256 tokens), on an H100 variants
#            (two shapes) and ncu128; the call session 68 could not get
#   tall      branch wgmma-tall: its tests, then the tall tile's schedules beside the others (~250 s)
#   ncu128    Nsight Compute on main's kernel, 4096 x 4096 at 128 tokens (w1s2)
#   later stages: dev/session67.sh's
cd "$(dirname "$0")/.."
s68_stages=("$@")
set --
LOG=${LOG:-session68.log}
source dev/gpu_setup.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
e2e18() {  # issue 18's end-to-end figures for SCHEMES on this card
  E2E_TIMEOUT=${E2E_TIMEOUT:-250} bench8b "" "${SCHEMES:-fp8 w8a8-int8}" 1,16 2048 14
}
variants() {  # the library and each variant build in .gpu/variants (carry it): tests, then W4 g128's schedules
  # (lead2, on branch wgmma-lead: nvcc ... -DQTOOL_WGMMA_LEAD=2 -o .gpu/variants/wgmma_lead2.so, the HGMMAs queued
  # two chunks deep; kernels/NOTES.md "Session 68")
  local lib tag
  for lib in "" .gpu/variants/wgmma_*.so; do
    [ -n "$lib" ] && [ ! -f "$lib" ] && continue
    tag=$(basename "${lib:-wgmma_default}" .so)
    step "wgmma library $tag: tests, then every schedule"
    QTOOL_WGMMA_LIBRARY=${lib:+$PWD/$lib} gputests "tests_$tag" "${WT_TIMEOUT:-90}" tests/test_wgmma_gpu.py
    QTOOL_WGMMA_LIBRARY=${lib:+$PWD/$lib} timeout -k 10 "${WV_TIMEOUT:-120}" python3 dev/wgmma_ab.py \
      --tokens "${WV_TOKENS:-16,32,64,128}" --shapes "${WV_SHAPES:-4096x4096,8192x8192,4096x14336}" \
      --json "$OUT/ab_$tag.json" > /dev/null 2>&1
    python3 - "$OUT/ab_$tag.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    sp = r["speedup"]
    top = sorted(((v, k) for k, v in sp.items() if v and k not in ("route", "mixed") and "*" not in k), reverse=True)
    print(r["K"], r["N"], r["M"], "route %.2f plan %.2f" % (sp["route"], sp["wgmma"]),
          " ".join("%s %.2f" % (k, v) for v, k in top[:4]))
PY
  done
}
ncu128() {  # main's kernel (no fence a chunk since session 67's last call) where it trails most: 4096 x 4096, 128
  eval "$(sed -n '/^ncu_wg()/,/^}/p' dev/session66.sh)"
  NS_TIMEOUT=70 ncu_wg k4k128 --shape 4096x4096 --tokens 128 --schedule 128,1,2
}
tall() {  # branch wgmma-tall: the GPU tests (the tall tile's among them), then every schedule with the tall tile's
  # one-wave ones ("w1s2t") on the shapes where the kernel trails the route at 16-64 tokens
  step "wgmma tall tile: tests, then every schedule"
  gputests tests_tall "${WT_TIMEOUT:-120}" tests/test_wgmma_gpu.py tests/test_wgmma_plan.py
  timeout -k 10 "${WV_TIMEOUT:-200}" python3 dev/wgmma_ab.py --tall --tokens "${WV_TOKENS:-16,32,64}" \
    --shapes "${WV_SHAPES:-4096x4096,8192x8192,4096x14336,14336x4096}" --json "$OUT/ab_tall.json" > /dev/null 2>&1
  python3 - "$OUT/ab_tall.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    sp = r["speedup"]
    top = sorted(((v, k) for k, v in sp.items() if v and k not in ("route", "mixed") and "*" not in k), reverse=True)
    tall = max(((v, k) for k, v in sp.items() if v and k.endswith("t")), default=(0, "-"))
    print(r["K"], r["N"], r["M"], "route %.2f plan %.2f" % (sp["route"], sp["wgmma"]),
          " ".join("%s %.2f" % (k, v) for v, k in top[:4]), "| tall best %s %.2f" % (tall[1], tall[0]))
PY
}
h200short() {  # what fits the session's last minutes on an H200: the wgmma cells on the two shapes they lead on
  # the H100, then W4 g128 and W8 per channel at issue 19's batches on every shape
  eval "$(sed -n '/^wgab()/,/^}/p' dev/session64.sh)"
  WA_SHAPES=4096x4096,4096x6144 WA_TOKENS=16,32,64,128 WA_TIMEOUT=80 wgab > /dev/null
  python3 dev/wgmma_cells.py "$OUT/wgmma_ab.json"
  step "issue 19: W4 g128 and W8 per channel, every shape"
  timeout -k 15 170 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel \
    --tokens 1,16,32,64,128,256 --json "$OUT/wo_table.json" > /tmp/wo_table.txt 2>&1
  echo "exit $?"; tail -30 /tmp/wo_table.txt
}
adaptive68() {  # an H200 takes some of what sessions 59-68 owe it; an H100 the variants' A/B and the profile
  case "$GPU" in
    *H200*) h200short ;;
    *) WV_SHAPES=4096x4096,8192x8192 variants; ncu128 ;;
  esac
}
first68() {
  case "$GPU" in
    *H200*) bash dev/session67.sh h200 ;;
    *) e2e18 ;;
  esac
}
for s in "${s68_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session67.sh "$s"; fi
done
