#!/usr/bin/env bash
# One short device call (issues 19 and 21): correctness of wo_gemm v3 and the 1-bit kernels, then
# the narrowest tables that answer the issues' goals. Results go to $OUT as they are measured.
#
#   carry [".gpu/w8a8"]: bash dev/session8.sh
cd "$(dirname "$0")/.."
LOG=session8.log
source dev/gpu_setup.sh

step "wo_gemm v3 GPU tests"
timeout 70 python3 -m pytest -q -x -m gpu tests/test_kernels_gpu.py -k "v3" 2>&1 | tail -6
step "1-bit GPU tests"
timeout 70 python3 -m pytest -q -x -m gpu tests/test_binary_gpu.py 2>&1 | tail -6
step "w1a16 M=1,8 and w1a1 M=4096 on 8192x8192 against bf16"
timeout 40 python3 benchmarks/bench_kernels.py --formats w1a16 --tokens 1,8 --shapes 8192x8192 \
  --json "$OUT/w1a16.json" 2>&1 | tail -8
timeout 40 python3 benchmarks/bench_kernels.py --formats w1a1 --tokens 4096 --shapes 8192x8192 \
  --json "$OUT/w1a1.json" 2>&1 | tail -6
step "wo_gemm v3 variants at M = 16, 32, 64"
timeout 150 python3 benchmarks/bench_kernels.py --formats "${V3_FORMATS:-w4a16-g128,w8a16-channel}" \
  --tokens 16,32,64 --shapes "${V3_SHAPES:-4096x14336,8192x8192,8192x28672}" --json "$OUT/v3.json" 2>&1 | tail -30
step "done"
