#!/usr/bin/env bash
# The device calls of session 58 (carry [".gpu/w8a8", ".gpu/ext"]): wo_gemv's split variant (csrc/wo_split.cu), new
# this session, for issue 19's 9-32-token cells. In order:
#   splittests splitab     the variant's GPU tests (and the tile kernel's, whose cluster sum moved to cluster_sum.cuh),
#                          then dev/split_ab.py: the variant (the plan's splits, forced 2 / 4 / 8) against the route and
#                          bf16 at 5-32 tokens on issue 19's shapes and the 8B's fused ones, graphs replayed in turn
#   phases                 where its time goes (QTOOL_SPLIT_PHASES: staging, the cluster's sum, the mma left out)
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
phases() {  # where the split variant's time goes: QTOOL_SPLIT_PHASES 0 / 1 (no staging) / 2 (no cluster sum) / 4 (no
  # mma) / 7 (none of them), each in its own process (read once), on four shapes at 9 and 16 tokens
  for ph in 0 1 2 4 7; do
    step "split variant, QTOOL_SPLIT_PHASES=$ph"
    QTOOL_SPLIT_PHASES=$ph timeout -k 10 90 python3 dev/split_ab.py --tokens 9,16 \
      --shapes "${PH_SHAPES:-4096x4096,4096x14336,8192x8192,4096x28672}" --json "$OUT/phases_$ph.json" 2>&1 | grep -v "^USDT"
  done
}
for stage in "$@"; do "$stage"; done
step "done"
