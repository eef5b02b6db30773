#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 10 (carry [".gpu/w8a8"], prebuilt with
# bash dev/prebuild_sm90.sh; re-run it first if kernels/csrc/sm90 changed):
#   nvidia-h200:    bash dev/session11.sh e2e4 e2e8a8          (~6 min)
#   nvidia-h200-x2: bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 summary   (issue 20, nothing to carry)
# e2e4    8B-shaped W4A16 decode / prefill against bf16 with the shuffled Hopper GEMM serving batch 16
#         (session 10's run hit its 150 s stage timeout: quantization, packing and two compilations);
# e2e8a8  the W8A8 presets end to end (issue 18: goals 1.6x / 1.5x decode, 1.5x prefill).
cd "$(dirname "$0")/.."
LOG=session11.log
source dev/gpu_setup.sh

bench8b() {  # bench8b SCHEME TIMEOUT
  step "8B decode / prefill, $1 vs bf16"
  timeout "$2" python3 -m quantize bench llama-8b --random-weights --scheme "$1" --decode-tokens 32 \
    --batch-sizes 1,16 --prefill-len 2048 --json "$OUT/e2e-$1.json" 2>&1 | tail -14
}
e2e4() { bench8b w4a16 300; }
e2e8a8() { for s in fp8 w8a8-int8 fp8-block; do bench8b "$s" 200; done; }

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(e2e4 e2e8a8)
for s in "${stages[@]}"; do "$s"; done
step "done"
