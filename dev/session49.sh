#!/usr/bin/env bash
# The next session's device calls (prepared in session 48; nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]; on a fresh
# development machine `bash dev/prebuild_sm90.sh` and `bash dev/prebuild_ext.sh` first). Back to back: a machine idle
# for 30 s is given back. Session 48's batch-16 W4A16 decode ran 4900-4949 tok/s (1.81-1.82x) on the merged routes,
# against session 47's 5056 (1.87x) on the routes before the two merges that moved q/k/v, o and down at 16 tokens from
# wo_gemm to the Hopper GEMM (each faster alone in the protocol). So:
#   call 1: bash dev/session49.sh routeab w8table    (~6 min: the two route tables alternated inside the 8B step,
#           two rounds; W8A16's row at 33-256 tokens with the split route off, on the H200)
cd "$(dirname "$0")/.."
LOG=session49.log
source dev/gpu_setup.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "device: $GPU"

routeab() {  # tuning.py before session 47's merge (33da1e9) against this one, alternated, batch 16, prefill 128
  cp kernels/tuning.py /tmp/tuning_now.py
  git show 33da1e9:kernels/tuning.py > /tmp/tuning_before.py
  for round in 1 2; do
    for table in before now; do
      cp "/tmp/tuning_$table.py" kernels/tuning.py
      E2E_TIMEOUT=${E2E_TIMEOUT:-110} bench8b "-bs16-$table$round" w4a16 16 128 6
    done
  done
  cp /tmp/tuning_now.py kernels/tuning.py
}
w8table() {  # W8A16 at 33-256 tokens with weight_only.SPLIT off (session 48), bf16 in the same run
  step "W8A16 at 33-256 tokens, the split route off"
  timeout -k 10 "${W8_TIMEOUT:-120}" python3 benchmarks/bench_kernels.py --formats w8a16-channel \
    --tokens 33,64,128,256 --json "$OUT/w8table.json" > /tmp/w8table.txt 2>&1
  echo "exit $?"; tail -28 /tmp/w8table.txt
}
for stage in "$@"; do "$stage"; done
step "done"
