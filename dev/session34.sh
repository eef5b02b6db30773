#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 33 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"];
# `bash dev/prebuild_ext.sh` after any change under kernels/csrc, else gpu_setup.sh builds, ~50 s).
#   call 1: bash dev/session34.sh ncuw8 e2e   (~9 min: why fp8-block's one-token w8_gemv is 0.7 us slower per call
#           than fp8's, ncu of both at the 8B's four shapes; the four schemes end to end with the current defaults)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# ncuw8   ncu --set full (details and SASS source pages to $OUT) of w8_gemv at one token through QuantLinear
#         (dev/profile_w8.py), fp8 and fp8-block on 4096 x 6144, 4096 x 4096, 4096 x 28672, 14336 x 4096
# e2e     qtool bench llama-8b at batch 1 and 16, w8a8-int8 fp8 fp8-block w4a16 (bf16 in each process)
cd "$(dirname "$0")/.."
LOG=session34.log
source dev/gpu_setup.sh

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
e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "" "${E2E_SCHEMES:-w8a8-int8 fp8 fp8-block w4a16}" 1,16 128 9
}

for stage in "$@"; do "$stage"; done
step "done"
