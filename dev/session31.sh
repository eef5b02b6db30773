#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 30 (nvidia-h200, carry [".gpu/w8a8"]; run
# `bash dev/compile_check.sh` here first after any kernel edit):
#   call 1: bash dev/session31.sh attntests attntests2 attnprobe attnprobe2 attne2e   (~8 min)
#           session 30's decode attention kernel (csrc/decode_attention.cu) passed its 251 GPU tests and ran 2.1x
#           faster than cuDNN's SDPA on the 8B decode's shape (batch 1, 161 positions: 7.8 vs 16.5 us; batch 16: 10.0
#           vs 23.0), but its end-to-end A/B was cut off by the session's device time. The two-pass kernel
#           (attention_two_pass.cuh, QTOOL_DECODE_ATTENTION_KERNEL=2) was written after: tests and probe for both,
#           then the 8B decode at batch 1 and 16 with QTOOL_DECODE_ATTENTION=sdpa / kernel (one process each).
#   call 2: with the faster kernel the default (QTOOL_DECODE_ATTENTION's default "kernel" in quantize/attention.py,
#           kernel_choice() in decode_attention.cu): bash dev/session31.sh e2e   (issue 18 / 19's decode figures
#           for BENCHMARKS.md and the README: qtool bench at batch 1 and 16 for the four schemes, bf16 beside)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# attntests   the decode attention GPU tests (the online kernel), attntests2 the same with the two-pass kernel
# attnprobe   dev/attn_probe.py (kernel vs SDPA packed vs SDPA over repeated KV heads), attnprobe2 the two-pass kernel
# attne2e     the 8B decode (w8a8-int8, fp8, w4a16) at batch 1 and 16 with QTOOL_DECODE_ATTENTION=sdpa / kernel
#             ($KERNEL_CHOICE picks the kernel: 1 online, 2 two-pass), --skip-base: tokens/s compared directly
cd "$(dirname "$0")/.."
LOG=session31.log
source dev/gpu_setup.sh

attntests() {
  step "decode attention GPU tests, QTOOL_DECODE_ATTENTION_KERNEL=${1:-1}"
  QTOOL_DECODE_ATTENTION_KERNEL=${1:-1} timeout -k 10 "${AT_TIMEOUT:-150}" python3 -m pytest -q -m gpu \
    tests/test_decode_attention.py tests/test_attention.py --tb=short -rf -p no:logging > "$OUT/attntests${1:-1}.txt" 2>&1
  summarize "$OUT/attntests${1:-1}.txt"
}
attntests2() { attntests 2; }
attnprobe() {
  step "decode attention probe, QTOOL_DECODE_ATTENTION_KERNEL=${1:-1}"
  QTOOL_DECODE_ATTENTION_KERNEL=${1:-1} timeout -k 10 "${AP_TIMEOUT:-150}" python3 dev/attn_probe.py \
    --json "$OUT/attnprobe${1:-1}.json" 2>&1 | grep "^B=" | tail -12
}
attnprobe2() { attnprobe 2; }
attne2e() {
  for backend in sdpa kernel; do
    step "8B decode, QTOOL_DECODE_ATTENTION=$backend (kernel ${KERNEL_CHOICE:-1})"
    QTOOL_DECODE_ATTENTION=$backend QTOOL_DECODE_ATTENTION_KERNEL=${KERNEL_CHOICE:-1} timeout -k 15 \
      "${AE_TIMEOUT:-200}" python3 dev/prefetch_sweep.py --schemes ${AE_SCHEMES:-w8a8-int8,w4a16} --mb 0 \
      --batch-sizes 1,16 --skip-base --json "$OUT/attne2e-$backend.jsonl" 2>&1 | grep -E '^\{' | tail -4
  done
}
e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "1-16" "${E2E_SCHEMES:-w8a8-int8 fp8 fp8-block w4a16}" 1,16 128 10
}

for stage in "$@"; do "$stage"; done
step "done"
