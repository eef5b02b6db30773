#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 17 (nvidia-h200, carry [".gpu/w8a8"]: the Hopper
# libraries were rebuilt in session 17, same names):
#   call 1: bash dev/session18.sh tests w8tests w1tests w1 w1ab w1a1ab w8ab ncu1     (~10 min)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 summary
# tests    every GPU test (the W1A1 epilogue now loads its row and column terms once: unmeasured)
# w8tests  the W8A8 / W8A16 GPU tests again with QTOOL_W8_GEMV=32 (int8 codes for bf16 decoded in pairs 0,2 / 1,3)
# w1tests  the 1-bit GPU tests with QTOOL_W1_GEMV=scaled (W1A16 group scales as the A values' magnitude)
# w1ab     W1A16 default vs QTOOL_W1_GEMV=scaled, 1-8 tokens, four shapes (382 -> 356 instructions per chunk, 112 -> 80
#          registers): if scaled wins, make it the default for grouped scales (issue 21's last 2-3%)
# w1a1ab   W1A1 shape 5 vs 6 (QTOOL_W1A1=6: the staged epilogue, 16-byte row stores), tests then 1024-8192 tokens
# w1       W1A1 / W1A16 on 8192 x 8192 (issue 21: W1A16 3.87-3.98x, W1A1 3.70-4.20x at 4096 tokens in session 17)
# w8ab     w8_gemv with switch 0 and 32 in one build (dev/gemv_probe.py; int8 rows only differ): if 32 wins at
#          1-16 tokens on most shapes, make it the default (issue 18 M <= 16 >= 1.7x; issue 19 W8A16 M = 1 >= 1.75x)
# ncu1     Nsight stall reasons of w1_gemv, w1a1_gemm, binarize and w8_gemv (int8, one token) after the changes
cd "$(dirname "$0")/.."
LOG=session18.log
source dev/gpu_setup.sh


w8tests() {
  step "W8 GPU tests with QTOOL_W8_GEMV=32"
  QTOOL_W8_GEMV=32 timeout 200 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_kernels_gpu.py \
    -k "w8 or rows or gemv" --tb=short -rf > "$OUT/w8tests.txt" 2>&1
  summarize "$OUT/w8tests.txt"
}

w1() {
  step "W1A1 and W1A16, 8192 x 8192"
  timeout 120 python3 benchmarks/bench_kernels.py --formats w1a1,w1a16 --shapes 8192x8192 \
    --json "$OUT/w1.json" 2>&1 | tail -12
}

w1tests() {
  step "1-bit GPU tests with QTOOL_W1_GEMV=scaled"
  QTOOL_W1_GEMV=scaled timeout 120 python3 -m pytest -q -m gpu tests/test_binary_gpu.py --tb=short -rf \
    > "$OUT/w1tests.txt" 2>&1
  summarize "$OUT/w1tests.txt"
}

w1ab() {  # the same build, separate processes (QTOOL_W1_GEMV is read once)
  step "W1A16: default vs scales in A, 1-8 tokens, four shapes"
  for v in default scaled; do
    QTOOL_W1_GEMV=$v timeout 100 python3 benchmarks/bench_kernels.py --formats w1a16 --tokens 1,2,4,8 \
      --shapes 8192x8192,4096x4096,4096x14336,28672x8192 --json "$OUT/w1ab_$v.json" > /dev/null 2>&1
  done
  python3 dev/ab_table.py "$OUT/w1ab_default.json" "$OUT/w1ab_scaled.json" --labels default,scaled
}

w1a1ab() {  # QTOOL_W1A1 is read once per process
  step "W1A1: shape 5 vs 6 (staged epilogue)"
  QTOOL_W1A1=6 timeout 120 python3 -m pytest -q -m gpu tests/test_binary_gpu.py -k "w1a1 or takes_the_1bit" \
    --tb=short -rf > "$OUT/w1a1_6_tests.txt" 2>&1
  summarize "$OUT/w1a1_6_tests.txt"
  for v in 5 6; do
    QTOOL_W1A1=$v timeout 100 python3 benchmarks/bench_kernels.py --formats w1a1 --tokens 1024,4096,8192 \
      --shapes 8192x8192 --json "$OUT/w1a1_$v.json" > /dev/null 2>&1
  done
  python3 dev/ab_table.py "$OUT/w1a1_5.json" "$OUT/w1a1_6.json" --labels "shape 5","shape 6"
}

w8ab() {
  step "w8_gemv: switch 0 vs 32 (int8 pairs), 1-16 tokens"
  timeout 300 python3 dev/gemv_probe.py --switches 0,32 --tokens 1,4,8,16 --json "$OUT/w8ab.json" 2>&1 | tail -60
}

ncu1() {
  step "ncu: stall reasons, 1-bit kernels and w8_gemv"
  SHAPE=8192x8192 ONLY="w1a1,w1_gemv,bf16 F.linear M=1" OUT="$OUT/ncu" bash dev/ncu_session.sh stalls 2>&1 | tail -12
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests w8tests w1tests w1 w1ab w1a1ab w8ab ncu1)
for s in "${stages[@]}"; do "$s"; done
step "done"
