#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 11 (nvidia-h200, carry [".gpu/w8a8"], prebuilt
# with bash dev/prebuild_sm90.sh; re-run it first if kernels/csrc/sm90 changed):
#   call 1: bash dev/session12.sh tests blocksweep prefillprof fusedsweep floor   (~9 min)
#   then: python3 dev/w8a8_sweep.py --emit <sweep JSONs> into kernels/tuning.py W8A8 (fp8-block rows), and
#   call 2: bash dev/session12.sh blocktable e2eblock                     (~5 min)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 summary
# tests       every GPU test of the Hopper libraries and kernels: libqtool_sm90_block (FP8 1x128 x 128x128 on
#             CUTLASS's blockwise mainloop; written in session 11, never run) against the float64 reference, and the
#             three older libraries rebuilt with the shared csrc/sm90/sm90_common.cuh (not run either);
# blocksweep  its configurations beside cuBLAS's block-wise GEMM and w8_gemv at every shape, M = 1 ... 8192;
# prefillprof where the 8B fp8-block prefill's time goes (0.88x bf16 in session 11), beside fp8;
# fusedsweep  the fused q/k/v (4096 x 6144) and gate/up (4096 x 28672) shapes of the 8B bench, which the tables
#             only approximate by the nearest measured shape: W4, W8 and W8A8 sweeps (merge with --emit);
# floor       the 4096 x 4096 floor of the mixed-input GEMM (14-15 us at 8-32 tokens): kernel durations, memsets and
#             launch gaps inside a replayed graph (dev/floor_probe.py), beside wo_gemm and bf16;
# blocktable the W8A8 protocol table (benchmarks/bench_w8a8.py) with the fp8-block routes;
# e2eblock    the 8B fp8-block end to end.
cd "$(dirname "$0")/.."
LOG=session12.log
source dev/gpu_setup.sh

tests() {
  step "GPU tests: the FP8 block GEMM, W8A8, the mixed-input GEMMs, weight-only and 2/3-bit kernels"
  timeout 260 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mixed_gpu.py tests/test_kernels_gpu.py \
    tests/test_lowbit_gpu.py --tb=short -rf 2>&1 | tail -25
}

blocksweep() {
  step "fp8-block GEMMs: cuBLAS block-wise vs block_mm configurations vs w8_gemv"
  timeout 220 python3 dev/w8a8_sweep.py --kinds fp8-block --tokens 1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192 \
    --budget 160 --json "$OUT/block_sweep.json" 2>&1 | tail -75
  python3 dev/w8a8_sweep.py --emit "$OUT/block_sweep.json"
}

prefillprof() {
  for s in fp8-block fp8; do
    step "8-layer 8B prefill profile, $s"
    timeout 150 python3 dev/profile_prefill.py --scheme "$s" 2>&1 | grep -v Warning | tail -40
  done
}

fusedsweep() {
  step "the fused 8B shapes: mixed-input schedules (W4, W8) and W8A8 configurations"
  timeout 150 python3 dev/mixed_sweep.py --shapes 4096x6144,4096x28672 --budget 100 \
    --json "$OUT/sweep_fused.json" 2>&1 | tail -45
  timeout 120 python3 dev/w8a8_sweep.py --shapes 4096x6144,4096x28672 \
    --tokens 1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192 --budget 80 --json "$OUT/w8a8_fused.json" 2>&1 | tail -60
  python3 dev/mixed_sweep.py --emit "$OUT/sweep_fused.json"; python3 dev/w8a8_sweep.py --emit "$OUT/w8a8_fused.json"
}

floor() {
  step "the small-layer floor: kernels, memsets and gaps in a replayed graph"
  timeout 120 python3 dev/floor_probe.py --shape 4096x4096 --tokens 8,128 2>&1 | grep -v Warning | tail -60
}

failures() {
  step "GPU tests, the failures in full"
  timeout 200 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mixed_gpu.py tests/test_kernels_gpu.py \
    tests/test_lowbit_gpu.py --tb=short -rf > "$OUT/tests.txt" 2>&1
  grep -E "^(FAILED|ERROR)" "$OUT/tests.txt" | sed -E 's/\[.*//' | sort | uniq -c
  grep -E "Error|error:|assert" "$OUT/tests.txt" | sort | uniq -c | sort -rn | head -20
  tail -3 "$OUT/tests.txt"
}

overhead() {
  step "host time per eager call"
  timeout 120 python3 dev/overhead_probe.py --shape 4096x4096 --tokens 1,2048 --profile fp8-block 2>&1 | grep -v Warn | head -60
  timeout 60 python3 dev/overhead_probe.py --shape 4096x4096 --tokens 2048 --profile fp8 2>&1 | grep -v Warn | head -40
}

clusterorder() {
  step "cluster tests alone in a fresh process, then after the block GEMM tests"
  timeout 60 python3 -m pytest -q -m gpu tests/test_mixed_gpu.py -k clusters 2>&1 | tail -2
  timeout 90 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mixed_gpu.py -k "block or clusters" 2>&1 | tail -2
}

culprit() {
  step "which earlier test makes the mixed cluster launches fail"
  for sel in "block-large or clusters" "block-skinny or clusters" "block-split or clusters" \
             "(match_reference and fp8-block) or clusters"; do
    echo "-k '$sel':"
    timeout 60 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mixed_gpu.py -k "$sel" 2>&1 | tail -1
  done
}

streamprobe() {
  step "cluster launches after cuBLAS block-wise FP8"
  timeout 60 python3 dev/stream_probe.py 2>&1 | grep -v Warn | tail -8
}

clusters() {
  step "where clusters of two row tiles (variant 2) launch"
  timeout 120 python3 dev/cluster_probe.py 2>&1 | grep -v Warn | tail -20
}

e2e() {
  for s in "$@"; do
    step "8B decode / prefill, $s vs bf16"
    timeout 200 python3 -m quantize bench llama-8b --random-weights --scheme "$s" --decode-tokens 32 \
      --batch-sizes 1,16 --prefill-len 2048 --json "$OUT/e2e-$s.json" 2>&1 | tail -14
  done
}
e2eall() { e2e fp8-block fp8 w8a8-int8 w4a16; }

blocktable() {
  step "W8A8 protocol table"
  timeout 300 python3 benchmarks/bench_w8a8.py --json "$OUT/w8a8.json" 2>&1 | tail -25
}

e2eblock() {
  step "8B decode / prefill, fp8-block vs bf16"
  timeout 200 python3 -m quantize bench llama-8b --random-weights --scheme fp8-block --decode-tokens 32 \
    --batch-sizes 1,16 --prefill-len 2048 --json "$OUT/e2e-fp8-block.json" 2>&1 | tail -14
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests blocksweep prefillprof fusedsweep floor)
for s in "${stages[@]}"; do "$s"; done
step "done"
