#!/usr/bin/env bash
# Session 26's device calls (nvidia-h200, carry [".gpu/w8a8"]; the Hopper libraries there match the code:
# `python3 -c 'import quantize; from qtool_kernels import sm90; print([l.path().name for l in sm90.ALL])'`):
#   call 1 (914f766): bash dev/session26.sh wotests woab pdltest   (wo_gemm's deep pipeline and one-kernel split-K:
#           tests, the A/B of its four forms beside bf16 and the dispatcher; session 25's loosened Inductor-PDL test).
#           The forms lost (BENCHMARKS.md, session 26) and were removed; their stages are gone with them.
#   call 2: bash dev/session26.sh ncusrc e2ew4   (per-instruction stall samples of wo_gemm and the routed CUTLASS
#           W4 GEMM on the small layer; 8B w4a16 end to end)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# ncusrc    Nsight Compute, full set with per-SASS-line stall samples, of wo_gemm at 16 tokens (4096 x 4096 and
#           4096 x 28672) and the routed CUTLASS W4A16 GEMM at 64 tokens on 4096 x 4096: $OUT/*_details.csv, *_sass.csv
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
