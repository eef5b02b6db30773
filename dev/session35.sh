#!/usr/bin/env bash
# The next session's device calls, prepared in session 34 (no device time; nvidia-h200, carry [".gpu/w8a8",
# ".gpu/ext"]; `bash dev/prebuild_ext.sh` after any change under kernels/csrc, else gpu_setup.sh builds, ~50 s).
# First, here: `git merge fold-lean` (or `git apply dev/fold_lean.patch` where that branch is gone), then
# `rm -rf .gpu/ext && mv .gpu/ext_fold .gpu/ext` (prebuilt for it in session 34, stamp cf39333379c31dc6801b; else
# `bash dev/prebuild_ext.sh`); keep the change only if w8tests pass and profile / e2e show no loss.
#   call 1: bash dev/session35.sh w8tests profile overhead e2e   (~9 min: session 34's leaner folded w8_gemv, unmeasured:
#           its tests, fp8-block's decode step against fp8's, the four schemes end to end)
#   call 2 (if time is left): bash dev/session35.sh ncuw8 ncuw23   (ncu of fp8 and fp8-block's one-token w8_gemv;
#           of the W4 / W3 / W2 ring GEMV at one token: whether W3 and W2 are bound by issue, kernels/NOTES.md s34)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# w8tests  the w8_gemv GPU tests (every scale layout, the block widths the fold takes and leaves, the 2^-64 detour,
#          the gated epilogue with block scales)
# profile  dev/decode_profile.py, fp8 then fp8-block, batch 1: the 128 w8_gemv launches per step (session 33: 2323.1
#          vs 2409.5 us; fp8's kernels are unchanged, so the difference is the fold's)
# e2e      qtool bench llama-8b at batch 1 and 16, w8a8-int8 fp8 fp8-block w4a16 (bf16 in each process)
# overhead host time per eager call (dev/overhead_probe.py, 4096 x 4096 at 1, 16, 64 tokens; session 34's cached
#          layout and routes, measured on the CPU only: BENCHMARKS.md "CPU, 2026-12-04 session 34")
# ncuw23   ncu --set full of wo_gemv's lean launch at one token, W4 g128 / W3 g128 / W2 g64 on 8192 x 8192
#          (dev/profile_kernels.py cases; issue slots busy, stall reasons, SASS source pages to $OUT)
# ncuw8    ncu --set full of w8_gemv at one token through QuantLinear (dev/profile_w8.py), fp8 and fp8-block on
#          4096 x 6144, 4096 x 4096, 4096 x 28672, 14336 x 4096
cd "$(dirname "$0")/.."
LOG=session35.log
source dev/gpu_setup.sh

w8tests() {
  gputests w8tests "${W8_TIMEOUT:-200}" tests/test_w8a8_gpu.py tests/test_mlp.py -k "w8_gemv or swiglu"
}
profile() {
  for s in fp8 fp8-block; do
    step "decode step profile, $s, batch 1"
    timeout -k 15 "${PF_TIMEOUT:-110}" python3 dev/decode_profile.py --scheme "$s" --top 25 \
      --json "$OUT/profile-$s.json" 2>&1 | tail -30
  done
}
ncu_w8() {  # ncu_w8 SCHEME SHAPE TAG
  local scheme=$1 shape=$2 tag=$3
  step "ncu --set full: w8_gemv, $scheme on $shape, one token"
  timeout -k 10 "${NS_TIMEOUT:-90}" ncu --clock-control none --target-processes all --kernel-name-base demangled \
    --kernel-name regex:w8_gemv --launch-skip 1 --launch-count 1 --set full --import-source yes -f -o "/tmp/$tag" \
    python3 dev/profile_w8.py --scheme "$scheme" --shape "$shape" > "/tmp/$tag.log" 2>&1
  echo "ncu exit $?"; tail -1 "/tmp/$tag.log"
  ncu --import "/tmp/$tag.ncu-rep" --page details --csv > "$OUT/${tag}_details.csv" 2>&1
  ncu --import "/tmp/$tag.ncu-rep" --page source --csv --print-source sass > "$OUT/${tag}_sass.csv" 2>&1
  grep -E '"(Duration|DRAM Throughput|Executed Instructions|Registers Per Thread|Issue Slots Busy|Achieved Occupancy)"' \
    "$OUT/${tag}_details.csv" | awk -F'","' '{print $13 ": " $15}' | head -8
}
ncuw8() {
  for shape in 4096x6144 4096x4096 4096x28672 14336x4096; do
    ncu_w8 fp8 "$shape" "fp8_$shape"
    ncu_w8 fp8-block "$shape" "fb_$shape"
  done
}
overhead() {
  step "host time per eager call"
  timeout -k 10 "${OH_TIMEOUT:-120}" python3 dev/overhead_probe.py --shape 4096x4096 --tokens 1,16,64 2>&1 | tail -20
}
e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "" "${E2E_SCHEMES:-w8a8-int8 fp8 fp8-block w4a16}" 1,16 128 9
}

for stage in "$@"; do "$stage"; done
step "done"
