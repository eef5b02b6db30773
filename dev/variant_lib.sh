#!/usr/bin/env bash
# Build the wgmma library of this checkout (a branch's worktree) as a variant for A/Bs against main's: loaded by
# QTOOL_WGMMA_LIBRARY=PATH (kernels/warpgroup_mm.py), carried to the device beside main's prebuilt libraries.
#   bash dev/variant_lib.sh OUT.so            (needs nvcc 13.0 and the CUTLASS headers of dev/prebuild_sm90.sh)
set -euo pipefail
out=$(realpath -m "$1")
cd "$(dirname "$0")/.."
include=${QTOOL_CUTLASS_INCLUDE:-/tmp/cutlass/cutlass_library/source/include}
[ -f "$include/cutlass/cutlass.h" ] || { echo "no CUTLASS headers at $include: run dev/prebuild_sm90.sh first" >&2; exit 1; }
FLAGS=$(python3 -c 'import quantize
from qtool_kernels import sm90
print(" ".join(sm90.FLAGS))')
mkdir -p "$(dirname "$out")"
# shellcheck disable=SC2086  # FLAGS is a word list
nvcc $FLAGS -Xptxas -v -I"$include" -I kernels/csrc/sm90 kernels/csrc/sm90/wo_wgmma_sm90.cu -o "$out.tmp" \
  2> >(grep -E "C75|error" >&2) > /dev/null && mv "$out.tmp" "$out"
ls -la "$out"
