#!/usr/bin/env bash
# The device calls of session 61 (BENCHMARKS.md "session 61"). Call 1 (an H100; carry [".gpu/w8a8", ".gpu/ext",
# ".gpu/extB"]) ran `bash dev/session60.sh scaleab`: the scales on the cp.async ring in every block against none.
#   ringabc   three builds, each in its own process (dev/split_ab.py): a = the default then (0; 2 since this call),
#             b = .gpu/extB (=1, every block), c = .gpu/extC (=2, the narrow block only), then build c's split tests.
#             Build b / c with PREBUILD_CACHE=/tmp/qtool_prebuild_cacheB (C) OUTDIR=.gpu/extB (C)
#             QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_SCALE_RING=1 (2) bash dev/prebuild_ext.sh; carry [".gpu/w8a8", ".gpu/ext",
#             ".gpu/extB", ".gpu/extC"] with the CUTLASS wheel, libqtool_sm90_mixed8-* and libqtool_sm90_block-* moved
#             out of .gpu/w8a8 (64 MiB; split_ab.py needs only the W4 library).
#   h200      an H200's issue-19 figures: the 8B at batches 1 / 16 (dev/session55.sh first56), the split routes at
#             9 / 12 / 16 tokens (dev/session60.sh splitab), the W8 / W4 decode cells (decodecells); carry
#             [".gpu/w8a8", ".gpu/ext"] (every Hopper library prebuilt: the CUTLASS wheel may stay out).
#   h100      where an H100 comes instead (call 3): the split, stream and planes kernels' GPU tests, the 8B at batch 16.
#   h100table call 4: W4 / W8 at 1-256 tokens on the committed routes (bench_kernels.py; an H100's fallback for h200).
#   ncusplit  call 5: NCU_SHAPE=4096x4096 bash dev/session58.sh ncusplit (the first, eager launch; caches flushed).
#   ncuwarm   calls 6-7: Nsight Compute on a later launch, caches flushed (NCU_CACHE=all) or not (none).
#   exitab    prepared, not run (no device time left): the cluster sum's exit barrier with a relaxed arrive
#             (-DQTOOL_CLUSTER_RELAXED_EXIT=1, .gpu/extB) against the default; carry [".gpu/w8a8", ".gpu/ext",
#             ".gpu/extB"] without the CUTLASS wheel.
cd "$(dirname "$0")/.."
s61_stages=("$@")
set --
source dev/session60.sh  # session 59's setup (gpu_setup.sh, second_build), splitabc, splitab
ringabc() {
  B_EXTRA=-DQTOOL_SPLIT_SCALE_RING=1 C_EXTRA=-DQTOOL_SPLIT_SCALE_RING=2 ABC_TOKENS=${ABC_TOKENS:-9,12,16} \
    ABC_SHAPES=${ABC_SHAPES:-4096x4096,4096x6144,4096x14336,4096x28672,14336x4096,8192x8192} splitabc
  QTOOL_KERNELS_CACHE=/tmp/qc_c QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_SCALE_RING=2 gputests ringtests "${RT_TIMEOUT:-150}" \
    tests/test_split_gpu.py tests/test_routes.py
}
h200() {
  bash dev/session55.sh first56
  SA_TOKENS=9,12,16 SA_SHAPES=4096x4096,4096x6144,4096x14336,14336x4096,8192x8192 SA_TIMEOUT=${SA_TIMEOUT:-120} splitab
  decodecells
}
h100() {  # where an H100 comes instead: the committed default's kernel tests, the 8B at batch 16
  KT_TIMEOUT=${KT_TIMEOUT:-200} KT_FILES="tests/test_split_gpu.py tests/test_wo_stream_gpu.py tests/test_planes_gpu.py \
    tests/test_routes.py" kerneltests
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b _b16 w4a16 16 128 8
}
h100table() {  # issue 19's W4 / W8 columns at 1-256 tokens on the routes as committed (the split at 9-16)
  step "weight-only W4 / W8 at 1-256 tokens"
  timeout -k 15 "${TABLE_TIMEOUT:-300}" python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel \
    --tokens 1,9,12,16,32,64,128,256 --json "$OUT/wo_table.json" > /tmp/wo_table.txt 2>&1
  echo "exit $?"; grep -E "^\\|" /tmp/wo_table.txt | tail -16
}
ncuwarm() {  # calls 6-7: Nsight Compute on the split variant at 16 tokens, the 7th launch of dev/split_ab.py (past the
  # check's), NCU_CACHE=all (ncu's default: caches flushed before the replay, call 6) or none (call 7: the weight and x
  # in the L2, as one copy re-launched leaves them); the stall summary by dev/ncu_sass_top.py. NCU_SKIP (6): launches
  # skipped; NCU_ARGS: more arguments of dev/split_ab.py (session 63: NCU_SKIP=0 NCU_ARGS="--check-tokens 32", the plan's)
  local shape
  for shape in ${NCU_SHAPES:-4096x4096 14336x4096}; do
    step "ncu --set full --cache-control ${NCU_CACHE:-all}: wo_split_kernel on $shape at ${NCU_TOKENS:-16} tokens"
    timeout -k 10 "${NCU_TIMEOUT:-100}" ncu --cache-control "${NCU_CACHE:-all}" --clock-control none \
      --kernel-name-base demangled --kernel-name regex:wo_split_kernel --launch-skip "${NCU_SKIP:-6}" --launch-count 1 --set full \
      --import-source yes -f -o "/tmp/ncu_$shape" python3 dev/split_ab.py --shapes "$shape" \
      --tokens "${NCU_TOKENS:-16}" ${NCU_ARGS:-} > "/tmp/ncu_$shape.log" 2>&1
    echo "ncu exit $?"
    ncu --import "/tmp/ncu_$shape.ncu-rep" --page source --csv --print-source sass > "$OUT/sass_$shape.csv" 2>&1
    ncu --import "/tmp/ncu_$shape.ncu-rep" --page details --csv > "$OUT/details_$shape.csv" 2>&1
    grep -E '"(Duration|DRAM Throughput|Achieved Occupancy|Issue Slots Busy|L2 Hit Rate)"' "$OUT/details_$shape.csv" \
      | awk -F'","' '{print $13 ": " $15}'
    python3 dev/ncu_sass_top.py "$OUT/sass_$shape.csv"
  done
}
exitab() {  # the cluster's exit barrier with a relaxed arrive (.gpu/extB built with -DQTOOL_CLUSTER_RELAXED_EXIT=1)
  # against the default, each in its own process; the split and tile tests on it first
  local extra=-DQTOOL_CLUSTER_RELAXED_EXIT=1
  second_build /tmp/qc_exit "$extra" .gpu/extB
  QTOOL_KERNELS_CACHE=/tmp/qc_exit QTOOL_NVCC_EXTRA=$extra gputests exittests "${ET_TIMEOUT:-100}" \
    tests/test_split_gpu.py tests/test_planes_gpu.py -k "split or tile"
  for tag in a b; do
    local env=()
    [ "$tag" = b ] && env=(QTOOL_KERNELS_CACHE=/tmp/qc_exit QTOOL_NVCC_EXTRA=$extra)
    env "${env[@]}" timeout -k 10 "${SA_TIMEOUT:-90}" python3 dev/split_ab.py --tokens "${SA_TOKENS:-9,16}" \
      --shapes "${SA_SHAPES:-4096x4096,4096x6144,14336x4096,8192x8192}" --json "$OUT/exit_$tag.json" 2>&1 \
      | grep -v "^USDT\|graph capture failed"
  done
}
for stage in "${s61_stages[@]}"; do "$stage"; done
step "done"
