#!/usr/bin/env bash
# Session 11's device calls (nvidia-h200, carry [".gpu/w8a8"], prebuilt with bash dev/prebuild_sm90.sh):
#   call 1: bash dev/session11.sh newtests sweep4 sweep8 w8sweep   schedules of the Hopper GEMMs
#   call 2: bash dev/session11.sh tests table4 table8 w8sweep2   the measured routes; W8A8 at 1-8, 2048-8192
#   call 3: bash dev/session11.sh tests8 e2e4 w8table          8B W4A16 end to end, the W8A8 protocol table
# tests   the Hopper mixed-input GEMMs: every schedule, token tiles below the batch, clusters of two tiles;
# sweep4  every schedule of w4_mm at every shape and M = 8 ... 4096 (dev/mixed_sweep.py), beside bf16,
#         wo_gemm and dequant + cuBLAS: the data of kernels/tuning.py;
# sweep8  the same for w8_mm (W8A16 per channel);
# table4/8 the protocol's table through the dispatcher (benchmarks/bench_kernels.py);
# e2e4    8B-shaped W4A16 decode / prefill against bf16 (300 s: quantization, packing, two compilations);
# e2e8a8  the W8A8 presets end to end (issue 18).
cd "$(dirname "$0")/.."
LOG=session11.log
source dev/gpu_setup.sh
TOKENS=${TOKENS:-1,8,16,32,64,128,256,512,1024,2048,4096}

newtests() {
  step "GPU tests: the new schedules (token tiles, clusters; W8A8 configurations)"
  timeout 150 python3 -m pytest -q -m gpu tests/test_mixed_gpu.py tests/test_w8a8_gpu.py \
    -k "token_tiles or configuration or schedules or every_config or rejects" --tb=line -rf 2>&1 | tail -8
}

w8sweep() {
  step "W8A8 GEMM configurations (skinny, large, split-K, narrow) beside cuBLAS and w8_gemv"
  timeout $((${BUDGETW8:-110} + 60)) python3 dev/w8a8_sweep.py --budget "${BUDGETW8:-110}" \
    --json "$OUT/w8a8_sweep.json" 2>&1 | tail -90
}

tests() {
  step "GPU tests: Hopper W4A16 / W8A16 and W8A8 GEMMs, every weight-only kernel, 2/3-bit, dispatchers"
  timeout 240 python3 -m pytest -q -m gpu tests/test_mixed_gpu.py tests/test_kernels_gpu.py tests/test_w8a8_gpu.py \
    tests/test_lowbit_gpu.py --tb=line -rf 2>&1 | tail -12
}

tests8() {
  step "GPU tests: W8A8 (act_quant held rows bit for bit, every GEMM configuration, the measured routes)"
  timeout 120 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py --tb=line -rf 2>&1 | tail -6
}

w8sweep2() {
  step "W8A8 configurations at 1-8 and 2048-8192 tokens"
  timeout 200 python3 dev/w8a8_sweep.py --tokens 1,2,4,8,2048,4096,8192 --budget 130 \
    --json "$OUT/w8a8_sweep2.json" 2>&1 | tail -90
}

w8table() {
  step "W8A8 protocol table (benchmarks/bench_w8a8.py)"
  timeout 300 python3 benchmarks/bench_w8a8.py --json "$OUT/w8a8.json" 2>&1 | tail -70
}

sweep() {  # sweep FORMAT NAME BUDGET
  step "schedule sweep, $1"
  timeout $(($3 + 60)) python3 dev/mixed_sweep.py --formats "$1" --budget "$3" --json "$OUT/$2.json" 2>&1 | tail -80
}
sweep4() { sweep w4a16-g128 sweep4 ${BUDGET4:-170}; }
sweep8() { sweep w8a16-channel sweep8 ${BUDGET8:-100}; }

table() {  # table FORMAT NAME
  step "$1 at every shape, M = $TOKENS"
  timeout 200 python3 benchmarks/bench_kernels.py --formats "$1" --tokens "$TOKENS" --json "$OUT/$2.json" 2>&1 | tail -3
  python3 dev/kernels_table.py "$OUT/$2.json"
}
table4() { table w4a16-g128 w4; }
table8() { table w8a16-channel w8; }

bench8b() {  # bench8b SCHEME TIMEOUT
  step "8B decode / prefill, $1 vs bf16"
  timeout "$2" python3 -m quantize bench llama-8b --random-weights --scheme "$1" --decode-tokens 32 \
    --batch-sizes 1,16 --prefill-len 2048 --json "$OUT/e2e-$1.json" 2>&1 | tail -14
}
e2e4() { bench8b w4a16 300; }
e2e8a8() { for s in fp8 w8a8-int8 fp8-block; do bench8b "$s" 170; done; }

fp8probe() {
  step "fp8-block at 2048 tokens: eager, compiled, kernels"
  timeout 200 python3 dev/fp8block_prefill.py 2>&1 | grep -v Warning | tail -40
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests sweep4 sweep8)
for s in "${stages[@]}"; do "$s"; done
step "done"
