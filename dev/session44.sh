#!/usr/bin/env bash
# The next session's device calls (prepared in session 43; nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]; on a fresh
# development machine `bash dev/prebuild_sm90.sh` and `bash dev/prebuild_ext.sh` first). Back to back: a machine idle
# for 30 s is given back. Each sweep merges its routes into kernels/tuning.py on the device and copies it to $OUT:
# copy it back before the next call, which measures the tables routed by it.
#   call 1: bash dev/session44.sh tests mixedsweep w4table   (~8 min: the tile-order test's stream-K graph fix, run
#           nowhere yet; the mixed-input GEMM's schedules re-timed under the ordered adds, split-K by 8 included, W4
#           g128 and W8 per channel at 9-64 tokens; issue 19's W4 cells routed by them)
#   call 2: bash dev/session44.sh chansweep4k w8a8table      (~7 min: fp8 / int8 / fp8-block at 4096 tokens with the
#           tile orders, which session 43 swept at 2048 and 8192 only; the full W8A8 table, 1-8192 tokens)
#   call 3: bash dev/session41.sh routeprobe8 routencu stripes16   (issue 18's M <= 64 floor, issue 19's 9-16 tokens)
cd "$(dirname "$0")/.."
LOG=session44.log
source dev/gpu_setup.sh

tests() {
  step "tile orders (stream-K's graph replay fixed in session 43), split reductions under every knob"
  gputests tests "${PT_TIMEOUT:-200}" tests/test_tile_order.py tests/test_split_locks_gpu.py tests/test_mixed_gpu.py \
    -k "order or knob or schedules or 256_row"
}
mixedsweep() {
  step "the mixed-input GEMM's schedules under the ordered adds (dev/mixed_sweep.py), merged into tuning.py"
  timeout -k 10 "${SWEEP_TIMEOUT:-280}" python3 dev/mixed_sweep.py --formats ${SWEEP_FORMATS:-w4a16-g128,w8a16-channel} \
    --tokens ${SWEEP_TOKENS:-9,16,32,64} --budget "${SWEEP_BUDGET:-250}" --json "$OUT/mixedsweep.json" > /tmp/mixedsweep.txt 2>&1
  echo "exit $?"; python3 dev/mixed_sweep.py --show "$OUT/mixedsweep.json" 2>&1 | tail -30
  python3 dev/mixed_sweep.py --emit "$OUT/mixedsweep.json" --merge && cp kernels/tuning.py "$OUT/tuning.py"
  git diff --stat kernels/tuning.py
}
w4table() {
  step "W4 g128 protocol table at 9-64 tokens (benchmarks/bench_kernels.py)"
  timeout -k 10 "${TABLE_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py --formats w4a16-g128 \
    --tokens ${W4_TOKENS:-9,16,32,64} --json "$OUT/w4_table.json" > /tmp/w4_table.txt 2>&1
  echo "exit $?"; tail -30 /tmp/w4_table.txt
}
chansweep4k() {
  step "fp8 / int8 / fp8-block at 4096 tokens with the tile orders, merged into tuning.py"
  timeout -k 10 "${CHAN_TIMEOUT:-200}" python3 dev/w8a8_sweep.py --kinds fp8,int8,fp8-block --tokens 4096 \
    --budget "${CHAN_BUDGET:-170}" --json "$OUT/chansweep4k.json" 2>&1 | grep -v "^USDT" | tail -20
  python3 dev/w8a8_sweep.py --emit "$OUT/chansweep4k.json" --merge && cp kernels/tuning.py "$OUT/tuning.py"
  git diff --stat kernels/tuning.py
}
w8a8table() {
  step "W8A8 protocol table (benchmarks/bench_w8a8.py)"
  timeout -k 10 "${TABLE_TIMEOUT:-240}" python3 benchmarks/bench_w8a8.py \
    --tokens ${TABLE_TOKENS:-1,16,64,256,1024,2048,4096,8192} --json "$OUT/w8a8_table.json" > /tmp/w8a8_table.txt 2>&1
  echo "exit $?"; tail -60 /tmp/w8a8_table.txt
}
for stage in "$@"; do "$stage"; done
step "done"
