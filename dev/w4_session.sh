#!/usr/bin/env bash
# One device call for the weight-only kernels (issue 19) and the 70B depth check (issue 17).
#
#   carry [".gpu/w8a8"]: bash dev/w4_session.sh [tests] [bench] [bench8b] [big70]
#
# .gpu/w8a8 (git-ignored) holds the nvidia-cutlass wheel (headers for kernels/csrc/sm90) and the
# libqtool_sm90*.so libraries prebuilt on the development machine with the same nvcc, copied into
# the build cache so the device does not spend minutes compiling CUTLASS.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 QTOOL_CUDA_ARCHS=${QTOOL_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} PYTHONPATH=$PWD
exec > >(tee -a "$OUT/w4_session.log") 2>&1
step() { echo; echo "=== $* [$(date -u +%H:%M:%S)]"; }

step "CUTLASS headers, prebuilt Hopper libraries, extension build"
mkdir -p /tmp/cutlass && (cd /tmp/cutlass && python3 -m zipfile -e "$OLDPWD"/.gpu/w8a8/nvidia_cutlass-*.whl . )
export QTOOL_CUTLASS_INCLUDE=/tmp/cutlass/cutlass_library/source/include
python3 - <<'PY'
import shutil, time
from pathlib import Path
import quantize  # noqa: F401  (makes qtool_kernels importable)
from qtool_kernels import build, mixed_mm, sm90
t = time.time(); assert build.load_extension(verbose=False) is not None, build._loader.reason
print(f"extension built in {time.time() - t:.0f} s")
for lib in (sm90._sm90, sm90.mixed):
    target = lib.path()
    pre = Path(".gpu/w8a8") / target.name
    if pre.is_file():
        target.parent.mkdir(parents=True, exist_ok=True); shutil.copy(pre, target); print("prebuilt", target.name)
t = time.time(); print("mixed GEMM loaded:", mixed_mm.available(), sm90.mixed.reason, f"{time.time() - t:.0f} s")
PY

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
