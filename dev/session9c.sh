#!/usr/bin/env bash
# Session 9, last device call (nvidia-h200, carry [".gpu/w8a8"], about 3 minutes): the W8A16 wgmma GEMM
# (libqtool_sm90_mixed8, prebuilt here) against float64 with the W4 one, the 1-bit tests with the int64
# matmul fixed, then the W8A16 dispatcher table at every shape (the new sm90_mixed column beside wo_gemm,
# v3 and dequant + cuBLAS) and W4A16 at the token counts session9.sh left out.
#
#   bash dev/session9c.sh [tests] [w8] [w4]
cd "$(dirname "$0")/.."
LOG=session9c.log
source dev/gpu_setup.sh

tests() {
  step "GPU tests: Hopper W4A16 / W8A16, 1-bit, every weight-only kernel"
  timeout 150 python3 -m pytest -q -m gpu tests/test_mixed_gpu.py tests/test_binary_gpu.py tests/test_kernels_gpu.py \
    --tb=line -rf 2>&1 | tail -15
}

w8() {
  step "W8A16 per channel, every shape"
  timeout 150 python3 benchmarks/bench_kernels.py --formats w8a16-channel --tokens 8,16,32,64,128,256,1024 \
    --json "$OUT/w8.json" 2>&1 | tail -52
  python3 dev/kernels_table.py "$OUT/w8.json"
}

w4() {
  step "W4A16 g128 beside tinygemm at 1, 16, 128, 1024 tokens"
  timeout 75 python3 benchmarks/bench_kernels.py --formats w4a16-g128 --tokens 1,16,128,1024 \
    --json "$OUT/w4.json" 2>&1 | tail -22
  python3 dev/kernels_table.py "$OUT/w4.json"
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests w8 w4)
for s in "${stages[@]}"; do "$s"; done
step "done"
