#!/usr/bin/env bash
# The next device call (nvidia-h200, carry [".gpu/w8a8"]): what session 8 changed and could not run.
# 1. every weight-only / 1-bit GPU test (the w1_gemv rewrite and its launch plan, 2-3-bit and 5-7-bit
#    layers on the widened kernels, the dispatcher after the v3 measurement);
# 2. the 1-bit rows (issue 21's goals) and the dispatcher's weight-only table at every shape
#    (issue 19's protocol), with w3/w2 (widened) beside w4;
# 3. GPTQ with stacked q/k/v and gate/up on 4 blocks of the 8B shape;
# 4. Nsight Compute counters of each weight-only kernel (why 1 TB/s), if the runtime allows.
#
# wo_gemm_v4 (kernels/NOTES.md, "wo_gemm v4"): its GPU tests run in `tests`, its graph times print after
# the `table` stage's table (kernels_table).
#
#   bash dev/session9.sh [tests] [w1] [table] [gptqprof] [gptq] [ncu]        (about 8 minutes in all)
cd "$(dirname "$0")/.."
LOG=session9.log
source dev/gpu_setup.sh

tests() {
  step "GPU tests: 1-bit, weight-only (narrow widths, v3, every kernel), Hopper W4A16"
  timeout 120 python3 -m pytest -q -x -m gpu tests/test_binary_gpu.py 2>&1 | tail -4
  timeout 200 python3 -m pytest -q -x -m gpu tests/test_kernels_gpu.py tests/test_mixed_gpu.py 2>&1 | tail -4
}

w1() {
  step "w1a16 M=1,8,16,32 and w1a1 M=4096, 8192x8192"
  timeout 40 python3 benchmarks/bench_kernels.py --formats w1a16 --tokens 1,8,16,32 --shapes 8192x8192 \
    --json "$OUT/w1a16.json" 2>&1 | tail -6
  timeout 40 python3 benchmarks/bench_kernels.py --formats w1a1 --tokens 4096 --shapes 8192x8192 \
    --json "$OUT/w1a1.json" 2>&1 | tail -5
}

table() {
  step "weight-only dispatcher vs bf16, every shape, M = ${TOKENS:-1,8,16,32,64,256,4096}"
  timeout 260 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel \
    --tokens "${TOKENS:-1,8,16,32,64,256,4096}" --json "$OUT/table.json" 2>&1 | tail -45
  kernels_table "$OUT/table.json"
}

kernels_table() { python3 dev/kernels_table.py "$1"; }  # v4 beside wo_gemm, w4_mm (graph us per kernel)

gptqprof() {
  step "gptq_quantize per 8B linear (stacked), wall and GPU kernels"
  timeout 120 python3 benchmarks/bench_gptq.py --json "$OUT/gptq_prof.json" 2>&1 | tail -8
}

gptq() {  # the stacked GPTQ (q/k/v, gate/up as one matrix) against session 8's 1.45 s/block, "gptq quantize" 3.68 s
  step "GPTQ W4 g128 on the 8B shape, 4 blocks, 128 x 2048 tokens (phases on stderr)"
  ( WORK=/tmp/big LOG=gptq4.log; source dev/measure_lib.sh; data
    run timeout 60 "$PY" scripts/make_random_model.py llama-8b "$WORK/m8b" --layers 4 --text "$DATA"
    quant gptq-8b-4l "$WORK/m8b" 90 --method gptq --bits 4 --group-size 128 --dataset "$DATA" "${CAL[@]}" )
}

ncu() {
  step "Nsight Compute"
  timeout 200 bash dev/ncu_session.sh ncu 2>&1 | tail -30
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests w1 table gptqprof gptq ncu)
for s in "${stages[@]}"; do "$s"; done
step "done"
