#!/usr/bin/env bash
# Session 10, call 2 (nvidia-h200, carry [".gpu/w8a8"]): the Hopper GEMM's variants for m <= 64 (256-row
# tiles; scale only for symmetric weights), their GPU tests, both tables at 1-64 tokens, and the stall
# reasons of the W4/W8 GEMMs at 16 tokens (call 1 showed W4 and W8 equally slow there: not the bytes).
#   bash dev/session10b.sh tests table4 table8 stalls   (as run in session 10; scale-only was dropped after it)
cd "$(dirname "$0")/.."
LOG=session10b.log
source dev/gpu_setup.sh
TOKENS=${TOKENS:-1,8,16,32,64,128}

tests() {
  step "GPU tests: the Hopper GEMMs (variants included) and the dispatcher's kernels"
  timeout 200 python3 -m pytest -q -m gpu tests/test_mixed_gpu.py tests/test_kernels_gpu.py --tb=line -rf 2>&1 | tail -15
}

table() {  # table FORMAT NAME
  step "$1 at every shape, M = $TOKENS"
  timeout 170 python3 benchmarks/bench_kernels.py --formats "$1" --tokens "$TOKENS" --json "$OUT/$2.json" 2>&1 | tail -3
  python3 dev/kernels_table.py "$OUT/$2.json"
}
table4() { table w4a16-g128 w4; }
table8() { table w8a16-channel w8; }

stalls() {
  step "ncu: stall reasons of the Hopper GEMMs at M = 16 beside wo_gemv and cuBLAS (8192 x 8192)"
  timeout 200 ncu --clock-control none --target-processes all --kernel-name-base demangled \
    --kernel-name regex:'(wo_gemv|wo_gemm|cutlass|nvjet)' --launch-count 60 \
    --metrics regex:'smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio',dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__issue_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__grid_size \
    --csv --page raw python3 dev/profile_kernels.py --shape 8192x8192 --only "_mm,wo_gemv M,wo_gemm M=16,bf16" \
    > "$OUT/ncu_stalls.csv" 2> "$OUT/ncu_stalls.err"
  echo "ncu exit $?"; tail -3 "$OUT/ncu_stalls.err"
  python3 dev/ncu_stalls.py "$OUT/ncu_stalls.csv"
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests table4 table8 stalls)
for s in "${stages[@]}"; do "$s"; done
step "done"
