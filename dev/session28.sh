#!/usr/bin/env bash
# Session 28's device calls (nvidia-h200, carry [".gpu/w8a8"]):
#   call 1: BB_FORMATS=4:128,8:-1,3:128,2:64 BB_TIMEOUT=200 bash dev/session28.sh bulk g2lean sanitize
#           (wo_gemv variant 4 "bulk" against the ring GEMV and its tests; two-group chunks on the lean / wide
#           launches; compute-sanitizer over the GEMV variants)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# bulk, g2lean  session 27's stages (dev/session27.sh)
# sanitize      compute-sanitizer memcheck and racecheck over every wo_gemv variant (ring 0/1/2, bulk 4) at 1-8 tokens
cd "$(dirname "$0")/.."
LOG=session28.log
source dev/gpu_setup.sh

bulk() { bash dev/session27.sh bulk; }
g2lean() { bash dev/session27.sh g2lean; }

sanitize() {
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool: wo_gemv variants 0, 1, 2, 4 (bf16, W4 g128 asym, W8 g32 sym)"
    timeout -k 10 "${SAN_TIMEOUT:-120}" compute-sanitizer --tool $tool --print-limit 5 python3 -m pytest -q -x -m gpu \
      tests/test_kernels_gpu.py -k "gemv_both_activation_paths and dtype0" -p no:logging 2>&1 | tail -8
  done
}

for stage in "$@"; do "$stage"; done
