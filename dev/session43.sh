#!/usr/bin/env bash
# Session 43's device calls: session 41-42's A/Bs first, their tests only for what won (three failed starts left the
# budget for three calls). nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"].
#   call 1: bash dev/session43.sh ab1     (143 s: split flags kept / adds ordered at 16 and 64 tokens, W4 g128 and
#           fp8; tile order, 2 x 2 clusters and fp8-block's overlapped promotion at 1024 and 8192 tokens)
#   call 2: PT_TIMEOUT=250 bash dev/session41.sh ordertests locktests   (173 s, the knobs' GPU tests)
#   call 3: bash dev/session43.sh newtests blocksweep chansweep  (the ordered adds as the default and the tile order as
#           config bits, rebuilt: their tests; fp8-block's tiles with and without the overlap at 16-8192 tokens and
#           fp8 / int8 with and without an order at 2048-8192, merged into kernels/tuning.py, whose copy comes back)
#   call 4 (with that tuning.py): bash dev/session43.sh w8a8table w4table  (the protocol tables so routed; issue 19's
#           W4 cells at 9-64 tokens under the ordered adds)
#   (what ran: bash dev/session43.sh everything: calls 3 and 4 cut to one)
cd "$(dirname "$0")/.."
LOG=session43.log
ab1() {
  LOCK_LABELS="default keep ordered" LOCK_SCHEMES="w4 fp8" PROBE_TIMEOUT=60 \
    ORDER_SCHEMES=fp8-block,fp8,w8a8-int8 ORDER_TOKENS=1024,8192 ORDER_ROUNDS=1 ORDER_TIMEOUT=250 \
    bash dev/session41.sh lockab orderab
}
[ "${1:-}" = ab1 ] && { ab1; exit; }
source dev/gpu_setup.sh

newtests() {
  step "split reductions under each setting (ordered by default), every tile order, the overlapped promotion"
  gputests newtests "${PT_TIMEOUT:-200}" tests/test_split_locks_gpu.py tests/test_tile_order.py tests/test_w8a8_gpu.py \
    tests/test_mixed_gpu.py -k "${NEWTESTS_K:-knob or order or overlap or every_config or schedules or cuda_graph or 256_row or matches_float64}"
}
blocksweep() {
  step "fp8-block: each tile with and without the overlapped promotion (dev/w8a8_sweep.py), merged into tuning.py"
  timeout -k 10 "${SWEEP_TIMEOUT:-220}" python3 dev/w8a8_sweep.py --kinds fp8-block \
    --tokens ${SWEEP_TOKENS:-1024,2048,4096,8192,16,32,64,128,256,512} --budget "${SWEEP_BUDGET:-190}" \
    --json "$OUT/blocksweep.json" 2>&1 | grep -v "^USDT" | tail -62
  python3 dev/w8a8_sweep.py --emit "$OUT/blocksweep.json" --merge && cp kernels/tuning.py "$OUT/tuning.py"
  git diff --stat kernels/tuning.py
}
chansweep() {
  step "fp8 / int8 at 2048-8192 tokens: each tile with and without a tile order, merged into tuning.py"
  timeout -k 10 "${CHAN_TIMEOUT:-200}" python3 dev/w8a8_sweep.py --kinds fp8,int8 --tokens ${CHAN_TOKENS:-2048,4096,8192} \
    --budget "${CHAN_BUDGET:-170}" --json "$OUT/chansweep.json" 2>&1 | grep -v "^USDT" | tail -40
  python3 dev/w8a8_sweep.py --emit "$OUT/chansweep.json" --merge && cp kernels/tuning.py "$OUT/tuning.py"
  git diff --stat kernels/tuning.py
}
w8a8table() {
  step "W8A8 protocol table (benchmarks/bench_w8a8.py)"
  timeout -k 10 "${TABLE_TIMEOUT:-200}" python3 benchmarks/bench_w8a8.py --tokens ${TABLE_TOKENS:-1,16,64,256,1024,4096,8192} \
    --json "$OUT/w8a8_table.json" > /tmp/w8a8_table.txt 2>&1
  echo "exit $?"; tail -40 /tmp/w8a8_table.txt
}
w4table() {
  step "W4 g128 protocol table at 9-64 tokens (benchmarks/bench_kernels.py)"
  timeout -k 10 "${TABLE_TIMEOUT:-200}" python3 benchmarks/bench_kernels.py --formats w4a16-g128 \
    --tokens ${W4_TOKENS:-9,16,32,64} --json "$OUT/w4_table.json" > /tmp/w4_table.txt 2>&1
  echo "exit $?"; tail -30 /tmp/w4_table.txt
}
everything() {  # calls 3 and 4 in one, cut to fit 600 s (two more failed starts left the budget for one call)
  PT_TIMEOUT=100 NEWTESTS_K="knob or order or overlap_same or unknown_config" newtests
  SWEEP_TOKENS=1024,2048,4096,8192,16,64,256 SWEEP_TIMEOUT=150 SWEEP_BUDGET=135 blocksweep
  CHAN_TOKENS=2048,8192 CHAN_TIMEOUT=120 CHAN_BUDGET=105 chansweep
  TABLE_TOKENS=1024,4096,8192 TABLE_TIMEOUT=110 w8a8table
  W4_TOKENS=16,64 TABLE_TIMEOUT=70 w4table
}
for stage in "$@"; do "$stage"; done
step "done"
