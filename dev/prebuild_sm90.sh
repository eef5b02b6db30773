#!/usr/bin/env bash
# Compile the Hopper libraries (kernels/sm90.py) on the development machine into .gpu/w8a8, named as the
# device's build cache expects them, so a device call copies them instead of spending minutes in nvcc.
#   bash dev/prebuild_sm90.sh            (needs nvcc 13.0 and the nvidia-cutlass wheel in .gpu/w8a8)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/w8a8 /tmp/cutlass
ls .gpu/w8a8/nvidia_cutlass-*.whl >/dev/null 2>&1 || python3 -m pip download -q --no-deps --only-binary=:all: \
  nvidia-cutlass==4.2.0 -d .gpu/w8a8
[ -f /tmp/cutlass/cutlass_library/source/include/cutlass/cutlass.h ] || \
  (cd /tmp/cutlass && python3 -m zipfile -e "$OLDPWD"/.gpu/w8a8/nvidia_cutlass-*.whl .)
export QTOOL_CUTLASS_INCLUDE=/tmp/cutlass/cutlass_library/source/include
# CUTLASS's tools/util headers include curand_kernel.h, which a toolkit without cuRAND (this machine's) lacks.
CURAND=()
if [ ! -f "$(dirname "$(command -v nvcc)")/../include/curand_kernel.h" ]; then
  [ -d /tmp/curand/x ] || (python3 -m pip download -q --no-deps --only-binary=:all: nvidia-curand -d /tmp/curand &&
                          cd /tmp/curand && python3 -m zipfile -e nvidia_curand-*.whl x)
  CURAND=(-I"$(dirname "$(find /tmp/curand/x -name curand_kernel.h | head -1)")")
fi
# nvcc's flags from kernels/sm90.py itself: the library names hash them, and a copy here drifted once
FLAGS=$(python3 -c 'import quantize
from qtool_kernels import sm90
print(" ".join(sm90.FLAGS))')
libs=$(python3 -c 'import quantize
from qtool_kernels import sm90
for lib in sm90.ALL: print(lib.path().name, lib.source, " ".join(lib.defines))')
while read -r name src defines; do
  [ -f ".gpu/w8a8/$name" ] || [ -f ".gpu/w8a8/$name.xz" ] && { echo "have $name"; continue; }
  echo "building $name"
  # shellcheck disable=SC2086  # FLAGS and defines are word lists
  nvcc $FLAGS $defines -I"$QTOOL_CUTLASS_INCLUDE" -I"$QTOOL_CUTLASS_INCLUDE/../tools/util/include" "${CURAND[@]}" -I"$(dirname "$src")" "$src" \
    -o ".gpu/w8a8/$name.tmp" && mv ".gpu/w8a8/$name.tmp" ".gpu/w8a8/$name"
done <<< "$libs"  # one at a time: a CUTLASS library's cicc takes several GB, two at once swapped 24 GB
# packed for the carry (32 MB -> 3 MB); dev/gpu_setup.sh unpacks them on the device
python3 -c 'import lzma, pathlib
for lib in pathlib.Path(".gpu/w8a8").glob("*.so"):
    lib.with_name(lib.name + ".xz").write_bytes(lzma.compress(lib.read_bytes(), preset=6)); lib.unlink()'
ls -la .gpu/w8a8
