#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 26 (nvidia-h200, carry [".gpu/w8a8"]; the Hopper
# libraries there match the code: `python3 -c 'import quantize; from qtool_kernels import sm90; print([l.path().name
# for l in sm90.ALL])'`, `bash dev/prebuild_sm90.sh` builds a missing one, ~16 min for all four):
#   call 1: bash dev/session27.sh pdltest xsab   (~5 min: the Inductor-PDL decode test with session 26's bounds; the
#           ring GEMV with x read through L1 against staged, QTOOL_GEMV_XS_MAX=0, on the 8B decode shapes)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# pdltest   tests/test_fusion.py -k inductor_pdl (failed once for fp8 in session 26 at the old 2% bound)
# xsab      dev/gemv_xs_ab.py, one process per QTOOL_GEMV_XS_MAX setting (it is read once): W4 g128 at 1, 2, 4 tokens
#           on 4096 x 6144, 4096 x 4096, 4096 x 28672, 14336 x 4096
cd "$(dirname "$0")/.."
LOG=session27.log
source dev/gpu_setup.sh

xsab() {
  for xs in default 0; do
    step "ring GEMV, QTOOL_GEMV_XS_MAX=$xs (default: x staged; 0: x through L1)"
    ( [ "$xs" = default ] || export QTOOL_GEMV_XS_MAX=$xs
      timeout -k 15 "${XS_TIMEOUT:-120}" python3 dev/gemv_xs_ab.py --json "$OUT/xs_$xs.json" > "/tmp/xsab_$xs.txt" 2>&1
      echo "exit $?" )
    grep -vE "Warning|warn" "/tmp/xsab_$xs.txt" | tail -12
  done
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(pdltest xsab)
for s in "${stages[@]}"; do "$s"; done
step "done"
