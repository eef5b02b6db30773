#!/usr/bin/env bash
# The device calls of session 59 (carry [".gpu/w8a8", ".gpu/ext"]; BENCHMARKS.md "session 59"). Call 1 ran
# `bash dev/session58.sh splittests san ncusplit`: Nsight Compute found the split variant's plan (64 clusters of 8
# on 8192 x 8192 at 16 tokens) past the 45 clusters the device holds at once, so the SMs idled 28% of its time in a
# second wave; wo_split.cu's plan now counts resident clusters (cudaOccupancyMaxActiveClusters).
#   splittests   the split variant's GPU tests (every forced cluster size), the tile kernel's (shared cluster sum)
#   splitab      dev/split_ab.py at 9 / 16 / 32 tokens: the plan against every forced split count, the route, bf16
#   san          compute-sanitizer memcheck and racecheck on the split variant (dev/san_split.py)
#   l2ab         call 4: the L2 prefetch hint, two builds; kerneltests / decodecells / e2efp8: calls 5-6
#   depthab      prepared, not run: the split variant's ring 16 chunks deep against 8, two builds
# Also prepared: NCU_SPLITS=2 bash dev/session58.sh ncusplit (Nsight Compute with the SASS page on
# the variant at its best count on 8192 x 8192, two splits, one block per SM: where its streaming waits)
cd "$(dirname "$0")/.."
LOG=session59.log
source dev/gpu_setup.sh
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

second_build() {  # second_build CACHE EXTRA DIR: a prebuilt extension built with QTOOL_NVCC_EXTRA=EXTRA (dev/prebuild_ext.sh
  # with PREBUILD_CACHE and OUTDIR=DIR) installed in its own kernel cache, beside the same Hopper libraries
  QTOOL_KERNELS_CACHE=$1 QTOOL_NVCC_EXTRA=$2 python3 - "$3" <<'PY'
import shutil, sys
from pathlib import Path
import quantize  # noqa: F401
from qtool_kernels import build, sm90
print(build.install_prebuilt(Path(sys.argv[1])))
for lib in sm90.ALL:  # the Hopper libraries do not read the switches: the same files in the second cache
    pre = Path(".gpu/w8a8") / lib.path().name
    if pre.is_file():
        lib.path().parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(pre, lib.path())
PY
}
l2ab() {  # call 4: the weight loads' L2 prefetch hint (wo_common.cuh, QTOOL_L2_PREFETCH; then off by default) against a
  # build with -DQTOOL_L2_PREFETCH=256 (.gpu/ext256), each process's ratios to bf16. Now on by default: to repeat it,
  # build the second one with -DQTOOL_L2_PREFETCH=0
  local extra="-DQTOOL_L2_PREFETCH=${L2_SIZE:-256}" cache=/tmp/qc_l2
  step "L2 prefetch A/B: the default build against $extra (separate processes)"
  second_build "$cache" "$extra" .gpu/ext256
  for tag in a b a2; do
    local env=()
    [ "$tag" = b ] && env=(QTOOL_KERNELS_CACHE=$cache QTOOL_NVCC_EXTRA=$extra)
    env "${env[@]}" timeout -k 10 "${L2_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py \
      --formats "${L2_FORMATS:-w4a16-g128,w8a16-channel}" --tokens "${L2_TOKENS:-1,16}" \
      --json "$OUT/l2_wo_$tag.json" > "/tmp/l2_wo_$tag.txt" 2>&1
    echo "$tag weight-only exit $?"; grep -E "^\\|" "/tmp/l2_wo_$tag.txt" | tail -14
    [ "$tag" = a2 ] && continue
    env "${env[@]}" timeout -k 10 "${L2_TIMEOUT:-150}" python3 benchmarks/bench_w8a8.py --tokens "${L2_W8_TOKENS:-1,16}" \
      --json "$OUT/l2_w8a8_$tag.json" > "/tmp/l2_w8a8_$tag.txt" 2>&1
    echo "$tag w8a8 exit $?"; tail -3 "/tmp/l2_w8a8_$tag.txt"
  done
}
depthab() {  # prepared: the split variant's ring 16 chunks deep per warp (QTOOL_SPLIT_DEPTH; .gpu/extB, built with
  # PREBUILD_CACHE=/tmp/qtool_prebuild_cacheB OUTDIR=.gpu/extB QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_DEPTH=16 dev/prebuild_ext.sh)
  # against the default 8: dev/split_ab.py in each build, ratios to bf16 per process
  local extra="-DQTOOL_SPLIT_DEPTH=${SPLIT_DEPTH:-16}" cache=/tmp/qc_depth
  step "split ring depth A/B: the default build against $extra (separate processes)"
  second_build "$cache" "$extra" .gpu/extB
  for tag in a b; do
    local env=()
    [ "$tag" = b ] && env=(QTOOL_KERNELS_CACHE=$cache QTOOL_NVCC_EXTRA=$extra)
    env "${env[@]}" timeout -k 10 "${SA_TIMEOUT:-200}" python3 dev/split_ab.py --tokens "${SA_TOKENS:-9,16}" \
      --json "$OUT/depth_$tag.json" 2>&1 | grep -v "^USDT\|graph capture failed"
  done
}
kerneltests() {  # every GPU test of a kernel that reads weights through load_streaming / cp_async_shared_16
  # shellcheck disable=SC2086  # KT_FILES: a word list
  gputests kerneltests "${KT_TIMEOUT:-260}" ${KT_FILES:-tests/test_kernels_gpu.py tests/test_w8a8_gpu.py \
    tests/test_planes_gpu.py tests/test_split_gpu.py tests/test_lowbit_gpu.py tests/test_wo_stream_gpu.py \
    tests/test_wo_gemm_gpu.py tests/test_mixed_gpu.py tests/test_norm_planes_gpu.py tests/test_prefetch_gpu.py \
    tests/test_routes.py}
}
decodecells() {  # issue 18 at 1-16 tokens and issue 19's W8 / W4 decode columns, with the hint on
  step "W8A8 at 1-16 tokens"
  timeout -k 10 "${DC_TIMEOUT:-150}" python3 benchmarks/bench_w8a8.py --tokens 1,2,4,8,16 \
    --json "$OUT/w8a8_decode.json" > /tmp/w8a8_decode.txt 2>&1
  echo "exit $?"; tail -3 /tmp/w8a8_decode.txt
  step "weight-only W8 / W4 at 1, 4, 16 tokens"
  timeout -k 10 "${DC_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py --formats w8a16-channel,w4a16-g128 \
    --tokens 1,4,16 --json "$OUT/wo_decode.json" > /tmp/wo_decode.txt 2>&1
  echo "exit $?"
}
e2efp8() { bench8b "" fp8 1,16 128 6; }  # issue 18 end to end, the w8_gemv layers with the hint
for stage in "$@"; do "$stage"; done
step "done"
