#!/usr/bin/env bash
# What dev/session74.sh carries, made here from the two unmerged wgmma changes kept as patches on main (their
# branches did not survive a new checkout once): dev/wgmma_ptrs.patch (running pointers in the lane ring's issue) and
# dev/wgmma_lanes.patch (the same plus the lane words: an Args and Python change, so it runs as a tree of its own).
#   PATH=/work/venv/bin:$PATH bash dev/prepare74.sh   (nvcc 13.0, the CUTLASS headers of dev/prebuild_sm90.sh, a
#                                                      python3 with torch; ~1 min)
# Output: .gpu/variants/wgmma_ptrs.so, .gpu/lanes (the patched tree), .gpu/lanes_lib (its library, xz, named as its
# build cache expects). Carry [".gpu/w8a8", ".gpu/ext", ".gpu/variants", ".gpu/lanes", ".gpu/lanes_lib"].
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda-13.0/bin:$PATH
root=$PWD
for name in ptrs lanes; do
  tree=/tmp/qtool_wgmma_$name
  rm -rf "$tree" && mkdir -p "$tree"
  git archive HEAD | tar -x -C "$tree"
  (cd "$tree" && git apply "$root/dev/wgmma_$name.patch")
done
# each tree's own dev/variant_lib.sh: it compiles the sources of the checkout it lies in
bash /tmp/qtool_wgmma_ptrs/dev/variant_lib.sh .gpu/variants/wgmma_ptrs.so
bash /tmp/qtool_wgmma_lanes/dev/variant_lib.sh /tmp/qtool_wgmma_lanes.so
rm -rf .gpu/lanes .gpu/lanes_lib && mkdir -p .gpu/lanes_lib && cp -a /tmp/qtool_wgmma_lanes .gpu/lanes
(cd .gpu/lanes && python3 - "$root/.gpu/lanes_lib" <<'PY'
import lzma, pathlib, sys
import quantize  # noqa: F401  (qtool_kernels importable)
from qtool_kernels import sm90
name = sm90.wgmma.path().name  # the patched sources' hash: where the device's build cache looks
packed = pathlib.Path(sys.argv[1]) / f"{name}.xz"
packed.write_bytes(lzma.compress(pathlib.Path("/tmp/qtool_wgmma_lanes.so").read_bytes(), preset=6))
print("lanes library", packed)
PY
)
ls -la .gpu/variants .gpu/lanes_lib
