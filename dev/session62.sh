#!/usr/bin/env bash
# The device calls of session 62 (BENCHMARKS.md "session 62"). The split W4 GEMV's cluster sum (cluster_sum.cuh), the
# narrow block's latency chain that session 61's Nsight Compute found (22% of the stall samples on the two cluster
# barriers).
#   clusterab  call 1 (an H100; at dd017aa, carry [".gpu/w8a8", ".gpu/ext", ".gpu/extB", ".gpu/extC"] with
#              libqtool_sm90_mixed8-* and libqtool_sm90_block-* moved out of .gpu/w8a8 for the 64 MiB): three builds,
#              each timed in its own process by dev/split_ab.py, after the split and tile tests on b and c:
#                a  the pull form then (every block leaves its tile, the cluster meets, each rank reads its share of
#                   every tile, the cluster meets again before any block leaves)
#                b  .gpu/extB, -DQTOOL_CLUSTER_RELAXED_EXIT=1: the exit barrier's arrive relaxed. It won (3-9%) and
#                   is the code since; the option is gone
#                c  .gpu/extC, -DQTOOL_SPLIT_CLUSTER_PUSH=1: a push form (values stored into their owners' receive
#                   buffers, one barrier, no remote loads, no exit barrier). Between a and b: removed (to repeat it,
#                   check out dd017aa)
#              Build b / c: PREBUILD_CACHE=/tmp/qtool_prebuild_cacheB (C) OUTDIR=.gpu/extB (C) QTOOL_NVCC_EXTRA=...
#              bash dev/prebuild_ext.sh.
#   pushsan    call 1 too: compute-sanitizer on c (0 errors, 0 hazards up to san_split.py's one-split launch at 32
#              tokens, which c's receive buffer took past the shared memory)
#   relaxed    call 2 (carry [".gpu/w8a8", ".gpu/ext"]): the committed relaxed exit barrier's GPU tests (split, tile,
#              routes), compute-sanitizer memcheck and racecheck, dev/split_ab.py at 9 / 12 / 16 tokens, the 8B
#              W4A16 at batch 16
#   table      issue 19's W4 / W8 columns at 1-256 tokens (dev/session61.sh h100table)
#   h200       on an H200: dev/session61.sh's h200 stage
#   narrow32   run in session 63 (dev/session63.sh call 1; lost, the option removed: check out 6f551bc to repeat it):
#              the narrow (8-warp) block at 17-32 tokens too (.gpu/extB built with PREBUILD_CACHE=
#              /tmp/qtool_prebuild_cacheB OUTDIR=.gpu/extB QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_NARROW32=1 bash
#              dev/prebuild_ext.sh) against the default, each in its own process, the split tests on it first; carry
#              [".gpu/w8a8", ".gpu/ext", ".gpu/extB"]
#   ncu32      prepared: Nsight Compute on the split variant at 32 tokens (4096 x 4096, the 16-warp block with eight
#              n-tiles: 14.7 us against 9.0 at 16 tokens), caches flushed, with the stall summary; carry
#              [".gpu/w8a8", ".gpu/ext"]
cd "$(dirname "$0")/.."
s62_stages=("$@")
set --
source dev/session60.sh  # gpu_setup.sh, second_build, splitab, decodecells, kerneltests
B_EXTRA=-DQTOOL_CLUSTER_RELAXED_EXIT=1
C_EXTRA=-DQTOOL_SPLIT_CLUSTER_PUSH=1
split_ab_in() {  # split_ab_in TAG CACHE EXTRA TOKENS SHAPES NAME: dev/split_ab.py in its own process on the build
  # installed in CACHE with QTOOL_NVCC_EXTRA=EXTRA (second_build; both empty: the default), to $OUT/NAME_TAG.json
  local env=()
  [ -n "$2" ] && env=(QTOOL_KERNELS_CACHE=$2 QTOOL_NVCC_EXTRA=$3)
  step "build $1 ${env[*]}"
  env "${env[@]}" timeout -k 10 "${SA_TIMEOUT:-120}" python3 dev/split_ab.py --tokens "$4" --shapes "$5" \
    --json "$OUT/$6_$1.json" 2>&1 | grep -v "^USDT\|graph capture failed"
}
clusterab() {
  second_build /tmp/qc_b "$B_EXTRA" .gpu/extB
  second_build /tmp/qc_c "$C_EXTRA" .gpu/extC
  step "split and tile tests: build c ($C_EXTRA)"
  QTOOL_KERNELS_CACHE=/tmp/qc_c QTOOL_NVCC_EXTRA=$C_EXTRA gputests pushtests "${CT_TIMEOUT:-120}" \
    tests/test_split_gpu.py tests/test_planes_gpu.py -k "split or tile"
  step "split and tile tests: build b ($B_EXTRA)"
  QTOOL_KERNELS_CACHE=/tmp/qc_b QTOOL_NVCC_EXTRA=$B_EXTRA gputests exittests "${CT_TIMEOUT:-120}" \
    tests/test_split_gpu.py tests/test_planes_gpu.py -k "split or tile"
  local tokens=${SA_TOKENS:-9,16} shapes=${SA_SHAPES:-4096x4096,4096x6144,14336x4096,8192x8192}
  split_ab_in a "" "" "$tokens" "$shapes" cluster
  split_ab_in b /tmp/qc_b "$B_EXTRA" "$tokens" "$shapes" cluster
  split_ab_in c /tmp/qc_c "$C_EXTRA" "$tokens" "$shapes" cluster
}
pushsan() {
  second_build /tmp/qc_c "$C_EXTRA" .gpu/extC
  QTOOL_KERNELS_CACHE=/tmp/qc_c QTOOL_NVCC_EXTRA=$C_EXTRA sanitize push dev/san_split.py
}
relaxed() {
  KT_TIMEOUT=${KT_TIMEOUT:-150} KT_FILES="tests/test_split_gpu.py tests/test_planes_gpu.py tests/test_routes.py" \
    kerneltests
  sanitize split dev/san_split.py
  SA_TOKENS=9,12,16 SA_SHAPES=4096x4096,4096x6144,4096x14336,14336x4096,8192x8192 SA_TIMEOUT=${SA_TIMEOUT:-120} splitab
  [ -n "${SKIP_E2E:-}" ] || E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b _b16 w4a16 16 128 8
}
e2e() { E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b _b16 w4a16 16 128 8; }  # call 3: the 8B W4A16 at batch 16
table() { bash dev/session61.sh h100table; }  # (call 4 ran the same commands inline, in this process's log)
h200() { bash dev/session61.sh h200; }
narrow32() {
  local extra=-DQTOOL_SPLIT_NARROW32=1
  second_build /tmp/qc_n32 "$extra" .gpu/extB
  QTOOL_KERNELS_CACHE=/tmp/qc_n32 QTOOL_NVCC_EXTRA=$extra gputests narrow32tests "${NT_TIMEOUT:-120}" \
    tests/test_split_gpu.py
  local tokens=${SA_TOKENS:-16,24,32} shapes=${SA_SHAPES:-4096x4096,4096x2048,2048x4096}
  split_ab_in a "" "" "$tokens" "$shapes" narrow32
  split_ab_in b /tmp/qc_n32 "$extra" "$tokens" "$shapes" narrow32
}
ncu32() { NCU_TOKENS=32 NCU_SHAPES=${NCU_SHAPES:-4096x4096} bash dev/session61.sh ncuwarm; }
for stage in "${s62_stages[@]}"; do "$stage"; done
[ ${#s62_stages[@]} -eq 0 ] || step "done"  # (sourced by session63.sh)
