#!/usr/bin/env bash
# The next session's device calls (prepared in session 44, whose loans were paused after one call; nvidia-h200, carry
# [".gpu/w8a8", ".gpu/ext"]; on a fresh development machine `bash dev/prebuild_sm90.sh` and `bash dev/prebuild_ext.sh`
# first). Back to back: a machine idle for 30 s is given back.
#   call 1: bash dev/session45.sh fixedcost pdlab mm16ncu   (~7 min: where issue 19's ~10 us per small-layer call
#           goes. The K and N sweeps of dev/fixed_cost.py: weights rotated, L2-resident, or marked as L2
#           streaming data (is the fixed time the mixed GEMM's 80-107 KB of code fetched cold?), and with PDL; the
#           W4 g128 cells at 9-64 tokens with QTOOL_GEMM_PDL=1, now that the ordered adds left no memset node in
#           front of the mixed GEMM (session 19 found PDL useless there behind that node); Nsight Compute on the
#           256-row mixed GEMM at 16 tokens on 8192 x 8192, the 32-CTA launch session 44 timed level with its
#           128-CTA split)
#   call 2: bash dev/session44.sh chansweep4k w8a8table     (~7 min, unchanged: 4096-token tile orders, full W8A8 table)
#   call 3: bash dev/session41.sh routeprobe8 routencu stripes16
cd "$(dirname "$0")/.."
LOG=session45.log
source dev/gpu_setup.sh

fixedcost() {  # the K sweep rotated / L2-resident / codes marked streaming, and the N sweep; then with PDL, rotated
  step "fixed cost per call: K and N sweeps at 16 tokens (dev/fixed_cost.py)"
  timeout -k 10 "${FIXED_TIMEOUT:-150}" python3 dev/fixed_cost.py --m "${FIXED_M:-16}" \
    --json "$OUT/fixed_cost.json" 2>&1 | grep -v "^USDT" | tail -60
  step "the same K sweep with QTOOL_GEMM_PDL=1, rotated"
  QTOOL_GEMM_PDL=1 timeout -k 10 "${FIXED_TIMEOUT:-80}" python3 dev/fixed_cost.py --m "${FIXED_M:-16}" --modes rotated \
    --ns 4096 --json "$OUT/fixed_cost_pdl.json" 2>&1 | grep -v "^USDT" | tail -20
}
pdlab() {
  for pdl in 0 1; do
    step "W4 g128 through QuantLinear at 9-64 tokens, QTOOL_GEMM_PDL=$pdl (dev/route_probe.py --bf16)"
    QTOOL_GEMM_PDL=$pdl timeout -k 10 "${PROBE_TIMEOUT:-100}" python3 dev/route_probe.py --bf16 \
      --shapes ${PDL_SHAPES:-4096x4096,4096x14336,14336x4096,8192x8192} --tokens ${PDL_TOKENS:-9,16,32,64} \
      --json "$OUT/pdlab_$pdl.json" 2>&1 | grep -v "^USDT" | tail -24
  done
}
mm16ncu() {
  NS_BITS=4 NS_TIMEOUT=${NS_TIMEOUT:-100} ncu_source 8192x8192 "w4 w4_mm k128 r256 M=16" mm16_r256 'device_kernel|cutlass'
}
for stage in "$@"; do "$stage"; done
step "done"
