#!/usr/bin/env bash
# Session 33's device calls (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]; `bash dev/compile_check.sh` here after any
# kernel edit, `bash dev/prebuild_ext.sh` after any change under kernels/csrc: gpu_setup.sh loads .gpu/ext's library
# where its stamp matches, else builds, ~50 s). Ran in session 33: `prefill sanitize` (BENCHMARKS.md "session 33";
# racecheck over attn_probe's graphs ran past its limit, dev/session33b.sh ran it over dev/san_attention.py), and
# the gated-x stages of session 32's plan (the gated x lost and was removed).
#   e2e: qtool bench at batch 1 / 16 for the four schemes with the current defaults; bf16 in each process (~7 min)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# e2e         qtool bench llama-8b at batch 1 and 16, w8a8-int8 fp8 fp8-block w4a16
# prefill     qtool bench llama-8b --prefill-len 2048 at batch 1, the three W8A8 schemes
# sanitize    compute-sanitizer memcheck over dev/attn_probe.py (both variants, small), racecheck over
#             dev/san_attention.py (eager launches: the probe's graphs take minutes under racecheck)
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
  step "compute-sanitizer memcheck: decode attention (both variants)"
  timeout -k 10 "${SZ_TIMEOUT:-120}" compute-sanitizer --tool memcheck --print-limit 20 python3 dev/attn_probe.py \
    --batches 1,16 --lengths 161,600 --splits 0 --variants 1,2 > "/tmp/san_attn_memcheck.txt" 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|^B=" "/tmp/san_attn_memcheck.txt" | tail -6
  step "compute-sanitizer racecheck: decode attention (dev/san_attention.py)"
  timeout -k 10 "${SZ_TIMEOUT:-150}" compute-sanitizer --tool racecheck --print-limit 20 python3 dev/san_attention.py \
    > "/tmp/san_attn_racecheck.txt" 2>&1
  echo "exit $?"; grep -E "RACECHECK SUMMARY|launches done" "/tmp/san_attn_racecheck.txt" | tail -3
}

for stage in "$@"; do "$stage"; done
step "done"
