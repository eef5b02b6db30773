#!/usr/bin/env bash
# The device calls of session 56 (carry [".gpu/w8a8", ".gpu/ext"]; the extension in .gpu/ext is rebuilt for
# act_quant.cu's grouped kernel: `bash dev/prebuild_ext.sh`). Session 56's first three calls (H100) ran session 55's
# w8sweep, wosweep and tables (BENCHMARKS.md "H100, 2026-12-06 session 56"). The sweeps now keep a cell's route
# unless another beats it by the margin in the same run (dev/mixed_sweep.py, dev/w8a8_sweep.py: best_route).
#   call 4: bash dev/session56.sh check         (~6 min: act_quant's 1 x 128 groups four per thread, tested and
#           timed against a copy; the weight-only routes of the H200's tables, the H100's cells and session 56's
#           unfiltered sweep (dev/s56_unfiltered_cells.py) A/B'd in one process; fp8-block at 1024-8192 tokens). Ran
#           (call 4) but for cardab, which failed to read the third table.
#   call 5: bash dev/session56.sh check2        (~5 min: the tests again on the A/B build, act_quant's groups four
#           per thread against one in alternating processes, and cardab)
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
check() { aqtests; aqprobe; cardab; blocklarge; }
check2() { AQ_TIMEOUT=100 aqtests; aqab; cardab; }
for stage in "$@"; do "$stage"; done
step "done"
