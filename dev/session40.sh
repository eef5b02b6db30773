#!/usr/bin/env bash
# The next session's device calls, prepared in session 39 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]: on a fresh
# development machine `bash dev/prebuild_sm90.sh` (~13 min) and `bash dev/prebuild_ext.sh` (~3 min) first).
#   call 1: bash dev/session40.sh tiletests tilesan tileab        (~5 min)
#   call 2: bash dev/session40.sh tileroutes e2e16                (~8 min)
# tiletests   wo_planes_gemv variant 3 (csrc/wo_planes_tile.cu, written in session 39 without device time: the planes
#             staged per block in shared memory, split-K over a cluster) against float64 at 1-32 tokens (zero points
#             to 16), QuantLinear routed there (QTOOL_PLANES_GEMM), and the planes kernels' tests
# tilesan     compute-sanitizer memcheck and racecheck over the tile kernel's test (one group size, bf16)
# tileab      dev/planes_ab.py at 5-32 tokens: the tile kernel (gT / pT) beside the stripes launches (g1 / p1 ...)
# tileroutes  bench_kernels.py W4 g128 (and asym) at 9-32 tokens with QTOOL_PLANES_GEMM=32 and without; at 5-8 with the tile
#             kernel in place of the two n-tiles (QTOOL_PLANES_TILE=4 QTOOL_PLANES_GEMM=8) and without
# e2e16       qtool bench llama-8b w4a16 at batch 16 (128-token prompt) with QTOOL_PLANES_GEMM=16 and without
# If the tile kernel wins, PLANES_GEMM's default (kernels/weight_only.py) becomes the tokens it wins at.
cd "$(dirname "$0")/.."
LOG=session40.log
source dev/gpu_setup.sh

tiletests() {
  step "GPU tests: the tile kernel, the planes kernels"
  gputests tiletests "${PT_TIMEOUT:-240}" tests/test_planes_gpu.py tests/test_kernels_gpu.py \
    -k "tile or given_planes or low_bit_planes or opcheck"
}
tilesan() {
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool: the tile kernel"
    timeout -k 10 "${SAN_TIMEOUT:-150}" compute-sanitizer --tool $tool \
      python3 -m pytest -q -m gpu tests/test_planes_gpu.py -k "tile_planes_gemv and 128 and dtype0" \
      > "$OUT/san_$tool.txt" 2>&1
    echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/san_$tool.txt" | tail -4
    grep -E "^========= .*(Error|hazard)" "$OUT/san_$tool.txt" | sort | uniq -c | head -8  # which kernels, if any
  done
}
tileab() {
  step "W4 g128 planes at 5-32 tokens: the tile kernel beside the stripes launches"
  timeout -k 10 "${AB_TIMEOUT:-200}" python3 dev/planes_ab.py --tokens ${TILE_TOKENS:-5,8,12,16,24,32} \
    --json "$OUT/planes_tile.json" 2>&1 | tail -50
}
tileroutes() {
  for label in on off; do
    local env="QTOOL_PLANES_GEMM=32"; [ $label = off ] && env="QTOOL_PLANES_GEMM=0"
    step "protocol table, W4 g128 at 9-32 tokens, $env"
    env $env timeout -k 10 "${ROUTE_TIMEOUT:-200}" python3 benchmarks/bench_kernels.py \
      --formats w4a16-g128,w4a16-g128-asym --tokens 9,12,16,24,32 --json "$OUT/gemm_$label.json" > /tmp/gemm_$label.txt 2>&1
    echo "exit $?"; tail -66 /tmp/gemm_$label.txt
  done
  step "protocol table, W4 g128 at 5-8 tokens on the tile kernel"
  QTOOL_PLANES_TILE=4 QTOOL_PLANES_GEMM=8 timeout -k 10 "${ROUTE_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py \
    --formats w4a16-g128 --tokens 5,8 --json "$OUT/gemm_small.json" > /tmp/gemm_small.txt 2>&1
  echo "exit $?"; tail -16 /tmp/gemm_small.txt
}
e2e16() {
  QTOOL_PLANES_GEMM=16 E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-gemm16" w4a16 16 128 6
  E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-b16" w4a16 16 128 6
}

for stage in "$@"; do "$stage"; done
step "done"
