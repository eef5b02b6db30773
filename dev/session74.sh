#!/usr/bin/env bash
# The device calls of session 74 (BENCHMARKS.md "Session 74"); carry [".gpu/w8a8", ".gpu/ext", ".gpu/variants",
# ".gpu/lanes", ".gpu/lanes_lib"]:
#   .gpu/variants/wgmma_ptrs.so   dev/wgmma_ptrs.patch's library (a variant of main's: main's Python loads it)
#   .gpu/lanes                    main with dev/wgmma_lanes.patch applied, its library prebuilt under its own name in
#                                 .gpu/lanes_lib (an Args change: it runs with its own Python, not as a variant)
# all three made by `PATH=/work/venv/bin:$PATH bash dev/prepare74.sh` (after dev/prebuild_sm90.sh)
#   bash dev/session74.sh lanes74  the patched tree's wgmma GPU tests (4-bit and 8-bit rows) and the sanitizer on it
#   bash dev/session74.sh ab74     one round of the A/B: main, ptrs, lanes in turn, every schedule (tall, post)
#                                  with and without zero points at 16 tokens; AB74_ROUND names the round's files,
#                                  dev/lib_ab.py compares each pair on this call's round (both rounds' JSONs: here)
#   other stages: dev/session73.sh's (asym73, ptrs73), then 72's, 71's and 55's
cd "$(dirname "$0")/.."
s74_stages=("$@")
set --
LOG=${LOG:-session74.log}
source dev/gpu_setup.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
SHAPES74=${SHAPES74:-4096x4096,14336x4096,4096x14336,8192x8192}
LANES=$PWD/.gpu/lanes
install_lanes() {  # the branch's library where its own build cache looks (same cache as main's, its own hash)
  (cd "$LANES" && PYTHONPATH=$LANES python3 -c 'import lzma, pathlib, quantize
from qtool_kernels import sm90
target = sm90.wgmma.path(); target.parent.mkdir(parents=True, exist_ok=True)
packed = pathlib.Path("../lanes_lib") / (target.name + ".xz")
target.write_bytes(lzma.decompress(packed.read_bytes())); print("installed", target.name, sm90.wgmma.load())')
}
lanes74() {
  echo "GPU $GPU"
  install_lanes
  step "wgmma-lanes: the wgmma GPU tests on the branch"
  (cd "$LANES" && PYTHONPATH=$LANES gputests tests_lanes "${L74_TT:-200}" tests/test_wgmma_gpu.py tests/test_wgmma_rows_gpu.py)
  (cd "$LANES" && PYTHONPATH=$LANES sanitize wglanes dev/san_wgmma.py)
}
ab_one() {  # ab_one NAME: one wgmma_ab.py run of main (NAME main), the ptrs variant or the lanes tree
  local name=$1 json=$OUT/ab_$1_${AB74_ROUND:-1}.json dir=$PWD lib=
  step "A/B round ${AB74_ROUND:-1}: $name"
  case $name in
    ptrs) lib=$PWD/.gpu/variants/wgmma_ptrs.so ;;
    lanes) dir=$LANES ;;
  esac
  (cd "$dir" && PYTHONPATH=$dir QTOOL_WGMMA_LIBRARY=$lib timeout -k 10 "${AB74_T:-110}" python3 dev/wgmma_ab.py \
    --asym --tall --post --tokens 16 --shapes "$SHAPES74" --json "$json" > "${json%.json}.txt" 2>&1)
  echo "exit $?"
}
ab74() {
  echo "GPU $GPU"
  install_lanes
  for name in main ptrs lanes; do ab_one $name; done
  for pair in "main ptrs" "main lanes" "ptrs lanes"; do
    set -- $pair
    step "dev/lib_ab.py: $1 -> $2 (this call's round)"
    python3 dev/lib_ab.py --a "$OUT"/ab_"$1"_*.json --b "$OUT"/ab_"$2"_*.json | tail -${AB74_TAIL:-24}
  done
}
for s in "${s74_stages[@]}"; do
  if declare -F "$s" > /dev/null; then "$s"; else bash dev/session73.sh "$s"; fi
done
