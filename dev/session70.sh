#!/usr/bin/env bash
# The device calls of session 70 (BENCHMARKS.md "session 70"): branch wgmma-tall measured, and the wgmma-lead
# variant (.gpu/variants/wgmma_lead2.so, built from branch wgmma-lead) timed beside it in the same call.
#   bash dev/session70.sh first70        carry [".gpu/w8a8", ".gpu/ext", ".gpu/variants"]
#   bash dev/session70.sh second70       carry [".gpu/w8a8", ".gpu/ext"] (main with the tall tile merged)
#   bash dev/session70.sh check70        the cells merged after second70, through the dispatcher
cd "$(dirname "$0")/.."
s70_stages=("$@")
set --
LOG=${LOG:-session70.log}
source dev/gpu_setup.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
abtable() {  # print a dev/wgmma_ab.py JSON: route, plan, split GEMV, the best schedules
  python3 - "$1" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    sp = r["speedup"]
    top = sorted(((v, k) for k, v in sp.items() if v and k not in ("route", "mixed", "split") and "*" not in k),
                 reverse=True)
    print(r["K"], r["N"], r["M"], "asym" if r["asym"] else "sym", "route %.2f (%s) plan %.2f split %s" % (
        sp["route"], r["route"], sp["wgmma"], "%.2f" % sp["split"] if sp.get("split") else "-"),
        " ".join("%s %.2f" % (k, v) for v, k in top[:4]))
PY
}
lead() {  # the lead-2 variant: its tests, then every schedule on two shapes
  local lib=.gpu/variants/wgmma_lead2.so
  step "wgmma lead 2: tests, then every schedule"
  QTOOL_WGMMA_LIBRARY=$PWD/$lib gputests tests_lead2 "${WT_TIMEOUT:-90}" tests/test_wgmma_gpu.py -k "not tall"
  QTOOL_WGMMA_LIBRARY=$PWD/$lib timeout -k 10 "${WV_TIMEOUT:-120}" python3 dev/wgmma_ab.py \
    --tokens 16,32,64,128 --shapes 4096x4096,8192x8192 --json "$OUT/ab_lead2.json" > /dev/null 2>&1
  abtable "$OUT/ab_lead2.json"
}
second70() {  # main with the tall tile merged: its cells against the split GEMV at 9-16 tokens, asym at 16, then
  # issue 19's table through the dispatcher and the profile of the kernel at 128 tokens
  echo "GPU $GPU"
  step "wgmma GPU tests, the routes"; gputests tests_wg 120 tests/test_wgmma_gpu.py tests/test_wgmma_plan.py tests/test_routes.py
  step "tall cells against the split GEMV, 9-16 tokens"
  timeout -k 10 120 python3 dev/wgmma_ab.py --tall --tokens 9,12,16 --shapes 4096x4096,4096x6144,3072x3072 \
    --json "$OUT/ab_split.json" > /dev/null 2>&1; abtable "$OUT/ab_split.json"
  timeout -k 10 60 python3 dev/wgmma_ab.py --tall --asym --tokens 16 --shapes 4096x4096,4096x14336 \
    --json "$OUT/ab_asym.json" > /dev/null 2>&1; abtable "$OUT/ab_asym.json"
  step "issue 19: W4 g128 sym / asym and W8 per channel, every shape"
  timeout -k 15 "${S70_TABLE_TIMEOUT:-220}" python3 benchmarks/bench_kernels.py --formats w4a16-g128,w4a16-g128-asym,w8a16-channel \
    --tokens 1,16,32,64,128,256 --json "$OUT/wo_table.json" > /tmp/wo_table.txt 2>&1
  echo "exit $?"; tail -45 /tmp/wo_table.txt
  [ -n "${S70_NCU:-}" ] && bash dev/session68.sh ncu128
}
check70() {  # the merged cells through the dispatcher: zero points on the plan, 4096 x 6144 / 3072 x 3072 at 9-16
  echo "GPU $GPU"
  timeout -k 10 60 python3 dev/wgmma_ab.py --no-forced --asym --tokens 16 --shapes 4096x4096,4096x14336 \
    --json "$OUT/check_asym.json" > /dev/null 2>&1; abtable "$OUT/check_asym.json"
  timeout -k 10 80 python3 dev/wgmma_ab.py --no-forced --tokens 9,16 --shapes 4096x6144,3072x3072,4096x4096 \
    --json "$OUT/check_sym.json" > /dev/null 2>&1; abtable "$OUT/check_sym.json"
}
first70() {
  echo "GPU $GPU"
  bash dev/session68.sh tall
  lead
}
for s in "${s70_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session68.sh "$s"; fi
done
