#!/usr/bin/env bash
# The device calls of session 56 (carry [".gpu/w8a8", ".gpu/ext"]). Session 56 (H100 only) ran session 55's w8sweep,
# wosweep and tables, then these (BENCHMARKS.md "H100, 2026-12-06 session 56"):
#   check    act_quant's grouped kernel changed to four groups per thread (.gpu/ext rebuilt for it), its GPU tests
#            and dev/act_quant_probe.py; cardab failed there to read the third table
#   check2   the tests again, act_quant four groups vs one per thread (QTOOL_ACT_QUANT_SLOTS=1) in alternating
#            processes (four lost at 16-1024 tokens: reverted, so aqab needs that build back), and dev/card_ab.py:
#            the H200's routes, the H100's cells and session 56's unfiltered sweep (dev/s56_unfiltered_cells.py)
#            in one process, which chose the H100's mixed cells
# Next, on an H200 (still owed since session 48): `bash dev/session55.sh first56` (issue 19's 8B goals at batches
# 1 / 16), then `tables`. On any card: `bash dev/session56.sh gap` (~2 min, prepared, never run: why fp8-block
# 4096 x 4096 at 64 tokens reads 0.99x in the table and 1.29x in the sweep; kernels/NOTES.md "Session 56"). Any
# route change goes through cardab (or the gap probe) first.
cd "$(dirname "$0")/.."
source dev/session51.sh  # gpu_setup.sh (the log: $OUT/session51.log), session 50-51 functions

aqtests() {  # the grouped act_quant against the reference bit for bit, and the layers that read it
  step "act_quant and fp8-block GPU tests"
  gputests aqtests "${AQ_TIMEOUT:-200}" tests/test_w8a8_gpu.py tests/test_split_mm.py -k "act_quant or block"
}
aqprobe() {
  step "act_quant against a copy (dev/act_quant_probe.py)"
  timeout -k 10 "${AQP_TIMEOUT:-120}" python3 dev/act_quant_probe.py --json "$OUT/act_quant.json" 2>&1 | grep -v "^USDT"
}
cardab() {
  step "weight-only routes: H200 tables vs H100 cells vs session 56's unfiltered sweep (dev/card_ab.py)"
  timeout -k 10 "${CAB_TIMEOUT:-240}" python3 dev/card_ab.py --cards H200,H100 --alt dev/s56_unfiltered_cells.py \
    --json "$OUT/card_ab.json" 2>&1 | grep -v "^USDT"
}
blocklarge() {
  step "W8A8 at 1024-8192 tokens (benchmarks/bench_w8a8.py)"
  timeout -k 10 "${BL_TIMEOUT:-150}" python3 benchmarks/bench_w8a8.py --tokens 1024,4096,8192 \
    --json "$OUT/w8a8_large.json" > /tmp/w8a8_large.txt 2>&1
  echo "exit $?"; grep -E "^(fp8|w8a8-int8|fp8-block|blockwise_gemm) " /tmp/w8a8_large.txt
}
aqab() {  # the grouped act_quant against session 55's (QTOOL_ACT_QUANT_SLOTS=1), alternating processes
  step "act_quant: four groups per thread vs one (dev/act_quant_probe.py, ABAB)"
  local shapes=8192x4096,8192x8192,8192x28672,1024x8192,256x4096,16x8192
  for round in 1 2; do
    for slots in 1 4; do
      echo "--- QTOOL_ACT_QUANT_SLOTS=$slots, round $round"
      QTOOL_ACT_QUANT_SLOTS=$slots timeout -k 10 60 python3 dev/act_quant_probe.py --shapes $shapes \
        --json "$OUT/aq_s${slots}_r$round.json" 2>&1 | grep -v "^USDT" | grep -v "^device"
    done
  done
}
gap() {  # the fp8-block layer: QuantLinear, the op, the sweep's weights, act_quant + GEMM with / without PDL
  step "fp8-block layer vs its parts (dev/w8a8_gap.py)"
  timeout -k 10 "${GAP_TIMEOUT:-180}" python3 dev/w8a8_gap.py --json "$OUT/w8a8_gap.json" 2>&1 | grep -v "^USDT"
}
check() { aqtests; aqprobe; cardab; blocklarge; }
check2() { AQ_TIMEOUT=100 aqtests; aqab; cardab; }
for stage in "$@"; do "$stage"; done
step "done"
