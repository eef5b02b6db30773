#!/usr/bin/env bash
# The next session's first device call, prepared at the end of session 19 (nvidia-h200, carry [".gpu/w8a8"]: the
# Hopper libraries were rebuilt after session 19's call 4 for a comment in sm90_common.cuh only, same code; `tests`
# is their first run):
#   bash dev/session20.sh                   (~6 min)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 summary
# tests    every GPU test (session 19's call 4 ran the kernel files only; test_sm90_gemm_rejects_unknown_config was
#          changed after it: configuration 9 became skinny + PDL)
# prefill  8B w4a16 and w8a8-int8 prefill 1 x 2048 and decode at batch 1 and 16 with session 19's defaults (issue 19:
#          prefill >= 0.97x, session 14 1.15x; issue 18: prefill >= 1.5x, decode >= 1.6x / 1.5x)
cd "$(dirname "$0")/.."
LOG=session20.log
source dev/gpu_setup.sh

prefill() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "" "w4a16 w8a8-int8" 1,16 2048 8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests prefill)
for s in "${stages[@]}"; do "$s"; done
step "done"
