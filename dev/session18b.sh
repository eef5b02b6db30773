#!/usr/bin/env bash
# Session 18, call 2 (nvidia-h200, carry [".gpu/w8a8"]), after call 1's A/Bs made three changes the defaults:
# W1A16 grouped scales as the A values' magnitude, w8_gemv's int8 -> bf16 pair decode, and W1A1 shape 6 removed.
#   bash dev/session18b.sh                                   (~9 min)
# w1       W1A1 / W1A16 on 8192 x 8192 (issue 21's two goals) and W1A16 on four shapes at 1-8 tokens
# w8       W8A8 at 1-32 tokens, every shape with the anchors (issue 18, M <= 16 >= 1.7x), W8A16 per channel 1-16
# san      compute-sanitizer memcheck over the W1A16 and w8_gemv tests (small shapes)
# tests    every GPU test
# e2e      8B decode, w8a8-int8 and fp8 at batch 1 and 16 (issue 18's decode goals)
cd "$(dirname "$0")/.."
LOG=session18b.log
source dev/gpu_setup.sh

w1() {
  step "W1A1 and W1A16, 8192 x 8192"
  timeout 120 python3 benchmarks/bench_kernels.py --formats w1a1,w1a16 --shapes 8192x8192 \
    --json "$OUT/w1.json" 2>&1 | tail -12
  step "W1A16, four shapes, 1-8 tokens"
  timeout 100 python3 benchmarks/bench_kernels.py --formats w1a16 --tokens 1,2,4,8 \
    --shapes 8192x8192,4096x4096,4096x14336,28672x8192 --json "$OUT/w1shapes.json" 2>&1 | tail -20
}

w8() {
  step "W8A8 at 1-32 tokens, every shape"
  timeout 200 python3 benchmarks/bench_w8a8.py --tokens 1,2,4,8,16,32 --json "$OUT/w8a8.json" 2>&1 | tail -60
  step "W8A16 per channel at 1-16 tokens"
  timeout 100 python3 benchmarks/bench_kernels.py --formats w8a16-channel --tokens 1,4,8,16 \
    --json "$OUT/w8a16.json" 2>&1 | tail -40
}

san() {
  step "compute-sanitizer memcheck: W1A16 and w8_gemv (small shapes)"
  timeout 120 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q -x -m gpu \
    tests/test_binary_gpu.py -k "w1_gemv and dtype0 and (4096-1536 or 1000-72)" 2>&1 | tail -2
  timeout 120 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q -x -m gpu \
    tests/test_w8a8_gpu.py -k "test_w8_gemv and int8 and channel and (1536 or 16400)" 2>&1 | tail -2
}


e2e() {
  bench8b "" "w8a8-int8 fp8" 1,16 128 14
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(w1 w8 san tests e2e)
for s in "${stages[@]}"; do "$s"; done
step "done"
