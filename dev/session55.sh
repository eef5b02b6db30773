#!/usr/bin/env bash
# The device calls prepared in session 55 (carry [".gpu/w8a8", ".gpu/ext"]; on a fresh development machine
# `bash dev/prebuild_sm90.sh` and `bash dev/prebuild_ext.sh` first). Back to back: a machine idle for 30 s is given
# back. Session 55 (H100 only) found the protocol's order biased the compute-bound cells: both tables and both sweeps
# now replay every variant's graph in turn (benchmarks/replay.py). Routes measured on a card now land
# in that card's own cells (tuning.MIXED_H100 / W8A8_H100 on an H100, tuning.MIXED / W8A8 on an H200), so every
# sweep below merges whichever card comes; copy $OUT/tuning.py back into kernels/tuning.py at once. In priority order:
#   call 1: bash dev/session55.sh first56        (~6 min: on an H200 issue 19's 8B goals at batches 1 / 16, with
#           every lever of sessions 50-55 (they still owe an H200 figure); on an H100 the W8A8 sweep below)
#   call 2: bash dev/session55.sh w8sweep        (~4 min: fp8-block / fp8 / int8 at 1-16 and 1024-8192 tokens,
#           merged for the card; session 55's H100 table had fp8-block 28672 x 8192 at 8192 tokens at 1.19x where
#           cuBLAS's block-wise GEMM alone ran 1.61x, and fp8-block's gemv at 1-2 tokens on the N = 8192 shapes at
#           1.47-1.53x where block-swap ran 1.71x at 4 tokens)
#   call 3: bash dev/session55.sh wosweep        (~7 min: the mixed GEMM's schedules at 64-4096 tokens, interleaved,
#           merged for the card; session 48's H200 cells below 0.95x were timed one after another)
#   call 4: bash dev/session55.sh tables         (~6 min: issue 18's and 19's whole tables on the merged routes)
cd "$(dirname "$0")/.."
source dev/session51.sh  # gpu_setup.sh (the log: $OUT/session51.log), session 50-51 functions, h200first

w8sweep() {  # W8A8 routes at 1024-8192 tokens for this card, every configuration's graph replayed in turn
  step "W8A8 at ${W8_TOKENS:-1,2,4,8,16,1024,4096,8192} tokens (dev/w8a8_sweep.py), merged into this card's cells"
  timeout -k 10 "${W8_TIMEOUT:-230}" python3 dev/w8a8_sweep.py --kinds "${W8_KINDS:-fp8-block,fp8,int8}" \
    --tokens "${W8_TOKENS:-1,2,4,8,16,1024,4096,8192}" --budget "${W8_BUDGET:-200}" --json "$OUT/w8sweep.json" 2>&1 \
    | grep -v "^USDT" | tail -40
  python3 dev/w8a8_sweep.py --emit "$OUT/w8sweep.json" --merge && cp kernels/tuning.py "$OUT/tuning.py"
  git diff --stat kernels/tuning.py
}
wosweep() {  # the mixed GEMM's routes for this card: the small shapes at 64-4096 tokens, then the wide ones at
  # 128-256 (session 50's smallsweep / widesweep, now interleaved and merged on any card)
  SWEEP_TIMEOUT=${SWEEP_TIMEOUT:-200} smallsweep
  SWEEP_TIMEOUT=${SWEEP_TIMEOUT:-200} widesweep
}
tables() {  # issue 19's and issue 18's whole tables
  TABLE_TIMEOUT=${TABLE_TIMEOUT:-330} wotable
  W8A8_TIMEOUT=${W8A8_TIMEOUT:-230} w8a8all
}
first56() {  # an H200's first call measures issue 19's 8B goals; an H100's sweeps W8A8 for its own cells
  case "$GPU" in
    *H200*) h200first ;;
    *) w8sweep ;;
  esac
}
for stage in "$@"; do "$stage"; done
step "done"
