#!/usr/bin/env bash
# Everything the CUDA kernels need checked on a GPU machine, output tee'd into $OUT/log.
#
#   bash dev/gpu_check.sh [all | build | test | sanitize | bench | quick]
#
#   build     install this checkout (pip -e, no deps), build the extension, print what was built
#   test      pytest -m gpu tests/test_kernels_gpu.py, then the CPU kernel tests
#   sanitize  compute-sanitizer memcheck + racecheck over the small smoke test (skipped if absent)
#   bench     benchmarks/bench_kernels.py -> $OUT/bench.json
#   quick     build, the smoke test and bench --quick: a first look in a few minutes
#   all       build, test, sanitize, bench (the default; may exceed 10 minutes, run steps separately then)
#
# The extension is cached in build/qtool-kernels (git-ignored, so it survives between calls on a warm
# machine); the exit status is nonzero when any step failed.
set -uo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export QTOOL_KERNELS_CACHE=${QTOOL_KERNELS_CACHE:-$PWD/build/qtool-kernels}
exec > >(tee -a "$OUT/log") 2>&1

failed=()
step() { echo; echo "=== $* [$(date -u +%H:%M:%S)]"; }
run() { "$@" || { echo "FAILED (exit $?): $*"; failed+=("$*"); }; }

install() {
  if "$PY" -c "import qtool_kernels.build, sys, pathlib; sys.exit(pathlib.Path(qtool_kernels.build.__file__).parent != pathlib.Path('kernels').resolve())" 2>/dev/null; then
    return
  fi
  step "install this checkout"
  if ! "$PY" -m pip install --no-deps --no-build-isolation -q -e .; then
    echo "pip install -e failed; importing quantize and qtool_kernels (a link to kernels/) from the checkout"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
}

do_build() {
  step "environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  nvcc --version | tail -1 || true
  step "build the extension"
  run "$PY" -m qtool_kernels.build
}

do_test() {
  step "GPU tests"
  run "$PY" -m pytest -q -m gpu tests/test_kernels_gpu.py
  step "CPU kernel tests"
  run "$PY" -m pytest -q tests/test_kernels.py
}

do_sanitize() {
  if ! command -v compute-sanitizer >/dev/null; then
    step "compute-sanitizer not installed: skipped"
    return
  fi
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool"
    run env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 1 \
      "$PY" -m pytest -q -m gpu tests/test_kernels_gpu.py -k smoke
  done
}

do_bench() {
  step "benchmark $*"
  run "$PY" benchmarks/bench_kernels.py --json "$OUT/bench${1:+-quick}.json" "$@"
}

install
case "${1:-all}" in
  build) do_build ;;
  test) do_test ;;
  sanitize) do_sanitize ;;
  bench) do_bench ;;
  quick)
    do_build
    step "smoke test"
    run "$PY" -m pytest -q -m gpu tests/test_kernels_gpu.py -k smoke
    do_bench --quick
    ;;
  all) do_build; do_test; do_sanitize; do_bench ;;
  *) echo "unknown step '$1'"; exit 2 ;;
esac

echo
if ((${#failed[@]})); then
  echo "=== ${#failed[@]} step(s) failed:"; printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo "=== all steps passed; log in $OUT/log"
