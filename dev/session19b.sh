#!/usr/bin/env bash
# Session 19, call 3 (nvidia-h200, carry [".gpu/w8a8"]: the Hopper libraries rebuilt with
# CUTLASS_ENABLE_GDC_FOR_SM90 and qtool's stream-K scheduler, dev/prebuild_sm90.sh):
#   bash dev/session19b.sh gdctests pdltests8 gdcwo gdcw8a8; bash dev/session19.sh zsum     (~9 min)
# gdctests  the Hopper GEMMs' GPU tests (mixed W4/W8A16, W8A8, FP8 block) with QTOOL_GEMM_PDL=1, then the mixed
#           ones plain (pdltests8 runs the W8A8 ones plain for the GEMMs)
# pdltests8 w8_gemv's PDL twin (now the default where tuning.gemv_pdl says, for static weights) on every w8_gemv
#           test: QTOOL_PDL=2 (the twin on every call), then the defaults over the QuantLinear paths
# gdcwo     W4A16 g128 and W8A16 per channel at 16-256 tokens (the CUTLASS mixed-input GEMM's batches),
#           QTOOL_GEMM_PDL=0 vs 1 (issue 19: W4 M=32-256 and "never below 0.95x" on 4096 x 4096 / 8192 x 8192,
#           the ~14 us fixed cost)
# gdcw8a8   W8A8 (fp8, int8, fp8-block) at 32, 64, 256 tokens, QTOOL_GEMM_PDL=0 vs 1 (issue 18: M = 64 >= 1.4x,
#           M = 256 >= 1.5x); act_quant now releases the GEMM after it at its start (pdl.cuh pdl_release)
# e2e       8B decode w4a16 at batch 1 and 16, prefill 2048 (QTOOL_GEMM_PDL=$GEMM_PDL, default 1)
cd "$(dirname "$0")/.."
LOG=session19b.log
source dev/gpu_setup.sh

gdctests() {
  step "Hopper GEMM tests with QTOOL_GEMM_PDL=1, then without"
  QTOOL_GEMM_PDL=1 timeout 150 python3 -m pytest -q -m gpu tests/test_mixed_gpu.py tests/test_w8a8_gpu.py \
    --tb=short -rf > "$OUT/gdctests.txt" 2>&1
  summarize "$OUT/gdctests.txt"
  timeout 100 python3 -m pytest -q -m gpu tests/test_mixed_gpu.py --tb=short -rf > "$OUT/gdctests0.txt" 2>&1
  summarize "$OUT/gdctests0.txt"
}

pdltests8() {
  step "w8_gemv tests with QTOOL_PDL=2 (the twin on every call)"
  QTOOL_PDL=2 timeout 150 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_kernels_gpu.py --tb=short -rf \
    > "$OUT/pdltests8.txt" 2>&1
  summarize "$OUT/pdltests8.txt"
}

gdcwo() {
  step "weight-only at 16-256 tokens: QTOOL_GEMM_PDL=0 vs 1"
  for v in 0 1; do
    QTOOL_GEMM_PDL=$v timeout 150 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel \
      --tokens 16,32,64,128,256 --json "$OUT/gdcwo$v.json" > /dev/null 2>&1
  done
  python3 dev/ab_table.py "$OUT/gdcwo0.json" "$OUT/gdcwo1.json" --labels "GEMM PDL 0","GEMM PDL 1"
}

gdcw8a8() {
  step "W8A8 at 32-256 tokens: QTOOL_GEMM_PDL=0 vs 1"
  for v in 0 1; do
    QTOOL_GEMM_PDL=$v timeout 150 python3 benchmarks/bench_w8a8.py --tokens 32,64,256 --json "$OUT/gdcw8a8$v.json" \
      > /dev/null 2>&1
  done
  python3 dev/ab_w8a8.py "$OUT/gdcw8a80.json" "$OUT/gdcw8a81.json" --labels "GEMM PDL 0","GEMM PDL 1"
}

e2e() {
  QTOOL_GEMM_PDL=${GEMM_PDL:-1} E2E_TIMEOUT=400 bench8b "-gemmpdl${GEMM_PDL:-1}" "w4a16" 1,16 2048 8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(gdctests gdcwo gdcw8a8)
for s in "${stages[@]}"; do "$s"; done
step "done"
