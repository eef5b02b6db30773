#!/usr/bin/env bash
# The device calls of session 63 (BENCHMARKS.md "session 63"). The Hopper libraries now travel xz-packed
# (dev/prebuild_sm90.sh, 32 -> 3 MB of the 64 MiB a call carries), so one call can carry four builds of the extension.
#   call 1 (named nvidia-h200, an H100 came; at 6f551bc with carry [".gpu/w8a8", ".gpu/ext", ".gpu/extB", ".gpu/extC",
#          ".gpu/extD"]): `bash dev/session63.sh auto`, which then ran on an H100 narrow32 (dev/session62.sh: the 8-warp
#          block at 17-32 tokens, extB = -DQTOOL_SPLIT_NARROW32=1), regring (below; extC / extD =
#          -DQTOOL_SPLIT_REG_RING=4 / 8, PREBUILD_CACHE=/tmp/qtool_prebuild_cacheC / D) and ncu32 (Nsight Compute on
#          the split variant at 32 tokens, caches flushed). Both options lost and are removed from wo_split.cu: to
#          repeat them, check out 6f551bc.
#   auto     now: on an H200, issue 19's 8B goals at batches 1 / 16, then issue 18's and 19's decode cells (the first
#            H200 figures since session 58; dev/session62.sh's h200 less its split A/B, for this session's budget); on an H100 (call 2 ran smallsplit and ncu32plan there), small1b.
#            Carry [".gpu/w8a8", ".gpu/ext"].
#   tables   issue 18's and 19's whole tables (dev/session55.sh tables; on an H200)
cd "$(dirname "$0")/.."
s63_stages=("$@")
set --
source dev/session62.sh  # gpu_setup.sh, second_build, split_ab_in, ncu32, h200
regring() {  # call 1: the 16-warp block's codes ring in registers (extC 4 deep, extD 8 deep) against the default
  local extra=-DQTOOL_SPLIT_REG_RING=4 tokens=${SA_TOKENS:-9,16} shapes=${SA_SHAPES:-4096x6144,14336x4096,4096x14336,8192x8192}
  second_build /tmp/qc_rr "$extra" .gpu/extC
  QTOOL_KERNELS_CACHE=/tmp/qc_rr QTOOL_NVCC_EXTRA=$extra gputests regringtests "${RT_TIMEOUT:-120}" tests/test_split_gpu.py
  split_ab_in a "" "" "$tokens" "$shapes" regring
  split_ab_in c /tmp/qc_rr "$extra" "$tokens" "$shapes" regring
  second_build /tmp/qc_rr8 -DQTOOL_SPLIT_REG_RING=8 .gpu/extD
  split_ab_in d /tmp/qc_rr8 -DQTOOL_SPLIT_REG_RING=8 "$tokens" "$shapes" regring
}
ncu32plan() {  # call 1's profile took the 7th launch, a forced 2-way split: the plan's launch now (the check's, first),
  # with the caches flushed and with the weight and x warm in the L2
  local cache
  for cache in all none; do
    NCU_CACHE=$cache NCU_SKIP=0 NCU_ARGS="--check-tokens 32" ncu32
    for f in details sass; do mv "$OUT/${f}_4096x4096.csv" "$OUT/${f}_plan32_$cache.csv" 2>/dev/null; done
  done
}
smallsplit() {  # call 1 had the split variant 31-40% ahead of the route on 4096 x 2048 / 2048 x 4096 at 16 tokens
  # (1.63 / 1.34x against wo_gemm's 1.24 / 0.96x; split_by_shape takes only weights of >= 4096 x 4096): the smaller
  # models' shapes (1-3B: hidden 2048-3072) at 9-16 tokens, for the rule
  SA_TOKENS=9,12,16 SA_SHAPES=${SMALL_SHAPES:-2048x2048,2048x3072,2048x4096,4096x2048,2048x16384,8192x2048,3072x3072} \
    SA_TAG=_small SA_TIMEOUT=${SA_TIMEOUT:-150} splitab
}
small1b() {  # the 1B's W4A16 decode at batch 16 under the new rule, and with the split variant nowhere
  # (QTOOL_SPLIT_GEMV=0: its 8192 x 2048 down projection too, which the old rule already gave it)
  local tag env
  for tag in rule off; do
    env=(); [ "$tag" = off ] && env=(QTOOL_SPLIT_GEMV=0)
    step "1B W4A16 at batch 16 ($tag ${env[*]})"
    env "${env[@]}" timeout -k 15 "${E2E_TIMEOUT:-150}" python3 -m quantize bench llama-1b --random-weights --scheme w4a16 \
      --decode-tokens 32 --batch-sizes 16 --prefill-len 128 --json "$OUT/e2e-1b-$tag.json" > "/tmp/e2e-1b-$tag.txt" 2>&1
    echo "exit $?"; tail -8 "/tmp/e2e-1b-$tag.txt"
  done
}
auto() {
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" in
    *H200*) E2E_TIMEOUT=${E2E_TIMEOUT:-240} bash dev/session55.sh first56; DC_TIMEOUT=${DC_TIMEOUT:-90} decodecells ;;
    *) small1b ;;
  esac
}
tables() { bash dev/session55.sh tables; }
for stage in "${s63_stages[@]}"; do "$stage"; done
[ ${#s63_stages[@]} -eq 0 ] || step "done"
