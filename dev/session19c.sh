#!/usr/bin/env bash
# Session 19, call 4 (nvidia-h200, carry [".gpu/w8a8"]: the Hopper libraries rebuilt for libqtool_sm90's per-call
# PDL bit, dev/prebuild_sm90.sh): the final code's tests, the W8A8 table, the 8B W4A16 decode.
#   bash dev/session19c.sh                     (~9 min)
# tests8   the W8A8, mixed-input and weight-only kernel GPU tests (the W8A8 GEMM launched with PDL at <= 64 tokens,
#          scaled_mm.SM90_PDL; w8_gemv's twin for static weights, tuning.gemv_pdl; the ring GEMV after ZSUM's removal)
# w8a8     benchmarks/bench_w8a8.py at 1-256 tokens, every shape, with torch's anchors (issue 18: M <= 16 >= 1.7x,
#          M = 64 >= 1.4x, M = 256 >= 1.5x)
# e2e      8B decode w4a16 at batch 1 and 16 (prefill 128), issue 19's decode goals (2.5x / 2.0x; session 14: 2.00x /
#          1.51x), the ring GEMV's PDL in the model for the first time
cd "$(dirname "$0")/.."
LOG=session19c.log
source dev/gpu_setup.sh

tests8() {
  step "W8A8, mixed-input and weight-only kernel GPU tests"
  timeout 150 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mixed_gpu.py tests/test_kernels_gpu.py \
    tests/test_lowbit_gpu.py tests/test_wo_stream_gpu.py --tb=short -rf > "$OUT/tests8.txt" 2>&1
  summarize "$OUT/tests8.txt"
}

w8a8() {
  step "W8A8 at 1-256 tokens"
  timeout 150 python3 benchmarks/bench_w8a8.py --tokens 1,8,16,32,64,128,256 --json "$OUT/w8a8.json" 2>&1 | tail -52
}

e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "" "w4a16" 1,16 128 8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests8 w8a8 e2e)
for s in "${stages[@]}"; do "$s"; done
step "done"
