#!/usr/bin/env bash
# One device call for the weight-only kernels (issue 19) and the 70B depth check (issue 17).
#
#   carry [".gpu/w8a8"]: bash dev/w4_session.sh [tests] [bench] [bench8b] [big70] [v3 | v3test v3bench]
#
# .gpu/w8a8 (git-ignored): the nvidia-cutlass wheel and prebuilt libraries (dev/gpu_setup.sh).
cd "$(dirname "$0")/.."
LOG=w4_session.log
source dev/gpu_setup.sh

tests() {
  step "GPU tests"
  timeout 150 python3 -m pytest -q -x tests/test_mixed_gpu.py 2>&1 | tail -15
  timeout 300 python3 -m pytest -q -x -m gpu tests/test_kernels_gpu.py tests/test_gptq_gpu.py 2>&1 | tail -6
}

bench() {
  step "weight-only kernel table (w4a16 g128), every shape x M"
  timeout 300 python3 benchmarks/bench_kernels.py --formats w4a16-g128 --tokens ${TOKENS:-1,16,32,64,128,256,512,1024,4096} \
    --json "$OUT/w4.json" 2>&1 | tail -70
  summary "$OUT/w4.json"
}

# Graph-replay microseconds per kernel column of a bench_kernels.py JSON, with issue 19's goals for
# wo_gemm_v3 (best variant against bf16 F.linear).
summary() {
  python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
goals = {("w4", 16): 2.5, ("w4", 32): 2.0, ("w4", 64): 1.6, ("w8", 16): 1.6, ("w8", 64): 1.2}
keys = ["wo_gemm", "sm90_mixed", "sm90_mixed_nosplit", "sm90_mixed_streamk", "sm90_mixed_pingpong", "dequant+cublas",
        "wo_gemm_v3_a", "wo_gemm_v3_b", "wo_gemm_v3_c", "wo_gemm_v3_d"]
keys = [k for k in keys if any(row["graph_kernel_ms"].get(k) for row in r["rows"])]
f = lambda v: "-" if v is None else f"{v * 1e3:.1f}"
print("K x N fmt M: graph us  bf16 | auto (speedup) | " + " | ".join(keys) + " | v3 best speedup (goal)")
for row in r["rows"]:
    g, b, a = row["graph_kernel_ms"], row["graph_bf16_ms"], row["graph_qtool_ms"]
    v3 = [g[k] for k in keys if k.startswith("wo_gemm_v3") and g.get(k)]
    goal = goals.get((row["format"][:2], row["M"]))
    best = f"{b / min(v3):.2f}x" if v3 and b else "-"
    auto = f"{f(a)} ({b / a:.2f}x)" if a and b else f(a)
    print(f"{row['K']}x{row['N']} {row['format'][:2]} M={row['M']}: {f(b)} | {auto} | "
          + " | ".join(f(g.get(k)) for k in keys) + f" | {best}" + (f" ({goal}x)" if goal else ""))
PY
}

# Issue 19: wo_gemm_v3 (kernels/NOTES.md) correctness, then its variants against wo_gemm, w4_mm and bf16.
# `v3` = both; each half fits a 10-minute device call with the build (~2 min) in front of it.
v3test() {
  step "wo_gemm v3: GPU tests (v3 cases, raw kernels, dispatcher smoke, opcheck)"
  timeout 240 python3 -m pytest -q -x -m gpu tests/test_kernels_gpu.py -k "v3 or raw_kernels or smoke or opcheck" 2>&1 | tail -8
}

v3bench() {
  step "wo_gemm v3: graph replay, M = ${V3_TOKENS:-16,32,64}"
  timeout 330 python3 benchmarks/bench_kernels.py --tokens "${V3_TOKENS:-16,32,64}" --formats "${V3_FORMATS:-w4a16-g128,w8a16-channel}" \
    --json "$OUT/v3.json" 2>&1 | tail -45
  summary "$OUT/v3.json"
}

v3() { v3test; v3bench; }

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
