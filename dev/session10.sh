#!/usr/bin/env bash
# The next device calls (nvidia-h200, carry [".gpu/w8a8"]), prepared in session 9 without device time left:
#   call 1: bash dev/session10.sh tests table4 table8        (~5 min)
#   call 2: bash dev/session10.sh stalls b1 gptqprof e2e      (~7 min)
# tests   the Hopper mixed-input GEMMs with 128-k stages (new, unmeasured) beside the 64-k ones, every
#         weight-only kernel (wo_gemv's lean variant: 4 blocks per SM), the 1-bit kernels;
# table4  W4A16 g128 at every shape and M = 1 ... 4096, with torch's tinygemm and the 128-k columns:
#         set weight_only / mixed_mm thresholds from it (MIXED_MIN_M, a ktile choice, STREAM_K_MAX_M, and
#         the GEMV's variant: wo_gemv_lean against wo_gemv at M = 1 and 8, e.g. where N / 16 blocks
#         exceed 3 per SM);
# table8  the same for W8A16 per channel (28672 x 8192 was cut off in session 9);
# stalls  Nsight Compute stall reasons per kernel (why v4 and w1_gemv do not stream: kernels/NOTES.md);
# b1      the b1 mma.sync peak of the H200 (never measured): whether W1A1's 4x goal is reachable with
#         mma.sync (its GEMM runs 1.15 P MAC/s, kernels/NOTES.md);
# gptqprof gptq_quantize per 8B linear, and GPTQ's inverse factor as now vs one Cholesky + one
#         triangular inverse (issue 20's serial chain: down_proj's 14336^2 inverse on every rank);
# tablelow the native 2- and 3-bit GEMV (w3a16 g128, w2a16 g64) at 1-16 tokens (goals 3.0x / 3.3x at M = 1);
# e2e     8B-shaped decode and prefill, W4A16 and W8A16 against bf16 (issue 19's end-to-end goals).
cd "$(dirname "$0")/.."
LOG=session10.log
source dev/gpu_setup.sh
TOKENS=${TOKENS:-1,8,16,32,64,128,256,1024,4096}

tests() {
  step "GPU tests: Hopper W4A16 / W8A16 (64- and 128-k stages), 1-bit, every weight-only kernel"
  timeout 200 python3 -m pytest -q -m gpu tests/test_mixed_gpu.py tests/test_binary_gpu.py tests/test_kernels_gpu.py \
    tests/test_lowbit_gpu.py \
    --tb=line -rf 2>&1 | tail -15
}

lowtests() {
  step "GPU tests: native 2/3-bit, weight-only kernels, GPTQ on the GPU (the Hessian as a sum)"
  timeout 150 python3 -m pytest -q -m gpu tests/test_lowbit_gpu.py tests/test_kernels_gpu.py tests/test_gptq_gpu.py \
    --tb=line -rf 2>&1 | tail -8
}

table() {  # table FORMAT NAME
  step "$1 at every shape, M = $TOKENS"
  timeout 170 python3 benchmarks/bench_kernels.py --formats "$1" --tokens "$TOKENS" --json "$OUT/$2.json" 2>&1 | tail -60
  python3 dev/kernels_table.py "$OUT/$2.json"
}
table4() { table w4a16-g128 w4; }
tablelow() { TOKENS=1,4,8,16 table w3a16-g128,w2a16-g64 low; }
table8() { table w8a16-channel w8; }

stalls() { timeout 280 bash dev/ncu_session.sh stalls 2>&1 | tail -40; }

b1() {
  step "b1 mma.sync peak beside bf16"
  timeout 150 python3 benchmarks/bench_b1_mma.py --json "$OUT/b1_mma.json" 2>&1 | tail -8
}

gptqprof() {
  step "gptq_quantize per 8B linear, and the two inverse factorizations"
  timeout 150 python3 benchmarks/bench_gptq.py --json "$OUT/gptq_prof.json" 2>&1 | tail -6
}

e2e() {
  for scheme in w4a16 w8a16; do
    step "8B decode / prefill, $scheme vs bf16"
    timeout 150 python3 -m quantize bench llama-8b --random-weights --scheme "$scheme" --decode-tokens 32 \
      --batch-sizes 1,16 --prefill-len 2048 --json "$OUT/e2e-$scheme.json" 2>&1 | tail -14
  done
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests table4 table8)
for s in "${stages[@]}"; do "$s"; done
step "done"
