#!/usr/bin/env bash
# Session 26's device calls (nvidia-h200, carry [".gpu/w8a8"]; the Hopper libraries there match the code:
# `python3 -c 'import quantize; from qtool_kernels import sm90; print([l.path().name for l in sm90.ALL])'`):
#   call 1 (914f766): bash dev/session26.sh wotests woab pdltest   (wo_gemm's deep pipeline and one-kernel split-K:
#           tests, the A/B of its four forms beside bf16 and the dispatcher; session 25's loosened Inductor-PDL test).
#           The forms lost (BENCHMARKS.md, session 26) and were removed; their stages are gone with them.
#   call 2: bash dev/session26.sh ncusrc e2ew4   (per-instruction stall samples of wo_gemm and the routed CUTLASS
#           W4 GEMM on the small layer; 8B w4a16 end to end)
#   call 3: bash dev/session26.sh wotests wosweep ncuwo   (wo_gemm from the profile: group parameters a piece ahead,
#           zero-point pairs once per group, the activation copies' addresses once per block, one barrier per piece)
#   call 4: bash dev/session26.sh tests gemvsmall e2ew4b  (every GPU test after the wo_gemm change; wo_gemm against
#           the GEMVs at 5-8 tokens on the small layers; 8B w4a16 decode with the new wo_gemm routes)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# ncusrc    Nsight Compute, full set with per-SASS-line stall samples, of wo_gemm at 16 tokens (4096 x 4096 and
#           4096 x 28672) and the routed CUTLASS W4A16 GEMM at 64 tokens on 4096 x 4096: $OUT/*_details.csv, *_sass.csv
# wotests   wo_gemm's GPU tests and the raw-kernel / QuantLinear tests that route through it
# wosweep   dev/mixed_sweep.py on the 4096-row layers at 8-128 tokens (W4 g128, W8 per channel): wo_gemm beside every
#           Hopper schedule, for tuning.py's routes
# ncuwo     ncu --set full of wo_gemm at 16 tokens on 4096 x 28672 after the change (details and SASS pages)
# gemvsmall bench_kernels on 4096 x 4096 and 4096 x 6144 at 5-8 tokens (W4 g128, W8 per channel): every kernel column
# e2ew4b    8B w4a16 decode steps at batch 1 and 16 (prefill 128), one process
# pdltest   the Inductor-PDL decode test (bounded by norms since session 25)
# e2ew4     8B w4a16 decode batch 1 / 16 and prefill 1 x 2048 (session 25's run hit its 145 s limit)
# wotable   issue 19's whole weight-only table (gpu_setup.sh)
cd "$(dirname "$0")/.."
LOG=session26.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

ncusrc() {  # one launch per case, --set full with the source page: where each kernel's warps stall, per SASS line
  for c in "4096x4096|w4 wo_gemm M=16|wo16" "4096x28672|w4 wo_gemm M=16|wo16w" "4096x4096|w4 w4_mm routed M=64|mm64"; do
    IFS='|' read -r shape only tag <<< "$c"
    step "ncu --set full: $only on $shape"
    timeout -k 10 "${NS_TIMEOUT:-120}" ncu --clock-control none --target-processes all --kernel-name-base demangled \
      --kernel-name regex:'wo_gemm_kernel|GemmUniversal' --launch-skip 1 --launch-count 1 --set full \
      --import-source yes -f -o "/tmp/$tag" python3 dev/profile_kernels.py --shape "$shape" --only "$only" \
      > "/tmp/$tag.log" 2>&1
    echo "ncu exit $?"; tail -2 "/tmp/$tag.log"
    ncu --import "/tmp/$tag.ncu-rep" --page details --csv > "$OUT/${tag}_details.csv" 2>&1
    ncu --import "/tmp/$tag.ncu-rep" --page source --csv --print-source sass > "$OUT/${tag}_sass.csv" 2>&1
    ls -la "$OUT/${tag}_details.csv" "$OUT/${tag}_sass.csv"; head -c 600 "$OUT/${tag}_sass.csv"; echo
  done
}
wotests() {
  step "wo_gemm GPU tests"
  timeout -k 15 "${WT_TIMEOUT:-200}" python3 -m pytest -q -m gpu tests/test_wo_gemm_gpu.py tests/test_kernels_gpu.py \
    --tb=short -rf -p no:logging > "$OUT/wotests.txt" 2>&1
  summarize "$OUT/wotests.txt"
}
wosweep() {
  step "mixed sweep on the 4096-row layers, 8-128 tokens"
  timeout -k 15 "${WS_TIMEOUT:-260}" python3 dev/mixed_sweep.py --formats w4a16-g128,w8a16-channel \
    --shapes 4096x4096,4096x6144 --tokens 8,16,17,32,64,128 --budget "${WS_BUDGET:-230}" --json "$OUT/wosweep.json" \
    > /tmp/wosweep.txt 2>&1
  echo "exit $?"; grep -vE "Warning|warn" /tmp/wosweep.txt | tail -30
}
ncuwo() {
  step "ncu --set full: wo_gemm M=16 on 4096x28672"
  timeout -k 10 120 ncu --clock-control none --target-processes all --kernel-name-base demangled \
    --kernel-name regex:'wo_gemm_kernel' --launch-skip 1 --launch-count 1 --set full --import-source yes -f -o /tmp/wo16n \
    python3 dev/profile_kernels.py --shape 4096x28672 --only "w4 wo_gemm M=16" > /tmp/wo16n.log 2>&1
  echo "ncu exit $?"
  ncu --import /tmp/wo16n.ncu-rep --page details --csv > "$OUT/wo16n_details.csv" 2>&1
  ncu --import /tmp/wo16n.ncu-rep --page source --csv --print-source sass > "$OUT/wo16n_sass.csv" 2>&1
  ls -la "$OUT"/wo16n_*.csv
}
gemvsmall() {
  step "weight-only small layers at 5-8 tokens, every kernel"
  timeout -k 15 "${GS_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel \
    --shapes 4096x4096,4096x6144 --tokens 5,6,7,8 --json "$OUT/gemvsmall.json" > /tmp/gemvsmall.txt 2>&1
  echo "exit $?"; tail -20 /tmp/gemvsmall.txt
}
e2ew4b() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-b" "w4a16" 1,16 128 10
}
pdltest() {
  step "Inductor-PDL decode test"
  timeout -k 15 "${PT_TIMEOUT:-150}" python3 -m pytest -q -m gpu tests/test_fusion.py -k inductor_pdl -p no:logging \
    --tb=short > "$OUT/pdltest.txt" 2>&1
  summarize "$OUT/pdltest.txt"
}
e2ew4() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "" "w4a16" 1,16 2048 12
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(ncusrc e2ew4)
for s in "${stages[@]}"; do "$s"; done
step "done"
