#!/usr/bin/env bash
# The next session's device calls (prepared in session 47; nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]; on a fresh
# development machine `bash dev/prebuild_sm90.sh` and `bash dev/prebuild_ext.sh` first). Back to back: a machine idle
# for 30 s is given back. Session 47 moved the W4 routes of 4096 x 4096 and 14336 x 4096 at 9-16 tokens from wo_gemm
# to the Hopper GEMM under PDL (1.32x -> 1.44x, 1.63x -> 1.81x at 16 tokens), but the 8B's fused q/k/v shape
# (4096 x 6144) still routes wo_gemm at 9-32 tokens, and its batch-16 decode (1.87x against issue 19's 2.0x) ran
# before those routes were merged. So:
#   call 1: bash dev/session48.sh fusedsweep e2e16    (~4 min: the fused 8B shapes' W4 / W8 routes at 9-32 tokens
#           re-swept under PDL and merged; then the 8B W4A16 decode at batch 16 on them, prefill 128 to fit)
#   call 2: bash dev/session48.sh e2e1 wotable         (~8 min: batch 1 and prefill 1 x 2048; issue 19's whole table)
# Copy $OUT/tuning.py back into kernels/tuning.py after call 1 (`tar -xzf out.tar.gz` first if gpu_setup packed it).
# Added in session 48: e2elm (batches 1 / 16 with --quantize-lm-head), splitab (W8A16's split route off / on).
cd "$(dirname "$0")/.."
LOG=session48.log
source dev/gpu_setup.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "device: $GPU"

fusedsweep() {  # W4 g128 / W8 per channel on 4096 x 6144 and 4096 x 28672 at 9-32 tokens under PDL (H200 merges)
  step "fused 8B shapes at 9-32 tokens under PDL (dev/mixed_sweep.py)"
  timeout -k 10 "${SWEEP_TIMEOUT:-150}" python3 dev/mixed_sweep.py --formats w4a16-g128,w8a16-channel \
    --shapes 4096x6144,4096x28672 --tokens ${SWEEP_TOKENS:-9,16,32} --budget "${SWEEP_BUDGET:-120}" \
    --json "$OUT/fusedsweep.json" > /tmp/fusedsweep.txt 2>&1
  echo "exit $?"; python3 dev/mixed_sweep.py --show "$OUT/fusedsweep.json" 2>&1 | tail -14
  case "$GPU" in
    *H200*) python3 dev/mixed_sweep.py --emit "$OUT/fusedsweep.json" --merge && cp kernels/tuning.py "$OUT/tuning.py"
            git diff --stat kernels/tuning.py ;;
    *) echo "not merged: routes are tuned on the H200 ($GPU)" ;;
  esac
}
e2e16() {  # the 8B W4A16 decode at batch 16 on the merged routes (prefill 128: three compiled shapes pass 170 s)
  E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-bs16" w4a16 16 128 9
}
e2e1() {  # batch 1 and prefill 1 x 2048
  E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-bs1" w4a16 1 2048 9
}
e2elm() {  # batches 1 and 16 with lm_head quantized too (opt-in --quantize-lm-head; bf16 lm_head: 237 us of the step)
  E2E_TIMEOUT=${E2E_TIMEOUT:-240} bench8b "-lmhead" w4a16 1,16 128 12 --quantize-lm-head
}
splitab() {  # W8A16's two-int8-plane route (weight_only.SPLIT) on against off on its weights, one process each
  for setting in 0,0,0 33,256,25165824; do
    step "W8A16 4096 x 4096 / 4096 x 6144 at 33-256 tokens, QTOOL_ROWS_SPLIT=$setting"
    QTOOL_ROWS_SPLIT=$setting timeout -k 10 "${SPLIT_TIMEOUT:-90}" python3 benchmarks/bench_kernels.py \
      --formats w8a16-channel --shapes 4096x4096,4096x6144 --tokens 33,64,128,256 \
      --json "$OUT/splitab_${setting//,/_}.json" > /tmp/splitab.txt 2>&1
    echo "exit $?"; tail -12 /tmp/splitab.txt
  done
}
for stage in "$@"; do "$stage"; done
step "done"
