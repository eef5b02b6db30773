#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 30 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"];
# run `bash dev/compile_check.sh` here first after any kernel edit, and `bash dev/prebuild_ext.sh` after any change
# to kernels/csrc: gpu_setup.sh loads .gpu/ext's library where its stamp matches the sources and it loads there,
# else builds as before, ~50 s). Session 31 had no device time (the retry of session 30's stop, whose CI had failed
# on transformers 5.25), so the plan is unchanged:
#   call 1: bash dev/session31.sh attntests attnprobe attne2e   (~8 min)
#           session 30's decode attention kernel (csrc/decode_attention.cu, variant 1: online softmax) passed its 251
#           GPU tests and ran 2.1x faster than cuDNN's SDPA on the 8B decode's shape (batch 1, 161 positions: 7.8 vs
#           16.5 us; batch 16: 10.0 vs 23.0), but its end-to-end A/B was cut off by the session's device time. The
#           two-pass kernel (variant 2, attention_two_pass.cuh) was written after, unmeasured. Tests of both, the
#           probe of both in one process, then the 8B decode at batch 1 and 16 with SDPA / variant 1 / variant 2 in
#           one process per scheme (dev/prefetch_sweep.py --attention).
#   call 2: AE_SCHEMES=w4a16 bash dev/session31.sh attne2e profile roles   (~8 min; profile: one int8 decode step's
#           kernels with the kernel, to see that Inductor keeps the cache update in place around the op and which of
#           SDPA's input kernels and memsets are gone; roles: each W4 GEMV role's time in the model against the same
#           layers back to back and spaced by a small kernel, kernels/NOTES.md "Session 31")
#   call 3: with the faster variant the default (quantize/attention.py BACKEND = "kernel"; kernel_choice() in
#           decode_attention.cu or kernels/attention.py VARIANT): bash dev/session31.sh e2e   (issue 18 / 19's decode
#           figures for BENCHMARKS.md and the README: qtool bench at batch 1 and 16, four schemes, bf16 beside)
#   if time is left: bash dev/session31.sh asymtable   (~2 min; issue 19's W4 g128 goals are for sym and asym, and
#           every table since session 25 timed the symmetric format only: benchmarks/bench_kernels.py
#           --formats w4a16-g128-asym, zero points per row and group, as AWQ writes them)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# attntests   the decode attention GPU tests (both variants)
# attnprobe   dev/attn_probe.py: both variants vs SDPA on the packed query vs SDPA over repeated KV heads
# attnncu     ncu stall reasons of both kernels at batch 1 and 16 with 161 positions (if call 1 leaves a question)
# attne2e     the 8B decode ($AE_SCHEMES, default w8a8-int8; w4a16 in call 2) at batch 1 and 16 with --attention
#             sdpa,kernel1,kernel2 and --skip-base (tokens/s compared directly)
# roles       dev/decode_profile.py --roles: each W4 GEMV role in the model / back to back / spaced (no Inductor PDL)
# asymtable   (dev/gpu_setup.sh) benchmarks/bench_kernels.py --formats w4a16-g128-asym
cd "$(dirname "$0")/.."
LOG=session31.log
source dev/gpu_setup.sh

attntests() {
  step "decode attention GPU tests (both variants)"
  gputests attntests "${AT_TIMEOUT:-180}" tests/test_decode_attention.py tests/test_attention.py
}
attnprobe() {
  step "decode attention probe: variants 1 and 2 vs SDPA"
  timeout -k 10 "${AP_TIMEOUT:-200}" python3 dev/attn_probe.py --json "$OUT/attnprobe.json" 2>&1 | grep "^B=" | tail -12
}
attne2e() {
  step "8B decode: SDPA / decode attention variant 1 / variant 2, one process per scheme"
  timeout -k 15 "${AE_TIMEOUT:-250}" python3 dev/prefetch_sweep.py --schemes ${AE_SCHEMES:-w8a8-int8} --mb 0 \
    --attention "${AE_ATTN:-sdpa,kernel1,kernel2}" --batch-sizes "${AE_BATCHES:-1,16}" --skip-base --json "$OUT/attne2e.jsonl" 2>&1 | grep -E '^\{' | tail -8
}
profile() {
  step "decode profile, w8a8-int8, batch 1, QTOOL_DECODE_ATTENTION=kernel (variant ${PROF_VARIANT:-0})"
  QTOOL_DECODE_ATTENTION=kernel QTOOL_DECODE_ATTENTION_KERNEL=${PROF_VARIANT:-1} timeout -k 15 "${PF_TIMEOUT:-150}" \
    python3 dev/decode_profile.py --scheme w8a8-int8 --top 30 --json "$OUT/profile-kernel.json" 2>&1 \
    | grep -E "^\{| us " | tail -32
}
roles() {  # session 31's question: the W4 GEMVs' time per role in the model against back to back / spaced
  step "decode roles: w4a16, batch 1, Inductor's kernels without PDL"
  QTOOL_INDUCTOR_PDL=0 timeout -k 15 "${RO_TIMEOUT:-180}" python3 dev/decode_profile.py --scheme w4a16 --roles --top 12 \
    --json "$OUT/roles-w4.json" 2>&1 | grep -E "^\{|^role| us " | tail -20
}
attnncu() {  # stall reasons of each kernel on the 8B decode's shape (161 positions) at batch 1 and 16
  for v in 1 2; do
    for b in 1 16; do
      step "ncu: decode attention variant $v, batch $b, 161 positions"
      timeout -k 10 "${AN_TIMEOUT:-90}" ncu --clock-control none --kernel-name-base demangled \
        -k regex:'decode_attention_kernel|two_pass' --launch-skip 2 --launch-count 2 \
        --metrics regex:'smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio',dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__grid_size \
        --csv --page raw python3 dev/attn_probe.py --batches $b --lengths 161 --splits 0 --variants $v \
        > "$OUT/attn_ncu_v${v}_b$b.csv" 2> "$OUT/attn_ncu_v${v}_b$b.err"
      echo "ncu exit $?"; tail -2 "$OUT/attn_ncu_v${v}_b$b.err"
      python3 dev/ncu_stalls.py "$OUT/attn_ncu_v${v}_b$b.csv"
    done
  done
}
e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "1-16" "${E2E_SCHEMES:-w8a8-int8 fp8 fp8-block w4a16}" 1,16 128 10
}

for stage in "$@"; do "$stage"; done
step "done"
