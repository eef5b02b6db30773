#!/usr/bin/env bash
# The next session's device calls (prepared in sessions 44-45, whose loans were paused; nvidia-h200, carry
# [".gpu/w8a8", ".gpu/ext"]; on a fresh development machine `bash dev/prebuild_sm90.sh` and `bash dev/prebuild_ext.sh`
# first). Back to back: a machine idle for 30 s is given back. In order of value; a session's 30 device minutes hold
# about three calls.
#   call 1: bash dev/session45.sh prefetchtests prefetchab wopdlab   (~8 min: session 45's attack on the ~10 us floor.
#           The tests (the L2 prefetch moves no bit; early release keeps dependent reads after the writes; wo_gemm
#           under PDL), then W4 g128 at 9-64 tokens with prefetch caps 0 / 32 KB / 128 KB / all, without PDL, with
#           QTOOL_GEMM_PDL=1 (session 19 found PDL useless on the mixed GEMM behind the memset node the ordered adds
#           removed), and with PDL and the next grid released from the prologue (QTOOL_GEMM_EARLY_RELEASE=1); then
#           wo_gemm's cells (4096 x 4096 at 9-16 tokens) with and without PDL, with and without its ordered splits)
#   call 2: bash dev/session45.sh w8a8ab fixedcost mm16ncu   (~9 min: the same prefetch and early release on the W8A8
#           routes at 16-64 tokens (4096 x 4096 at 64 tokens: fp8 1.21x, int8 1.20x, fp8-block 0.90x against 1.4x);
#           then where the floor goes: dev/fixed_cost.py's K and N sweeps with the weights rotated, L2-resident, or
#           marked as L2 streaming data (is it the mixed GEMM's 80-107 KB of code fetched cold?), and with PDL;
#           Nsight Compute on the 256-row mixed GEMM at 16 tokens on 8192 x 8192, split 4 (128 CTAs))
#   call 3: if call 1 won: `E2E_CAP=<the best cap> bash dev/session45.sh e2eknobs` (the 8B decode with the knobs off
#           and on), set kernels/mixed_mm.py PDL_MAX_M / EARLY_RELEASE and a default cap, route wo_gemm's PDL (an op
#           flag, as wo_gemv's kPdlFlag), then `bash dev/session44.sh w4table`; else `bash dev/session44.sh
#           chansweep4k w8a8table` (~7 min: 4096-token tile orders, the full W8A8 table)
#   later:  bash dev/session45.sh prefetchsan mm16s1 pdlab   (memcheck of the prefetch; ncu of the unsplit 32-CTA
#           launch, which session 44 timed level with the split one; the W4 cells with QTOOL_GEMM_PDL alone)
#           bash dev/session45.sh w8a8knobsweep   (if call 2's w8a8ab gained: every W8A8 tile under the knobs)
#           bash dev/session41.sh routeprobe8 routencu stripes16
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
mm16ncu() {  # the default split 4 (128 CTAs), which session 44 timed level with the unsplit launch (21.3 / 21.2 us)
  NS_BITS=4 NS_TIMEOUT=${NS_TIMEOUT:-100} ncu_source 8192x8192 "w4 w4_mm k128 r256 M=16" mm16_r256 'device_kernel|cutlass'
}
mm16s1() {  # the unsplit one (32 CTAs, 1 MB of codes each): its counters beside mm16ncu's say what holds each
  NS_BITS=4 NS_TIMEOUT=${NS_TIMEOUT:-100} ncu_source 8192x8192 "w4 w4_mm k128 r256 s1 M=16" mm16_r256s1 'device_kernel|cutlass'
}
prefetchtests() {
  step "the L2 prefetch moves no bit; early release keeps dependent reads after the writes"
  gputests prefetchtests "${PT_TIMEOUT:-200}" tests/test_prefetch_gpu.py tests/test_split_locks_gpu.py -k \
    "prefetch or early or default"
}
prefetchab() {  # caps in bytes: off, 32 KB, 128 KB, a CTA's whole unit; one process per PDL / early-release setting
  for setting in 0,0 1,0 1,1; do
    local pdl=${setting%,*} early=${setting#*,}
    step "W4 g128 at 9-64 tokens, L2 prefetch caps, QTOOL_GEMM_PDL=$pdl QTOOL_GEMM_EARLY_RELEASE=$early"
    QTOOL_GEMM_PDL=$pdl QTOOL_GEMM_EARLY_RELEASE=$early timeout -k 10 "${PROBE_TIMEOUT:-120}" python3 \
      dev/route_probe.py --bf16 --prefetch 0,32768,131072,1073741824 \
      --shapes ${PDL_SHAPES:-4096x4096,4096x14336,14336x4096,8192x8192} --tokens ${PDL_TOKENS:-9,16,32,64} \
      --json "$OUT/prefetch_pdl${pdl}_early$early.json" 2>&1 | grep -v "^USDT" | tail -24
  done
}
wopdlab() {  # wo_gemm's routes (4096 x 4096 at 9-16 tokens, 14336 x 4096 at 16): PDL x ordered splits
  for setting in 0,atomic 1,atomic 0,ordered 1,ordered; do
    local pdl=${setting%,*} split=${setting#*,}
    step "W4 g128 on wo_gemm's routes, QTOOL_WO_GEMM_PDL=$pdl QTOOL_WO_SPLIT=$split"
    QTOOL_WO_GEMM_PDL=$pdl QTOOL_WO_SPLIT=$split timeout -k 10 "${WOPDL_TIMEOUT:-60}" python3 dev/route_probe.py \
      --bf16 --shapes 4096x4096,14336x4096 --tokens 9,12,16 --json "$OUT/wopdl_${pdl}_$split.json" 2>&1 \
      | grep -v "^USDT" | tail -8
  done
}
prefetchsan() {  # compute-sanitizer memcheck: the prefetch's addresses (every cap, a few schedules of each library)
  step "compute-sanitizer memcheck: the mixed GEMM's L2 prefetch and early release"
  QTOOL_GEMM_PDL=1 QTOOL_GEMM_EARLY_RELEASE=1 timeout -k 10 "${SAN_TIMEOUT:-150}" compute-sanitizer --tool memcheck \
    --target-processes all python3 -m pytest -q -m gpu -p no:logging tests/test_prefetch_gpu.py \
    -k "moves_no_bit and (16-1-128-1-0 or 9-3-64-0-0 or 32-0-64-0-1 or narrow or swap)" > "$OUT/prefetchsan.txt" 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/prefetchsan.txt" | tail -4
}
w8a8ab() {  # the W8A8 routes (PDL up to 64 tokens): the weights' prefetch caps, with and without early release
  for early in 0 1; do
    for scheme in fp8-block fp8 w8a8-int8; do
      step "$scheme at 16-64 tokens, L2 prefetch caps, QTOOL_GEMM_EARLY_RELEASE=$early (dev/route_probe.py --scheme)"
      QTOOL_GEMM_EARLY_RELEASE=$early timeout -k 10 "${EARLY_TIMEOUT:-70}" python3 dev/route_probe.py --bf16 \
        --scheme $scheme --prefetch 0,32768,131072,1073741824 --shapes 4096x4096,14336x4096,8192x8192 \
        --tokens 16,32,64 --json "$OUT/w8a8ab_${scheme}_$early.json" 2>&1 | grep -v "^USDT" | tail -10
    done
  done
}
w8a8knobsweep() {  # if w8a8ab showed a gain: every W8A8 configuration at 16-64 tokens under the knobs (and w8_gemv
  # beside them), so the routes can be re-emitted for them (python3 dev/w8a8_sweep.py --emit ... --merge)
  for kinds in "fp8,int8" fp8-block; do
    step "W8A8 sweep at 16-64 tokens under PDL + early release + a ${SWEEP_CAP:-131072}-byte prefetch: $kinds"
    (export QTOOL_GEMM_PDL=1 QTOOL_GEMM_EARLY_RELEASE=1 QTOOL_GEMM_PREFETCH=${SWEEP_CAP:-131072}
     timeout -k 10 "${SWEEP_TIMEOUT:-200}" python3 dev/w8a8_sweep.py --tokens 16,32,64 --kinds $kinds --budget 180 \
       --shapes 4096x4096,4096x14336,14336x4096,8192x8192 --json "$OUT/w8a8knobs_${kinds%%,*}.json" 2>&1 \
       | grep -v "^USDT" | tail -16)
  done
}
e2eknobs() {  # the 8B W4A16 decode (batch 1 and 16) and prefill with the knobs off, then on (mixed GEMM: PDL, early
  # release, a prefetch cap; wo_gemm under PDL): the model's own kernels around the GEMMs, not the protocol's chain
  bench8b "" w4a16 "1,16" 2048 14
  (export QTOOL_GEMM_PDL=1 QTOOL_GEMM_EARLY_RELEASE=1 QTOOL_GEMM_PREFETCH=${E2E_CAP:-131072} QTOOL_WO_GEMM_PDL=1
   bench8b "-knobs" w4a16 "1,16" 2048 14)
}
for stage in "$@"; do "$stage"; done
step "done"
