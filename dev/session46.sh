#!/usr/bin/env bash
# Session 46's device calls after session 45's A/B (H100: the mixed-input GEMM under PDL cut its fixed time per
# call 10.8 -> 7.2 us; the L2 prefetch lost at every cap; early release and wo_gemm's PDL moved nothing past
# noise). Session 46 ran `pdltable e2epdl` on an H100 (the e2e cut); the rule that shipped (mixed_mm.PDL_MAX_M 128,
# PDL_MAX_M_SMALL 256 on weights <= 8192 x 8192) is still to be timed on the H200. Carry [".gpu/w8a8", ".gpu/ext"];
# nvidia-h200. In order of value, back to back (a machine idle for 30 s is given back):
#   call 1: bash dev/session46.sh pdltable pdlbig e2epdl   (~7 min: the W4 / W8 protocol table at 9-256 tokens
#           with the mixed GEMM's PDL off, then as shipped; the 28672-row weights at 128-256 tokens, PDL to 256
#           against none, alternated three times (session 46's H100 and session 19's W8A8 both lost there); the 8B
#           W4A16 decode at batch 16 off / on)
#   call 2: bash dev/session46.sh pdlsweep w4table   (~4 min, H200 only: the W4 routes at 9-32 tokens re-swept under
#           PDL, wo_gemm against the GEMM, merged into tuning.py; the W4 table with them)
#   then:   bash dev/session46.sh w8a8pdl (fp8 / int8 with the W8A8 GEMM's PDL to 256 tokens against 64);
#           bash dev/session44.sh chansweep4k w8a8table; bash dev/session45.sh w8a8ab fixedcost mm16ncu
cd "$(dirname "$0")/.."
LOG=session46.log
source dev/gpu_setup.sh
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "device: $GPU"

pdltable() {  # W4 g128 and W8 per channel at 9-256 tokens with the mixed GEMM's PDL off, then as shipped
  for bound in 0 default; do
    step "W4 g128 / W8 per channel at 9-256 tokens, QTOOL_MIXED_PDL_MAX_M=$bound (benchmarks/bench_kernels.py)"
    (if [ "$bound" = default ]; then unset QTOOL_MIXED_PDL_MAX_M; else export QTOOL_MIXED_PDL_MAX_M=$bound; fi
     timeout -k 10 "${TABLE_TIMEOUT:-120}" python3 benchmarks/bench_kernels.py \
      --formats w4a16-g128,w8a16-channel --tokens ${PDL_TOKENS:-9,16,32,64,128,256} \
      --json "$OUT/pdltable_$bound.json" > "/tmp/pdltable_$bound.txt" 2>&1
     echo "exit $?")
    tail -${TABLE_TAIL:-20} "/tmp/pdltable_$bound.txt"
  done
  python3 dev/pdl_compare.py "$OUT/pdltable_0.json" "$OUT/pdltable_default.json"
}
pdlbig() {  # the 28672-row weights at 128-256 tokens: PDL to 256 against none, alternated (one process each)
  step "the 28672-row weights at 128-256 tokens, PDL to 256 tokens against none, three rounds"
  for round in 1 2 3; do
    for bound in 0 256; do
      QTOOL_MIXED_PDL_MAX_M=$bound timeout -k 10 "${BIG_TIMEOUT:-60}" python3 benchmarks/bench_kernels.py \
        --formats w4a16-g128,w8a16-channel --tokens 128,256 --shapes 8192x28672,28672x8192 \
        --json "$OUT/pdlbig_${bound}_$round.json" > /dev/null 2>&1
    done
    python3 dev/pdl_compare.py "$OUT/pdlbig_0_$round.json" "$OUT/pdlbig_256_$round.json"
  done
}
pdlsweep() {  # the W4 routes at 9-32 tokens re-swept under PDL (wo_gemm against the GEMM), merged on an H200 only
  step "W4 g128 schedules at 9-32 tokens under PDL (dev/mixed_sweep.py)"
  timeout -k 10 "${SWEEP_TIMEOUT:-200}" python3 dev/mixed_sweep.py --formats w4a16-g128 --tokens ${SWEEP_TOKENS:-9,16,32} \
    --budget "${SWEEP_BUDGET:-170}" --json "$OUT/pdlsweep.json" > /tmp/pdlsweep.txt 2>&1
  echo "exit $?"; python3 dev/mixed_sweep.py --show "$OUT/pdlsweep.json" 2>&1 | tail -24
  case "$GPU" in
    *H200*) python3 dev/mixed_sweep.py --emit "$OUT/pdlsweep.json" --merge && cp kernels/tuning.py "$OUT/tuning.py"
            git diff --stat kernels/tuning.py ;;
    *) echo "not merged: routes are tuned on the H200 ($GPU)" ;;
  esac
}
e2epdl() {  # the 8B W4A16 decode at batch 16 (batch 1 runs GEMVs only), the mixed GEMM's PDL off then on
  (export QTOOL_MIXED_PDL_MAX_M=0; bench8b "-pdl0" w4a16 "${E2E_BATCHES:-16}" 128 8)
  bench8b "-pdl" w4a16 "${E2E_BATCHES:-16}" 128 8
}
w8a8pdl() {  # the W8A8 GEMM (fp8, int8; libqtool_sm90) at 64-256 tokens under PDL to 64 tokens (the default), then 256
  for bound in 64 256; do
    step "W8A8 at 64-256 tokens, QTOOL_W8A8_PDL_MAX_M=$bound (benchmarks/bench_w8a8.py)"
    QTOOL_W8A8_PDL_MAX_M=$bound timeout -k 10 "${W8A8_TIMEOUT:-120}" python3 benchmarks/bench_w8a8.py --tokens 64,128,256 \
      --json "$OUT/w8a8pdl_$bound.json" > "/tmp/w8a8pdl_$bound.txt" 2>&1
    echo "exit $?"; tail -${TABLE_TAIL:-20} "/tmp/w8a8pdl_$bound.txt"
  done
}
w4table() {
  step "W4 g128 protocol table at 9-64 tokens (benchmarks/bench_kernels.py)"
  timeout -k 10 "${TABLE_TIMEOUT:-120}" python3 benchmarks/bench_kernels.py --formats w4a16-g128 \
    --tokens ${W4_TOKENS:-9,16,32,64} --json "$OUT/w4_table.json" > /tmp/w4_table.txt 2>&1
  echo "exit $?"; tail -30 /tmp/w4_table.txt
}
for stage in "$@"; do "$stage"; done
step "done"
