#!/usr/bin/env bash
# The device calls of session 64 (BENCHMARKS.md "session 64"): the wgmma W4A16 kernel (csrc/sm90/wo_wgmma_sm90.cu,
# kernels/warpgroup_mm.py) for 9-128 tokens, tested and timed against the routes; then the owed H200 figures.
#   bash dev/session64.sh first             carry [".gpu/w8a8", ".gpu/ext"] (no machine came in session 64)
#   first    wgtests, wgdiag, then wgab on four shapes at 16-128 tokens (~420 s)
#   short    first on less device time: two shapes (~270 s)
#   both     short for the 4-bit and the 8-bit rows paths: both kernels' tests, W4 and W8 A/Bs on 4096 x 4096 (~320 s)
#   tiny     both on the least device time (~200 s)
#   wg8ab    dev/wgmma8_ab.py: w8_mm on int8 / E4M3 rows against the W8A16 and W8A8 routes and bf16 (W8_SHAPES)
#   wgdiag   dev/wgmma_diag.py: the error's pattern on one warpgroup (and with the producer's fence where wrong)
#   wgtests  tests/test_wgmma_gpu.py (every schedule against float64)
#   wgab     dev/wgmma_ab.py: the plan and forced schedules against the route, the mixed GEMM and bf16
#            (WA_SHAPES, WA_TOKENS, WA_TIMEOUT, WA_ASYM, WA_FORCED=0 for the plan only)
#   wgsan    compute-sanitizer memcheck and racecheck (dev/san_wgmma.py)
#   wgroute  the rule on (QTOOL_WGMMA_TOKENS) through QuantLinear: the routes' GPU tests, then issue 19's W4 cells
#   auto     dev/session63.sh auto (H200: 8B goals at batches 1 / 16 and the decode cells; H100: small1b)
cd "$(dirname "$0")/.."
s64_stages=("$@")
set --
LOG=${LOG:-session64.log}
source dev/gpu_setup.sh
wgtests() {
  step "wgmma W4A16 kernel: GPU tests"
  gputests wgtests "${WT_TIMEOUT:-150}" tests/test_wgmma_gpu.py tests/test_wgmma_plan.py tests/test_wgmma_rows_gpu.py
}
wg8ab() {
  step "wgmma kernel on 8-bit rows against the W8A16 / W8A8 routes and bf16 (dev/wgmma8_ab.py)"
  timeout -k 10 "${W8_TIMEOUT:-200}" python3 dev/wgmma8_ab.py --tokens "${W8_TOKENS:-16,32,64,128}" \
    --shapes "${W8_SHAPES:-4096x4096,8192x8192}" --json "$OUT/wgmma8_ab.json" 2>&1 | grep -v "^USDT"
}
wgab() {
  step "wgmma W4A16 kernel against the route, the mixed GEMM and bf16 (dev/wgmma_ab.py)"
  local forced=()
  [ "${WA_FORCED:-1}" = 0 ] && forced=(--no-forced)
  timeout -k 10 "${WA_TIMEOUT:-300}" python3 dev/wgmma_ab.py --tokens "${WA_TOKENS:-16,32,64,128}" \
    ${WA_SHAPES:+--shapes $WA_SHAPES} ${WA_ASYM:+--asym} "${forced[@]}" --json "$OUT/wgmma_ab${WA_TAG:-}.json" 2>&1 \
    | grep -v "^USDT"
}
wgdiag() {  # the error's pattern on one warpgroup (dev/wgmma_diag.py), for a kernel that fails its tests
  step "wgmma kernel diagnosis"
  timeout -k 10 90 python3 dev/wgmma_diag.py > /tmp/wgdiag.txt 2>&1
  tail -12 /tmp/wgdiag.txt
  if ! grep -q "RESULT ok" /tmp/wgdiag.txt; then  # wrong: does the producer's own fence change it?
    echo "--- QTOOL_WGMMA_FENCE=producer (gone since session 67: TMA feeds the stages)"
    QTOOL_WGMMA_FENCE=producer timeout -k 10 90 python3 dev/wgmma_diag.py 2>&1 | tail -12
  fi
}
wgsan() {  # compute-sanitizer memcheck and racecheck on the wgmma kernel
  sanitize wgmma dev/san_wgmma.py
}
wgroute() {
  step "the wgmma rule through the dispatcher: routes' tests, then W4 g128 at 9-128 tokens"
  QTOOL_WGMMA_TOKENS=${WGMMA_TOKENS:-9,128} gputests wgroute "${WR_TIMEOUT:-120}" tests/test_routes.py tests/test_wgmma_gpu.py
  QTOOL_WGMMA_TOKENS=${WGMMA_TOKENS:-9,128} timeout -k 15 "${WR_TABLE_TIMEOUT:-200}" python3 benchmarks/bench_kernels.py \
    --formats w4a16-g128,w4a16-g128-asym --tokens 16,32,64,128 --json "$OUT/wgroute_table.json" > /tmp/wgroute.txt 2>&1
  echo "exit $?"; tail -30 /tmp/wgroute.txt
}
auto() {
  bash dev/session63.sh auto
}
first() {  # the next session's first call (~420 s): the kernel's tests, its error's pattern, the A/B on four shapes
  WT_TIMEOUT=${WT_TIMEOUT:-120} wgtests
  wgdiag
  WA_SHAPES=${WA_SHAPES:-4096x4096,4096x14336,14336x4096,8192x8192} WA_TIMEOUT=${WA_TIMEOUT:-220} wgab
}
short() {  # first on less device time (~270 s): the tests, the diagnosis, the A/B on two shapes
  WT_TIMEOUT=100 wgtests
  wgdiag
  WA_SHAPES=${WA_SHAPES:-4096x4096,8192x8192} WA_TIMEOUT=${WA_TIMEOUT:-120} wgab
}
both() {  # both paths on little device time (~320 s)
  WT_TIMEOUT=130 wgtests
  wgdiag
  WA_SHAPES=4096x4096,8192x8192 WA_TOKENS=16,32,64,128 WA_TIMEOUT=80 wgab
  W8_SHAPES=4096x4096 W8_TIMEOUT=70 wg8ab
}
tiny() {  # both on the least device time (~200 s): the tests, the plans only on 4096 x 4096
  WT_TIMEOUT=100 wgtests
  WA_SHAPES=4096x4096 WA_TOKENS=16,32,64,128 WA_FORCED=0 WA_TIMEOUT=40 wgab
  W8_SHAPES=4096x4096 W8_TOKENS=32,64,128 W8_TIMEOUT=45 wg8ab
}
for s in "${s64_stages[@]}"; do "$s"; done
