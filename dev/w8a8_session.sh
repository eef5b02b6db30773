#!/usr/bin/env bash
# One device call for the W8A8 kernels (issue 18): build, GPU tests, the full benchmark table.
#
#   carry [".gpu/w8a8"]: bash dev/w8a8_session.sh [tests] [bench] [bench8b]
#
# .gpu/w8a8 (git-ignored) holds the nvidia-cutlass wheel (headers for kernels/csrc/sm90) and, when one
# was built on the development machine with the same nvcc, libqtool_sm90-*.so, copied into the build
# cache so the device does not spend a minute compiling CUTLASS.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
# the checkout's qtool_kernels -> kernels symlink makes the kernels importable without an install
export PYTHONUNBUFFERED=1 QTOOL_CUDA_ARCHS=${QTOOL_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} PYTHONPATH=$PWD
exec > >(tee -a "$OUT/session.log") 2>&1
step() { echo; echo "=== $* [$(date -u +%H:%M:%S)]"; }

step "CUTLASS headers, prebuilt libqtool_sm90, extension build"
mkdir -p /tmp/cutlass && (cd /tmp/cutlass && python3 -m zipfile -e "$OLDPWD"/.gpu/w8a8/nvidia_cutlass-*.whl . )
export QTOOL_CUTLASS_INCLUDE=/tmp/cutlass/cutlass_library/source/include
python3 - <<'PY'
import shutil, time
from pathlib import Path
import quantize  # noqa: F401  (makes qtool_kernels importable)
from qtool_kernels import build, sm90
t = time.time(); assert build.load_extension(verbose=False) is not None, build._loader.reason
print(f"extension built in {time.time() - t:.0f} s")
pre = sorted(Path(".gpu/w8a8").glob("libqtool_sm90-*.so"))
target = sm90.library_path()
if pre and pre[-1].name == target.name:
    target.parent.mkdir(parents=True, exist_ok=True); shutil.copy(pre[-1], target); print("prebuilt", target.name)
t = time.time(); print("sm90 GEMM loaded:", sm90.load(), sm90.reason(), f"{time.time() - t:.0f} s")
print(build.info())
PY
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
