#!/usr/bin/env bash
# Session 18, call 4 (nvidia-h200, carry [".gpu/w8a8"]): the ring GEMV's PDL made the default for prepared weights
# (variant + 16, weight_only.PDL_STATIC_WEIGHT), w8_gemv and w1_gemv back to call 2's code.
#   bash dev/session18d.sh                                   (~2.5 min)
cd "$(dirname "$0")/.."
LOG=session18d.log
source dev/gpu_setup.sh

step "weight-only kernel GPU tests"
timeout 120 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py tests/test_lowbit_gpu.py tests/test_wo_stream_gpu.py \
  --tb=short -rf > "$OUT/tests.txt" 2>&1
summarize "$OUT/tests.txt"
step "one token, every shape: W4 / W3 / W2 (ring GEMV, PDL), W8A16 and W1A16"
timeout 100 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w3a16-g128,w2a16-g64,w8a16-channel,w1a16 --tokens 1 \
  --json "$OUT/m1.json" 2>&1 | grep "│"
step "done"
