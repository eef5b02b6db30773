#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 32 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"];
# `bash dev/compile_check.sh` here after any kernel edit, `bash dev/prebuild_ext.sh` after any change under
# kernels/csrc: gpu_setup.sh loads .gpu/ext's library where its stamp matches, else builds, ~50 s).
#   call 1: bash dev/session33.sh e2e   (~7 min: qtool bench at batch 1 / 16 for the four schemes with this
#           session's defaults: the decode attention kernel; bf16 in each process)
#   call 2: bash dev/session33.sh prefill sanitize   (~6 min: issue 18's prefill 1 x 2048 for the W8A8 schemes,
#           int8 at 1.48x against 1.5x when last measured; compute-sanitizer memcheck / racecheck of the decode
#           attention kernels, which issue 18's "done when" asks of every kernel)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# e2e         qtool bench llama-8b at batch 1 and 16, w8a8-int8 fp8 fp8-block w4a16
# prefill     qtool bench llama-8b --prefill-len 2048 at batch 1, the three W8A8 schemes
# sanitize    compute-sanitizer memcheck and racecheck over dev/attn_probe.py (both variants, small)
cd "$(dirname "$0")/.."
LOG=session33.log
source dev/gpu_setup.sh

e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "" "${E2E_SCHEMES:-w8a8-int8 fp8 fp8-block w4a16}" 1,16 128 9
}
prefill() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b p2k "${PF_SCHEMES:-w8a8-int8 fp8 fp8-block}" 1 2048 4
}
sanitize() {
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool: decode attention (both variants)"
    timeout -k 10 "${SZ_TIMEOUT:-120}" compute-sanitizer --tool "$tool" --print-limit 20 python3 dev/attn_probe.py \
      --batches 1,16 --lengths 161,600 --splits 0 --variants 1,2 > "/tmp/san_attn_$tool.txt" 2>&1
    echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^B=" "/tmp/san_attn_$tool.txt" | tail -6
  done
}

for stage in "$@"; do "$stage"; done
step "done"
