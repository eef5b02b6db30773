#!/usr/bin/env bash
# Session 18, call 3 (nvidia-h200, carry [".gpu/w8a8"]): programmatic dependent launch for the GEMVs (pdl.cuh,
# QTOOL_PDL=1, read once per process), A/B in one build.
#   bash dev/session18c.sh                                   (~7 min)
# pdltests  wo_gemv and w8_gemv GPU tests with QTOOL_PDL=1 (and every kernel test file that launches them)
# wo        the weight-only layers at one token (ring GEMV), W8A16 per channel at 1 / 16 tokens (w8_gemv rows) and
#           W1A16 at 1-8 tokens (w1_gemv), QTOOL_PDL=0 vs 1, every shape
# w8        w8_gemv (W8A8 layers at 1-16 tokens), QTOOL_PDL=0 vs 1 (dev/gemv_probe.py --env QTOOL_PDL)
# e2e       8B decode at batch 1 and 16, w4a16 and w8a8-int8, QTOOL_PDL=0 vs 1 (~14 min: not in the default list)
# tests     every GPU test (plain launches)
cd "$(dirname "$0")/.."
LOG=session18c.log
source dev/gpu_setup.sh

pdltests() {
  step "GEMV tests with QTOOL_PDL=1"
  QTOOL_PDL=1 timeout 200 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py tests/test_w8a8_gpu.py \
    tests/test_lowbit_gpu.py tests/test_binary_gpu.py --tb=short -rf > "$OUT/pdltests.txt" 2>&1
  summarize "$OUT/pdltests.txt"
}

wo() {
  step "weight-only GEMVs: QTOOL_PDL=0 vs 1"
  for v in 0 1; do
    QTOOL_PDL=$v timeout 120 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w3a16-g128,w2a16-g64 --tokens 1 \
      --json "$OUT/wo_pdl$v.json" > /dev/null 2>&1
    QTOOL_PDL=$v timeout 100 python3 benchmarks/bench_kernels.py --formats w8a16-channel --tokens 1,16 \
      --json "$OUT/w8a16_pdl$v.json" > /dev/null 2>&1
    QTOOL_PDL=$v timeout 100 python3 benchmarks/bench_kernels.py --formats w1a16 --tokens 1,2,4,8 \
      --shapes 8192x8192,4096x4096,28672x8192 --json "$OUT/w1a16_pdl$v.json" > /dev/null 2>&1
  done
  python3 dev/ab_table.py "$OUT/w1a16_pdl0.json" "$OUT/w1a16_pdl1.json" --labels "PDL 0","PDL 1"
  python3 dev/ab_table.py "$OUT/wo_pdl0.json" "$OUT/wo_pdl1.json" --labels "PDL 0","PDL 1"
  python3 dev/ab_table.py "$OUT/w8a16_pdl0.json" "$OUT/w8a16_pdl1.json" --labels "PDL 0","PDL 1"
}

w8() {
  step "w8_gemv (W8A8 at 1-16 tokens): QTOOL_PDL=0 vs 1"
  timeout 200 python3 dev/gemv_probe.py --env QTOOL_PDL --switches 0,1 --tokens 1,16 --json "$OUT/w8pdl.json" 2>&1 | tail -40
}

e2e() {
  for v in 0 1; do
    QTOOL_PDL=$v bench8b "-pdl$v" "w4a16 w8a8-int8" 1,16 128 8
  done
}


stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(wo w8 pdltests tests)
for s in "${stages[@]}"; do "$s"; done
step "done"
