#!/usr/bin/env bash
# The device calls of session 58 (carry [".gpu/w8a8", ".gpu/ext"]): wo_gemv's split variant (csrc/wo_split.cu), new
# this session, for issue 19's 9-32-token cells. In order:
#   splittests splitab     the variant's GPU tests (and the tile kernel's, whose cluster sum moved to cluster_sum.cuh),
#                          then dev/split_ab.py: the variant (the plan's splits, forced 2 / 4 / 8) against the route and
#                          bf16 at 5-32 tokens on issue 19's shapes and the 8B's fused ones, graphs replayed in turn
#   (call 3, on the first version, one block per row block: where its time went, each phase left out in turn
#   (QTOOL_SPLIT_PHASES, since removed): staging, the cluster's sum and the mma each cost as much as the weight's
#   streaming, one after another in a single wave; so the variant became persistent over row blocks)
cd "$(dirname "$0")/.."
LOG=session58.log
source dev/gpu_setup.sh
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

splittests() {
  step "split variant GPU tests; the tile kernel's"
  gputests splittests "${ST_TIMEOUT:-200}" tests/test_split_gpu.py tests/test_planes_gpu.py -k "split or tile"
}
splitab() {
  step "split variant against the route and bf16 (dev/split_ab.py)"
  timeout -k 10 "${SA_TIMEOUT:-240}" python3 dev/split_ab.py --tokens "${SA_TOKENS:-5,8,9,12,16,24,32}" \
    ${SA_SHAPES:+--shapes $SA_SHAPES} ${SA_ASYM:+--asym} --json "$OUT/split_ab${SA_TAG:-}.json" 2>&1 | grep -v "^USDT"
}
for stage in "$@"; do "$stage"; done
step "done"
