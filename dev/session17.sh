#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 16 (nvidia-h200, carry [".gpu/w8a8"]; the Hopper
# libraries did not change in session 16):
#   call 1: bash dev/session17.sh tests w1 ncuw1 w1race    (~7 min)
#   call 2: bash dev/session17.sh table                    (~6 min)
#   nvidia-h200-x2 (issue 20; block writes now run behind the next block): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 summary
# tests   every GPU test (W8A16 per channel on the row-major layout by default since session 16; W1A1 shape 5)
# w1      W1A1 8192 x 8192 at 1024 / 4096 / 8192 tokens, binarize and the GEMM also timed inside a graph (the eager
#         30 us of binarize at 4096 tokens holds allocation and launch: how much is the kernel?)
# ncuw1   Nsight Compute stall reasons of the W1A1 GEMM (a third of the b1 mma.sync peak: barrier, shared memory or
#         the mma pipe?) and binarize, beside bf16 cuBLAS: issue 21's measured limit
# w1race  compute-sanitizer racecheck over W1A1 on a small shape (session 16's run on 4096 x 1536 passed its 120 s)
# Call 2 (bulk-copy W1A16 GEMV, one-LOP3 sign decode, W1A1 copy addresses hoisted; commit 793b57a, the bulk kernel
#   and its stages since removed): bash dev/session17.sh w1tests w1 w1ab w1ncu w1bsan
# Call 3 (no pad copy in W1A16): bash dev/session17.sh w1tests w1 w1shapes w1san
# Call 4 (16-warp W1A16 blocks, opt-in; binarize without per-element tests): bash dev/session17.sh w1tests w1wide w1
#   (the 16-warp variant lost on every shape and was removed after it: w1wide now runs the default twice)
# table   W4A16 g128 and W8A16 per channel, eight shapes, 1-4096 tokens in one table (issue 19's "done when")
cd "$(dirname "$0")/.."
LOG=session17.log
source dev/gpu_setup.sh

tests() {
  step "GPU tests"
  timeout 300 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mixed_gpu.py tests/test_kernels_gpu.py \
    tests/test_lowbit_gpu.py tests/test_wo_stream_gpu.py tests/test_binary_gpu.py tests/test_hf_gpu.py \
    tests/test_mlp.py tests/test_fusion.py --tb=short -rf > "$OUT/tests.txt" 2>&1
  summarize "$OUT/tests.txt"
}

w1() {
  step "W1A1 and W1A16, 8192 x 8192"
  timeout 120 python3 benchmarks/bench_kernels.py --formats w1a1,w1a16 --shapes 8192x8192 \
    --json "$OUT/w1.json" 2>&1 | tail -12
  python3 -c "import json,sys; [print(r['format'], r['M'], r.get('graph_speedup'), r['kernel_ms'], r['graph_kernel_ms'])
for r in json.load(open(sys.argv[1]))['rows']]" "$OUT/w1.json"
}

ncuw1() {
  step "ncu: W1A1 (binarize + GEMM) at 4096 tokens, W1A16 at one token, bf16 (details, then stall reasons)"
  SHAPE=8192x8192 ONLY="w1a1,w1_gemv,bf16 F.linear M=1" OUT="$OUT/ncu_w1" bash dev/ncu_session.sh ncu stalls 2>&1 | tail -30
}

w1race() {
  step "compute-sanitizer racecheck: W1A1 on 1000 x 72 (one dtype)"
  timeout 240 compute-sanitizer --tool racecheck --print-limit 5 python3 -m pytest -q -x -m gpu \
    tests/test_binary_gpu.py -k "w1a1_matches and 1000-72 and dtype0" 2>&1 | tail -4
}

table() {
  step "W4A16 g128 and W8A16 per channel, eight shapes, 1-4096 tokens"
  timeout 420 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel \
    --tokens 1,2,4,8,16,32,64,128,256,1024,4096 \
    --shapes 4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,4096x28672,8192x28672,28672x8192 \
    --json "$OUT/table.json" 2>&1 | tail -2
  python3 dev/kernels_table.py "$OUT/table.json" | cut -c1-400 | tail -4
}

w1tests() {
  step "1-bit GPU tests"
  timeout 200 python3 -m pytest -q -m gpu tests/test_binary_gpu.py tests/test_binary_layout.py --tb=short -rf \
    > "$OUT/w1tests.txt" 2>&1
  summarize "$OUT/w1tests.txt"
}

w1shapes() {
  step "W1A16 at 1-8 tokens, four shapes"
  timeout 150 python3 benchmarks/bench_kernels.py --formats w1a16 --tokens 1,2,4,8 \
    --shapes 8192x8192,4096x4096,4096x14336,28672x8192 --json "$OUT/w1shapes.json" 2>&1 | tail -20
}

w1san() {
  step "compute-sanitizer: memcheck over W1A1 and W1A16, racecheck over W1A1 (small shapes)"
  timeout 150 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q -x -m gpu \
    tests/test_binary_gpu.py -k "dtype0 and (4096-1536 or 1000-72)" 2>&1 | tail -2
  timeout 150 compute-sanitizer --tool racecheck --print-limit 5 python3 -m pytest -q -x -m gpu \
    tests/test_binary_gpu.py -k "w1a1_matches and 1000-72 and dtype0" 2>&1 | tail -2
}

w1wide() {  # the same build: 8-warp blocks (default) and 16-warp ones (QTOOL_W1_GEMV=16), separate processes
  step "W1A16: 16-warp blocks, tests and A/B against the default"
  QTOOL_W1_GEMV=16 timeout 100 python3 -m pytest -q -m gpu tests/test_binary_gpu.py -k "w1_gemv or takes_the_1bit" \
    --tb=short -rf > "$OUT/w1wide_tests.txt" 2>&1
  summarize "$OUT/w1wide_tests.txt"
  for v in 8 16; do
    QTOOL_W1_GEMV=$v timeout 100 python3 benchmarks/bench_kernels.py --formats w1a16 --tokens 1,2,4,8 \
      --shapes 8192x8192,4096x4096,4096x14336,28672x8192 --json "$OUT/w1wide_$v.json" > /dev/null 2>&1
  done
  python3 - "$OUT/w1wide_8.json" "$OUT/w1wide_16.json" <<'PY'
import json, sys
a8, a16 = (json.load(open(f))["rows"] for f in sys.argv[1:])
print("K x N, M: bf16 us | 8 warps us (x bf16) | 16 warps us (x bf16), graph replay")
for a, b in zip(a8, a16):
    print(f"{a['K']}x{a['N']} M={a['M']}: {1e3 * a['graph_bf16_ms']:.1f} | {1e3 * a['graph_qtool_ms']:.1f} "
          f"({a['graph_speedup']:.2f}x) | {1e3 * b['graph_qtool_ms']:.1f} ({b['graph_speedup']:.2f}x)")
PY
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests w1 ncuw1 w1race)
for s in "${stages[@]}"; do "$s"; done
step "done"
