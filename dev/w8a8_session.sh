#!/usr/bin/env bash
# One device call for the W8A8 kernels (issue 18): build, GPU tests, the full benchmark table.
#
#   carry [".gpu/w8a8"]: bash dev/w8a8_session.sh [tests] [bench] [bench8b]
#
# .gpu/w8a8 (git-ignored): the nvidia-cutlass wheel and prebuilt libraries (dev/gpu_setup.sh).
cd "$(dirname "$0")/.."
LOG=session.log
source dev/gpu_setup.sh
cuobjdump -sass "$(python3 -c 'import quantize; from qtool_kernels import sm90; print(sm90.library_path())')" 2>/dev/null \
  | grep -oE "(H|Q|I)GMMA[.A-Z0-9]*" | sort | uniq -c | head

tests() {
  step "GPU tests"
  timeout 300 python3 -m pytest -q -x -m gpu tests/test_w8a8_gpu.py 2>&1 | tail -25
  timeout 200 python3 -m pytest -q -x -m gpu tests/test_kernels_gpu.py 2>&1 | tail -8
}

bench() {
  step "W8A8 kernel table"
  timeout 420 python3 benchmarks/bench_w8a8.py --json "$OUT/w8a8.json" ${BENCH_W8A8_ARGS:-}
}

bench8b() {
  for scheme in ${SCHEMES_8B:-fp8 w8a8-int8 fp8-block}; do
    step "8B-shaped Llama, $scheme vs bf16"
    timeout 200 python3 -m quantize bench llama-8b --random-weights --scheme "$scheme" --decode-tokens 32 \
      --batch-sizes 1,16 --prefill-len 2048 --json "$OUT/bench8b-$scheme.json" 2>&1 | tail -22
  done
}

sanitize() {
  step "compute-sanitizer memcheck and racecheck on dev/sanitize_w8a8.py"
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck}; do
    timeout 150 compute-sanitizer --tool $tool --error-exitcode 3 python3 dev/sanitize_w8a8.py 2>&1 | tail -4
  done
}

bench8b_w4() {  # issue 15's after-figure: the third H100 session's W4A16 decode protocol
  step "8B-shaped Llama, w4a16 (fused, lm_head W4) vs bf16"
  timeout 200 python3 -m quantize bench llama-8b --random-weights --scheme w4a16 --decode-tokens 64 --batch-sizes 1 \
    --prefill-len 2048 --quantize-lm-head --json "$OUT/bench8b-w4a16.json" 2>&1 | tail -16
}

stages=("$@"); [ ${#stages[@]} -eq 0 ] && stages=(tests bench)
for stage in "${stages[@]}"; do $stage; done
