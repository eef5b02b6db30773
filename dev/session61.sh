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
#   h100table W4 / W8 at 1-256 tokens on the committed routes (bench_kernels.py; an H100's fallback for h200).
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
for stage in "${s61_stages[@]}"; do "$stage"; done
step "done"
