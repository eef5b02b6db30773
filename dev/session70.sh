#!/usr/bin/env bash
# The device calls of session 70 (BENCHMARKS.md "session 70"): branch wgmma-tall measured, and the wgmma-lead
# variant (.gpu/variants/wgmma_lead2.so, built from branch wgmma-lead) timed beside it in the same call.
#   bash dev/session70.sh first70        carry [".gpu/w8a8", ".gpu/ext", ".gpu/variants"]
cd "$(dirname "$0")/.."
s70_stages=("$@")
set --
LOG=${LOG:-session70.log}
source dev/gpu_setup.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
lead() {  # the lead-2 variant: its tests, then every schedule on two shapes
  local lib=.gpu/variants/wgmma_lead2.so
  step "wgmma lead 2: tests, then every schedule"
  QTOOL_WGMMA_LIBRARY=$PWD/$lib gputests tests_lead2 "${WT_TIMEOUT:-90}" tests/test_wgmma_gpu.py -k "not tall"
  QTOOL_WGMMA_LIBRARY=$PWD/$lib timeout -k 10 "${WV_TIMEOUT:-120}" python3 dev/wgmma_ab.py \
    --tokens 16,32,64,128 --shapes 4096x4096,8192x8192 --json "$OUT/ab_lead2.json" > /dev/null 2>&1
  python3 - "$OUT/ab_lead2.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    sp = r["speedup"]
    top = sorted(((v, k) for k, v in sp.items() if v and k not in ("route", "mixed") and "*" not in k), reverse=True)
    print(r["K"], r["N"], r["M"], "route %.2f plan %.2f" % (sp["route"], sp["wgmma"]),
          " ".join("%s %.2f" % (k, v) for v, k in top[:4]))
PY
}
first70() {
  echo "GPU $GPU"
  bash dev/session68.sh tall
  lead
}
for s in "${s70_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session68.sh "$s"; fi
done
