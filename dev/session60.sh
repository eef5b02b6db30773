#!/usr/bin/env bash
# The device calls of session 60 (carry [".gpu/w8a8", ".gpu/ext", ".gpu/extB", ".gpu/extC"]; BENCHMARKS.md "session
# 60"). Three builds of the split variant (csrc/wo_split.cu), each timed in its own process against the route and
# bf16 (dev/split_ab.py: the plan and every forced split count):
#   a  the default build (8 warps per block, a ring 8 chunks deep per warp)
#   b  .gpu/extB: -DQTOOL_SPLIT_DEPTH=16 (64 KB of codes in flight per block)
#   c  .gpu/extC: -DQTOOL_SPLIT_WARPS=16 (16 stripes per block share one staging of x: one block of 16 warps per SM)
# Build b / c with PREBUILD_CACHE=/tmp/qtool_prebuild_cacheB (C) OUTDIR=.gpu/extB (C) QTOOL_NVCC_EXTRA=... bash
# dev/prebuild_ext.sh. To stay within the 64 MiB a call carries, move the CUTLASS wheel and the W8 Hopper libraries
# (libqtool_sm90_mixed8-*, libqtool_sm90_block-*) out of .gpu/w8a8 for these calls: split_ab.py needs only the W4 one.
#   splitabc     dev/split_ab.py in each build (ABC_TOKENS, ABC_SHAPES): call 1. Build c won; its 16 warps are the
#                default since (QTOOL_SPLIT_WARPS is gone: the warp count is a template parameter), so to repeat it
#                check out 8522976 first.
#   scaleab      prepared (not run): the scales on the cp.async ring against the default (QTOOL_SPLIT_SCALE_RING)
#   routed       call 3: the split and route tests, dev/split_ab.py at 9 / 12 / 16 tokens, the 8B at batch 16 (call 3
#                also ran a build with the staging loops unrolled, -DQTOOL_SPLIT_STAGE_UNROLL=4: level, removed)
# Also, from session 59: decodecells (an H200's W8 / W4 decode cells), kerneltests (KT_FILES), and
# NCU_SPLITS=2 bash dev/session58.sh ncusplit.
cd "$(dirname "$0")/.."
stages=("$@")
set --  # session59.sh's own stage loop then runs nothing; its log, $OUT/session59.log, is this call's
source dev/session59.sh  # gpu_setup.sh, second_build, decodecells, kerneltests
splitabc() {
  step "split variant, three builds in separate processes: default / ${B_EXTRA:=-DQTOOL_SPLIT_DEPTH=16} / ${C_EXTRA:=-DQTOOL_SPLIT_WARPS=16}"
  second_build /tmp/qc_b "$B_EXTRA" .gpu/extB
  second_build /tmp/qc_c "$C_EXTRA" .gpu/extC
  for tag in a b c; do
    local env=()
    [ "$tag" = b ] && env=(QTOOL_KERNELS_CACHE=/tmp/qc_b QTOOL_NVCC_EXTRA=$B_EXTRA)
    [ "$tag" = c ] && env=(QTOOL_KERNELS_CACHE=/tmp/qc_c QTOOL_NVCC_EXTRA=$C_EXTRA)
    step "build $tag ${env[*]}"
    env "${env[@]}" timeout -k 10 "${ABC_TIMEOUT:-150}" python3 dev/split_ab.py --tokens "${ABC_TOKENS:-9,16}" \
      ${ABC_SHAPES:+--shapes $ABC_SHAPES} --json "$OUT/abc_$tag.json" 2>&1 | grep -v "^USDT\|graph capture failed"
  done
}
routed() {  # call 2: the 16-warp block by default (8 on 4096 x 4096-sized weights) and its routes (split_by_shape):
  # the split and route tests, dev/split_ab.py at 9 / 12 / 16 tokens, the 8B W4A16 decode at batch 16
  step "split variant and route tests"
  gputests routed "${RT_TIMEOUT:-120}" tests/test_split_gpu.py tests/test_routes.py tests/test_wo_stream_gpu.py
  SA_TOKENS=${SA_TOKENS:-9,12,16} SA_SHAPES=${SA_SHAPES:-4096x4096,4096x6144,4096x14336,14336x4096,8192x8192} splitab
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b _b16 w4a16 16 128 8
}
scaleab() {  # prepared for session 61: the scales on the cp.async ring (-DQTOOL_SPLIT_SCALE_RING=1, .gpu/extB built with
  # PREBUILD_CACHE=/tmp/qtool_prebuild_cacheB OUTDIR=.gpu/extB QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_SCALE_RING=1 bash
  # dev/prebuild_ext.sh) against the default, each in its own process, the split variant's GPU tests in both
  local extra="-DQTOOL_SPLIT_SCALE_RING=1" shapes=${SA_SHAPES:-4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,8192x28672}
  step "split variant: scales on the cp.async ring ($extra) against the default, separate processes"
  second_build /tmp/qc_scale "$extra" .gpu/extB
  QTOOL_KERNELS_CACHE=/tmp/qc_scale QTOOL_NVCC_EXTRA=$extra gputests scaletests "${ST_TIMEOUT:-120}" \
    tests/test_split_gpu.py -k "not refuses"
  for tag in a b; do
    local env=()
    [ "$tag" = b ] && env=(QTOOL_KERNELS_CACHE=/tmp/qc_scale QTOOL_NVCC_EXTRA=$extra)
    env "${env[@]}" timeout -k 10 "${SA_TIMEOUT:-120}" python3 dev/split_ab.py --tokens "${SA_TOKENS:-9,16}" \
      --shapes "$shapes" --json "$OUT/scale_$tag.json" 2>&1 | grep -v "^USDT\|graph capture failed"
  done
}
for stage in "${stages[@]}"; do "$stage"; done
step "done"
