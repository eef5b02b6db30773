#!/usr/bin/env bash
# Build the qtool_cuda extension here for the device's image, so that a device call loads it instead of compiling
# it (~50 s of every fresh machine's device time; dev/gpu_setup.sh installs it with build.install_prebuilt and
# test-loads it in a child process, building as before when it does not load there).
#
# The device image (KINDS.md): Python 3.12, torch 2.11.0+cu130, nvcc 13.0, an H200 (sm_90). Here: a Python 3.12
# venv with the same torch wheel (pip install torch==2.11.0, cu130 and its CUDA libraries from the registry), the
# CUDA 13.0 toolkit in /usr/local/cuda-13.0, and no GPU, so the target is named (TORCH_CUDA_ARCH_LIST, and
# QTOOL_CUDA_ARCHS as gpu_setup.sh sets it). Output: .gpu/ext/qtool_cuda.so.xz and qtool_cuda.stamp (build.stamp():
# the sources, the flags and the torch build); carry ".gpu/ext" beside ".gpu/w8a8".
#   VENV=/tmp/v211 bash dev/prebuild_ext.sh          # ~6 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/v211}
OUTDIR=${OUTDIR:-.gpu/ext}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda-13.0} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export QTOOL_CUDA_ARCHS=${QTOOL_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-2} PYTHONPATH=$PWD
export QTOOL_KERNELS_CACHE=${PREBUILD_CACHE:-/tmp/qtool_prebuild_cache}  # another for a QTOOL_NVCC_EXTRA build
mkdir -p "$OUTDIR"
if [ ! -x "$VENV/bin/python" ]; then  # the device image's torch, with its CUDA libraries (~75 s from the registry)
  "${PY312:-/root/.pyenv/versions/3.12.1/bin/python}" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.11.0}" numpy ninja
fi
"$VENV/bin/python" - "$OUTDIR" <<'PY'
import lzma, sys, time
from pathlib import Path
import torch
from qtool_kernels import build

out = Path(sys.argv[1])
print("torch", torch.__version__, torch.version.git_version, "cuda", torch.version.cuda, "archs", build.ARCHS)
directory, start = build.build_dir(), time.time()
build._compile(directory, verbose=False)  # no GPU here: the build alone, not load_extension's checks
library = directory / f"{build.NAME}.so"
print(f"built {library} ({library.stat().st_size / 2**20:.1f} MiB) in {time.time() - start:.0f} s")
packed = out / f"{build.NAME}.so.xz"
packed.write_bytes(lzma.compress(library.read_bytes(), preset=6))
(out / f"{build.NAME}.stamp").write_text(build.stamp() + "\n")
(out / f"{build.NAME}.so").unlink(missing_ok=True)
print(f"{packed} ({packed.stat().st_size / 2**20:.1f} MiB), stamp {build.stamp()}")
PY
