#!/usr/bin/env bash
# The device calls of session 62 (BENCHMARKS.md "session 62"). The split W4 GEMV's cluster sum (cluster_sum.cuh), the
# narrow block's latency chain that session 61's Nsight Compute found (22% of the stall samples on the two cluster
# barriers). Three builds, each timed in its own process (dev/split_ab.py):
#   a  the default (the pull form: every block leaves its tile, the cluster meets, each rank reads its share of every
#      tile, the cluster meets again before anyone leaves)
#   b  .gpu/extB: -DQTOOL_CLUSTER_RELAXED_EXIT=1 (the exit barrier's arrive relaxed; session 61's prepared option)
#   c  .gpu/extC: -DQTOOL_SPLIT_CLUSTER_PUSH=1 (the push form: values stored into their owners' receive buffers, one
#      barrier, no remote loads, no exit barrier)
# Build b / c: PREBUILD_CACHE=/tmp/qtool_prebuild_cacheB (C) OUTDIR=.gpu/extB (C) QTOOL_NVCC_EXTRA=... bash
# dev/prebuild_ext.sh. Carry [".gpu/w8a8", ".gpu/ext", ".gpu/extB", ".gpu/extC"] with libqtool_sm90_mixed8-* and
# libqtool_sm90_block-* moved out of .gpu/w8a8 (64 MiB; split_ab.py and the split tests need only the W4 library).
#   clusterab  the split and tile tests on b and c, then dev/split_ab.py in a, b, c (SA_TOKENS, SA_SHAPES)
#   pushsan    compute-sanitizer memcheck and racecheck on c (dev/san_split.py)
#   h200       on an H200: dev/session61.sh's h200 stage (carry [".gpu/w8a8", ".gpu/ext"] then)
cd "$(dirname "$0")/.."
s62_stages=("$@")
set --
source dev/session60.sh  # gpu_setup.sh, second_build, splitab, decodecells, kerneltests
B_EXTRA=-DQTOOL_CLUSTER_RELAXED_EXIT=1
C_EXTRA=-DQTOOL_SPLIT_CLUSTER_PUSH=1
clusterab() {
  second_build /tmp/qc_b "$B_EXTRA" .gpu/extB
  second_build /tmp/qc_c "$C_EXTRA" .gpu/extC
  step "split and tile tests: build c ($C_EXTRA)"
  QTOOL_KERNELS_CACHE=/tmp/qc_c QTOOL_NVCC_EXTRA=$C_EXTRA gputests pushtests "${CT_TIMEOUT:-120}" \
    tests/test_split_gpu.py tests/test_planes_gpu.py -k "split or tile"
  step "split and tile tests: build b ($B_EXTRA)"
  QTOOL_KERNELS_CACHE=/tmp/qc_b QTOOL_NVCC_EXTRA=$B_EXTRA gputests exittests "${CT_TIMEOUT:-120}" \
    tests/test_split_gpu.py tests/test_planes_gpu.py -k "split or tile"
  for tag in a b c; do
    local env=()
    [ "$tag" = b ] && env=(QTOOL_KERNELS_CACHE=/tmp/qc_b QTOOL_NVCC_EXTRA=$B_EXTRA)
    [ "$tag" = c ] && env=(QTOOL_KERNELS_CACHE=/tmp/qc_c QTOOL_NVCC_EXTRA=$C_EXTRA)
    step "build $tag ${env[*]}"
    env "${env[@]}" timeout -k 10 "${SA_TIMEOUT:-120}" python3 dev/split_ab.py --tokens "${SA_TOKENS:-9,16}" \
      --shapes "${SA_SHAPES:-4096x4096,4096x6144,14336x4096,8192x8192}" --json "$OUT/cluster_$tag.json" 2>&1 \
      | grep -v "^USDT\|graph capture failed"
  done
}
pushsan() {
  second_build /tmp/qc_c "$C_EXTRA" .gpu/extC
  QTOOL_KERNELS_CACHE=/tmp/qc_c QTOOL_NVCC_EXTRA=$C_EXTRA sanitize push dev/san_split.py
}
h200() { bash dev/session61.sh h200; }
for stage in "${s62_stages[@]}"; do "$stage"; done
step "done"
