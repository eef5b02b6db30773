#!/usr/bin/env bash
# The next session's device calls (prepared in session 48; nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]; on a fresh
# development machine `bash dev/prebuild_sm90.sh` and `bash dev/prebuild_ext.sh` first). Back to back: a machine idle
# for 30 s is given back. Session 48's batch-16 W4A16 decode ran 4900-4949 tok/s (1.81-1.82x) on the merged routes,
# against session 47's 5056 (1.87x) on the routes before the two merges that moved q/k/v, o and down at 16 tokens from
# wo_gemm to the Hopper GEMM (each faster alone in the protocol). So:
#   call 1: bash dev/session49.sh routeab w8table    (~6 min: the two route tables alternated inside the 8B step,
#           two rounds; W8A16's row at 33-256 tokens with the split route off, on the H200)
#   call 2: bash dev/session49.sh smallsweep         (~4 min: W4 / W8 on 4096 x 4096 and 4096 x 6144 at 64-256 and
#           4096 tokens re-swept under PDL and merged; session 48's table had W4 4096 x 4096 at 4096 tokens at 0.88x
#           with the default schedule 15 us faster than the route, and W8 there at 128-256 tokens below 0.95x)
#   call 3: bash dev/session49.sh e2ew8head          (~4 min: the 8B W4A16 decode with lm_head at 8 bits per channel,
#           which cost nothing measurable on SmolLM2, where a 4-bit head gave 2.54x at batch 1 but +35% perplexity)
# Copy $OUT/tuning.py back into kernels/tuning.py after call 2 (`tar -xzf out.tar.gz` first if gpu_setup packed it).
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
route16ab() {  # which of the four fused 8B lines (reverted one at a time to 33da1e9) costs the batch-16 step
  cp kernels/tuning.py /tmp/tuning_now.py
  git show 33da1e9:kernels/tuning.py > /tmp/tuning_before.py
  for variant in ${AB_VARIANTS:-now before qkv o gateup down}; do
    python3 - "$variant" <<'PY'
import sys
lines = {"qkv": "(4, 4096, 6144)", "o": "(4, 4096, 4096)", "gateup": "(4, 4096, 28672)", "down": "(4, 14336, 4096)"}
variant = sys.argv[1]
now, before = open("/tmp/tuning_now.py").read(), open("/tmp/tuning_before.py").read()
if variant == "before":
    now = before
elif variant in lines:
    key = "    " + lines[variant] + ":"
    old = next(line for line in now.splitlines() if line.startswith(key))
    new = next(line for line in before.splitlines() if line.startswith(key))
    now = now.replace(old, new)
open("kernels/tuning.py", "w").write(now)
PY
    E2E_TIMEOUT=${E2E_TIMEOUT:-110} bench8b "-bs16-$variant" w4a16 16 128 6
  done
  cp /tmp/tuning_now.py kernels/tuning.py
}
fixab() {  # the 9-16-token fix against it plus 33da1e9's 32-token q/k/v and gate/up routes, batches 16 and 32
  cp kernels/tuning.py /tmp/tuning_fix.py
  for round in 1 2; do
    for variant in fix fix32; do
      cp /tmp/tuning_fix.py kernels/tuning.py
      [ "$variant" = fix32 ] && python3 dev/setroutes.py "4,4096,6144:32=wo_gemm" "4,4096,28672:32=k128 t32 v1 s0"
      E2E_TIMEOUT=${E2E_TIMEOUT:-110} bench8b "-$variant$round" w4a16 16,32 128 9
    done
  done
  cp /tmp/tuning_fix.py kernels/tuning.py
}
w8table() {  # W8A16 at 33-256 tokens with weight_only.SPLIT off (session 48), bf16 in the same run
  step "W8A16 at 33-256 tokens, the split route off"
  timeout -k 10 "${W8_TIMEOUT:-120}" python3 benchmarks/bench_kernels.py --formats w8a16-channel \
    --tokens 33,64,128,256 --json "$OUT/w8table.json" > /tmp/w8table.txt 2>&1
  echo "exit $?"; tail -28 /tmp/w8table.txt
}
smallsweep() {  # the small weights' routes at 64-256 and 4096 tokens, under PDL (merged on the H200)
  step "W4 / W8 on 4096 x 4096 and 4096 x 6144 at 64-256 and 4096 tokens (dev/mixed_sweep.py)"
  timeout -k 10 "${SWEEP_TIMEOUT:-200}" python3 dev/mixed_sweep.py --formats w4a16-g128,w8a16-channel \
    --shapes 4096x4096,4096x6144 --tokens ${SWEEP_TOKENS:-64,128,256,4096} --budget "${SWEEP_BUDGET:-170}" \
    --json "$OUT/smallsweep.json" > /tmp/smallsweep.txt 2>&1
  echo "exit $?"; python3 dev/mixed_sweep.py --show "$OUT/smallsweep.json" 2>&1 | tail -18
  case "$GPU" in
    *H200*) python3 dev/mixed_sweep.py --emit "$OUT/smallsweep.json" --merge && cp kernels/tuning.py "$OUT/tuning.py"
            git diff --stat kernels/tuning.py ;;
    *) echo "not merged: routes are tuned on the H200 ($GPU)" ;;
  esac
}
e2ew8head() {  # batches 1 and 16, lm_head W8 per channel (qtool bench --lm-head-scheme w8a16)
  E2E_TIMEOUT=${E2E_TIMEOUT:-240} bench8b "-w8head" w4a16 1,16 128 12 --quantize-lm-head --lm-head-scheme w8a16
}
for stage in "$@"; do "$stage"; done
step "done"
