#!/usr/bin/env bash
# The device calls of session 58 (carry [".gpu/w8a8", ".gpu/ext"]; BENCHMARKS.md "H200 and H100, 2026-12-06 session
# 58"). Calls 2-5 measured wo_gemv's split variant (csrc/wo_split.cu), new this session, for issue 19's 9-32-token
# cells; it lost to the routes on five of six shapes and runs on 4096 x 4096 at 9-16 tokens only:
#   splittests splitab     the variant's GPU tests (and the tile kernel's, whose cluster sum moved to cluster_sum.cuh),
#                          then dev/split_ab.py: the variant (the plan's splits, forced 2 / 4 / 8) against the route,
#                          the one-stripe planes GEMV and bf16 at 5-32 tokens, graphs replayed in turn (SA_SHAPES,
#                          SA_TOKENS, SA_ASYM=1 for zero points)
#   (call 3, on the first version: where its time went, each phase left out in turn (QTOOL_SPLIT_PHASES, since
#   removed): staging, the cluster's sum and the mma each cost about as much as the weight's streaming, one after
#   another in a single wave)
# Calls 6-9 ran on an H200: `bash dev/session55.sh first56 tables` (issue 19's 8B goals: batch 1 2.53x, met; batch 16
# 1.94x; both whole tables), the fp8-block sweep at 1-16 tokens and issue 18 at 1-16 tokens on its cells. Call 10 (an
# H100): `bash dev/session55.sh wosweep`. Calls 11-12 (H100): the committed variant's tests and A/B, then 1124 GPU
# tests with its 4096 x 4096 rule on.
# Next: `bash dev/session58.sh splittests san ncusplit` (the review's last commit, ea9ef9a, changed the split and tile
# kernels' launch and cluster sum without a GPU run: same registers per ptxas; then compute-sanitizer on the split
# variant and Nsight Compute on it at 16 tokens, neither run this session: the device time was spent). On an H200, `bash dev/session55.sh tables` after any route change; issue 19's batch 16 (1.94x against 2.0x)
# and the 9-64-token W4 cells are what is open (kernels/NOTES.md "Session 58": a warp-specialized split GEMV is the
# lead the phase measurement gives).
cd "$(dirname "$0")/.."
LOG=session58.log
source dev/gpu_setup.sh
SA_TOKENS=${SA_TOKENS:-5,8,9,12,16,24,32}  # this session's splitab default (gpu_setup.sh)
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

ncusplit() {  # Nsight Compute on the split variant's first launch (dev/split_ab.py's check, eager) at 16 tokens:
  # where its time goes beyond streaming the codes (kernels/NOTES.md "Session 58")
  local shape=${NCU_SHAPE:-8192x8192}
  step "ncu --set full: wo_split_kernel on $shape at 16 tokens"
  timeout -k 10 "${NCU_TIMEOUT:-200}" ncu --clock-control none --kernel-name-base demangled \
    --kernel-name regex:wo_split_kernel --launch-count 1 --set full --import-source yes -f -o /tmp/split_ncu \
    python3 dev/split_ab.py --shapes "$shape" --tokens 16 ${NCU_SPLITS:+--check-splits $NCU_SPLITS} > /tmp/split_ncu.log 2>&1
  echo "ncu exit $?"; tail -2 /tmp/split_ncu.log
  ncu --import /tmp/split_ncu.ncu-rep --page details --csv > "$OUT/split_ncu_details.csv" 2>&1
  # the stall reasons per SASS line (session 59's next question: where one block per SM waits in the streaming loop:
  # NCU_SPLITS=2 profiles two splits, the variant's best count on 8192 x 8192)
  ncu --import /tmp/split_ncu.ncu-rep --page source --csv --print-source sass > "$OUT/split_ncu_sass.csv" 2>&1
  grep -E '"(Duration|DRAM Throughput|Achieved Occupancy|Registers Per Thread|Issue Slots Busy|Waves Per SM)"' \
    "$OUT/split_ncu_details.csv" | awk -F'","' '{print $13 ": " $15}' | head -8
}
for stage in "$@"; do "$stage"; done
step "done"
