#!/usr/bin/env bash
# One device call for the weight-only kernels (issue 19) and the 70B depth check (issue 17).
#
#   carry [".gpu/w8a8"]: bash dev/w4_session.sh [tests] [bench] [bench8b] [big70]
#
# .gpu/w8a8 (git-ignored): the nvidia-cutlass wheel and prebuilt libraries (dev/gpu_setup.sh).
cd "$(dirname "$0")/.."
LOG=w4_session.log
source dev/gpu_setup.sh

tests() {
  step "GPU tests"
  timeout 150 python3 -m pytest -q -x tests/test_mixed_gpu.py 2>&1 | tail -15
  timeout 150 python3 -m pytest -q -x -m gpu tests/test_kernels_gpu.py tests/test_gptq_gpu.py 2>&1 | tail -6
}

bench() {
  step "weight-only kernel table (w4a16 g128), every shape x M"
  timeout 300 python3 benchmarks/bench_kernels.py --formats w4a16-g128 --tokens ${TOKENS:-1,16,32,64,128,256,512,1024,4096} \
    --json "$OUT/w4.json" 2>&1 | tail -70
  python3 - "$OUT/w4.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keys = ["wo_gemm", "sm90_mixed", "sm90_mixed_nosplit", "sm90_mixed_streamk", "sm90_mixed_pingpong", "dequant+cublas"]
print("K x N, M: graph us  bf16 | auto (speedup) | " + " | ".join(keys))
for row in r["rows"]:
    g = row["graph_kernel_ms"]; f = lambda v: "-" if v is None else f"{v * 1e3:.1f}"
    b = row["graph_bf16_ms"]; a = row["graph_qtool_ms"]
    print(f"{row['K']}x{row['N']} M={row['M']}: {f(b)} | {f(a)} ({b / a:.2f}x) | " + " | ".join(f(g.get(k)) for k in keys))
PY
}

bench8b() {
  for scheme in ${SCHEMES_8B:-w4a16}; do
    step "8B-shaped Llama, $scheme vs bf16"
    timeout 200 python3 -m quantize bench llama-8b --random-weights --scheme "$scheme" --decode-tokens 32 \
      --batch-sizes 1,16 --prefill-len 2048 --json "$OUT/bench8b-$scheme.json" 2>&1 | tail -22
  done
}

big70() {
  step "70B-shaped, 8 blocks, GPTQ (issue 17: host memory independent of depth)"
  LAYERS70=8 GPTQ70_TIMEOUT=150 bash dev/measure_big.sh build70 gptq70 2>&1 | grep -v '^ \|^\[\|^{\|^}' | tail -8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests bench bench8b big70)
for s in "${stages[@]}"; do "$s"; done
step "done"
