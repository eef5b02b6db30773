#!/usr/bin/env bash
# Session 39's device calls (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]: on a fresh development machine
# `bash dev/prebuild_sm90.sh` (~13 min) and `bash dev/prebuild_ext.sh` (~3 min) first).
#   call 1: bash dev/session39.sh gatedtests gatede2e        (~7 min; the gated planes lost: 2.21x vs 2.32x)
#   call 2: bash dev/session39.sh tiletests tileab tileroutes tilee2e   (tilee2e ran past its 280 s: cut)
#   call 3: bash dev/session39.sh landtests landtable                    (the 5-8-token rule as landed)
#   call 4: bash dev/session39.sh tilequant                              (call 3's one failure, the test fixed)
#   call 5: bash dev/session39.sh e2e8                                   (batch 8, 128-token prompt, on / off)
# gatedtests  x_planes' gated form (the planes of silu(gate) * up, csrc/wo_planes.cu) against silu_mul + x_planes,
#             the gated MLP on it against float64 (tests/test_planes_gpu.py), and the planes kernels' tests
# gatede2e    qtool bench llama-8b w4a16 at batch 1 and 4 with QTOOL_GATED_PLANES=1 and without, one process each
# tiletests   wo_planes_gemv at 5-16 tokens (2 / 4 n-tiles of the mma per A fragment) against float64, and QuantLinear
#             routed there (QTOOL_PLANES_TILE)
# tileab      dev/planes_ab.py at 5-16 tokens: given planes and with x_planes, one / two / four stripes per block
# tileroutes  bench_kernels.py W4 g128 (and asym) at 5-16 tokens with QTOOL_PLANES_TILE=16 and 4 (call 2 ran
#             the first form of the switch: "1" on, "0" off)
# tilee2e     qtool bench llama-8b w4a16 at batch 8 and 16 with QTOOL_PLANES_TILE=16 and 4 (call 2 ran
#             the first form of the switch: "1" on, "0" off)
cd "$(dirname "$0")/.."
LOG=session39.log
source dev/gpu_setup.sh

gatedtests() {
  step "GPU tests: the gated planes, the planes kernels"
  gputests gatedtests "${PT_TIMEOUT:-240}" tests/test_planes_gpu.py tests/test_mlp.py
  gputests planestests "${PT_TIMEOUT:-200}" tests/test_kernels_gpu.py -k "x_planes or given_planes or opcheck"
}
gatede2e() {
  QTOOL_GATED_PLANES=1 E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "-gated" "w4a16" ${E2E_BATCHES:-1,4} 2048 11
  E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "" "w4a16" ${E2E_BATCHES:-1,4} 2048 11
}
tiletests() {
  step "GPU tests: the planes GEMV at 5-16 tokens"
  gputests tiletests "${PT_TIMEOUT:-200}" tests/test_kernels_gpu.py tests/test_planes_gpu.py \
    -k "given_planes or tiles or low_bit_planes or opcheck"
}
tileab() {
  step "W4 g128 planes at 5-16 tokens: given and with x_planes, 1 / 2 / 4 stripes"
  timeout -k 10 "${AB_TIMEOUT:-150}" python3 dev/planes_ab.py --tokens ${TILE_TOKENS:-5,8,12,16} \
    --json "$OUT/planes_tile.json" 2>&1 | tail -40
}
tileroutes() {
  for label in on off; do
    local flag=4; [ $label = on ] && flag=16
    step "protocol table, W4 at 5-16 tokens, QTOOL_PLANES_TILE=$flag"
    QTOOL_PLANES_TILE=$flag timeout -k 10 "${ROUTE_TIMEOUT:-200}" python3 benchmarks/bench_kernels.py \
      --formats w4a16-g128,w4a16-g128-asym --tokens ${TILE_TOKENS:-5,8,12,16} --json "$OUT/tile_$label.json" \
      > /tmp/tile_$label.txt 2>&1; echo "exit $?"; tail -45 /tmp/tile_$label.txt
  done
}
tilee2e() {
  QTOOL_PLANES_TILE=16 E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "-tile" "w4a16" ${E2E_BATCHES:-8,16} 2048 11
  [ -n "${TILE_E2E_OFF:-1}" ] && E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "" "w4a16" ${E2E_BATCHES:-8,16} 2048 11
}
landtests() {
  step "GPU tests: kernels, planes, routes, MLP"
  gputests landtests "${PT_TIMEOUT:-300}" tests/test_kernels_gpu.py tests/test_planes_gpu.py tests/test_mlp.py \
    tests/test_routes.py
}
landtable() {  # the routes as landed (two n-tiles at 5-8 tokens) against QTOOL_PLANES_TILE=4 (none past 4 tokens)
  for label in on off; do
    local flag=8; [ $label = off ] && flag=4
    step "protocol table, W4 g128 at 5-8 tokens, QTOOL_PLANES_TILE=$flag"
    QTOOL_PLANES_TILE=$flag timeout -k 10 "${ROUTE_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py \
      --formats w4a16-g128 --tokens 5,6,7,8 --json "$OUT/land_$label.json" > /tmp/land_$label.txt 2>&1
    echo "exit $?"; tail -30 /tmp/land_$label.txt
  done
}
tilequant() {
  step "GPU tests: QuantLinear on the n-tiles"
  gputests tilequant 120 tests/test_planes_gpu.py -k tiles
}
e2e8() {  # W4A16 decode at batch 8 (5-8 tokens: the n-tiles) with the route and with QTOOL_PLANES_TILE=4
  E2E_TIMEOUT=${E2E_TIMEOUT:-185} bench8b "-tile8" w4a16 8 128 6
  QTOOL_PLANES_TILE=4 E2E_TIMEOUT=${E2E_TIMEOUT:-185} bench8b "-notile" w4a16 8 128 6
}

for stage in "$@"; do "$stage"; done
step "done"
