#!/usr/bin/env bash
# One device call for the 1-bit kernels (issue 21): W1A16 GEMV, W1A1 binarize + b1 GEMM.
#
#   carry [".gpu/w8a8"]: bash dev/w1_session.sh [stats] [tests] [mma] [bench]
#
# stats: ptxas registers/spills of the 1-bit kernels; tests: GPU tests against float64 (W1A1 exact);
# mma: raw b1 mma.sync throughput (benchmarks/bench_b1_mma.py); bench: the w1a16 (M=1..8) and
# w1a1 (M=256..8192) rows of benchmarks/bench_kernels.py against bf16 F.linear, every shape.
cd "$(dirname "$0")/.."
LOG=w1_session.log
source dev/gpu_setup.sh

stats() {
  step "ptxas: registers and spills of the 1-bit kernels (sm_90)"
  for f in w1_gemv w1a1; do
    "${CUDA_HOME:-/usr/local/cuda}"/bin/nvcc -std=c++17 -O3 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
      -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ -gencode=arch=compute_90,code=sm_90 \
      -Xptxas -v -c kernels/csrc/$f.cu -o /tmp/$f.o 2>&1 | grep -E "registers|spill" | paste - - | sort | uniq -c | head -12
  done
}

tests() {
  step "GPU tests: 1-bit kernels, then the other kernels (nothing else broke)"
  timeout 300 python3 -m pytest -q -x -m gpu tests/test_binary_gpu.py 2>&1 | tail -8
  timeout 200 python3 -m pytest -q -x tests/test_binary.py tests/test_binary_layout.py 2>&1 | tail -3
  timeout 200 python3 -m pytest -q -x -m gpu tests/test_kernels_gpu.py -k "raw_kernels or errors" 2>&1 | tail -3
}

mma() {
  step "raw b1 mma.sync throughput (Hopper's binary tensor-core rate is undocumented)"
  timeout 200 python3 benchmarks/bench_b1_mma.py --json "$OUT/b1_mma.json" 2>&1 | tail -5
}

bench() {
  step "w1a16 (M=1..8) and w1a1 (M=256..8192) against bf16 F.linear, same run"
  timeout 500 python3 benchmarks/bench_kernels.py --formats w1a16,w1a1 --json "$OUT/w1.json" 2>&1 | tail -60
  python3 - "$OUT/w1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("K x N format M: do_bench us bf16 | qtool (speedup) | graph us bf16 | qtool (speedup) | kernels us")
for row in r["rows"]:
    f = lambda v: "-" if v is None else f"{v * 1e3:.1f}"
    g = row["graph_speedup"]
    print(f"{row['K']}x{row['N']} {row['format']} M={row['M']}: {f(row['bf16_ms'])} | {f(row['qtool_ms'])} "
          f"({row['speedup']:.2f}x) | {f(row['graph_bf16_ms'])} | {f(row['graph_qtool_ms'])} "
          f"({'-' if g is None else f'{g:.2f}x'}) | " + " ".join(f"{k}={f(v)}" for k, v in row["kernel_ms"].items()))
PY
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(stats tests mma bench)
for s in "${stages[@]}"; do "$s"; done
step "done"
