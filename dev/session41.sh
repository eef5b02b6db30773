#!/usr/bin/env bash
# The next session's device calls, prepared in sessions 40-42 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]; on a
# fresh development machine `bash dev/prebuild_sm90.sh` (~13 min) and `bash dev/prebuild_ext.sh` (~3 min) first).
# Calls back to back: a machine idle for 30 s is given back, and a fresh one takes minutes to start.
#   call 1: bash dev/session41.sh locktests lockab                       (~6-7 min)
#   call 2: bash dev/session41.sh ordertests orderab                     (~6 min; session 42's: the tile order and
#           the 2 x 2 clusters at 1024-8192 tokens)
#   call 3: LOCK_SCHEMES="fp8 w8a8-int8" LOCK_LABELS="default keep ordered" bash dev/session41.sh lockab  (~5 min)
#   call 4: bash dev/session41.sh locksweep                             (~5 min; if ordered won: its best splits)
#   call 5: bash dev/session41.sh routeprobe routeprobe8 routencu        (~5 min; under the winner of call 1: e.g.
#           QTOOL_GEMM_SPLIT_ADD=ordered bash dev/session41.sh ...)
#   call 6: bash dev/session41.sh blocksweep                            (~4 min; fp8-block's tiles with and without the
#           overlapped promotion at 16-1024 tokens: the routes' sweep, `dev/w8a8_sweep.py --emit ... --merge` after)
#   later: bash dev/session41.sh stripes16                              (~4 min)
#   (splitadd: the protocol tables with and without QTOOL_GEMM_SPLIT_ADD=any, session 40's plan, ~8 min)
# locktests   tests/test_split_locks_gpu.py: the three Hopper libraries' split-K / stream-K and wo_gemm's split-K under
#             each knob setting (default, QTOOL_GEMM_LOCKS=keep, keep + any, QTOOL_GEMM_SPLIT_ADD=ordered with
#             QTOOL_WO_SPLIT=ordered), each in a child process with a time limit (a flag left set would hang the
#             next launch), against float64 and bit-identical across eager calls and graph replays where the adds
#             run in a fixed order; then the Hopper GEMMs' and wo_gemm's own GPU tests under "ordered"
# lockab      dev/route_probe.py under each setting (default, keep, ordered, ordered + QTOOL_GEMM_PDL=1, keep + any),
#             W4 g128 (or the W8A8 presets of LOCK_SCHEMES) at 16 and 64 tokens on the four shapes whose routes split
#             there (4096 x 14336 and 8192 x 28672 run unsplit; LOCK_SHAPES): the kernels per call (the memset
#             node should be gone under keep / ordered; PDL may now overlap the GEMM with the kernel before it) and
#             the graph time; the winner becomes the default (ordered keeps the bits reproducible; any does not)
# routeprobe  dev/route_probe.py: per shape and token count (W4 g128, issue 19's six shapes, 1-64 tokens) the kernels
#             one QuantLinear call launches and their device time against the call's time in a CUDA graph, and the
#             fit time = fixed + bytes / bandwidth per token count (session 40: ~13 us "fixed" at 9-32 tokens)
# routeprobe8 the same for issue 18's W8A8 layers (fp8, w8a8-int8, fp8-block) at 1-64 tokens (M <= 16: 1.35-1.65x,
#             4096 x 4096 at 64 tokens 0.92x)
# routencu    Nsight Compute over those calls alone (--profile-from-start off) on 8192 x 8192 and 4096 x 4096 at 16
#             and 64 tokens: duration, DRAM, issue, occupancy, stall reasons per kernel
# splitadd    CUTLASS split-K's partial sums added in arrival order (QTOOL_GEMM_SPLIT_ADD=any, csrc/sm90/sm90_scheduler.cuh)
#             against its default chain (split s waits for s - 1): the Hopper GEMMs' GPU tests under it, then the
#             protocol tables W4 g128 at 9-64 tokens and W8A8 at 16-256 tokens with and without it
# stripes16   the protocol table, W4 g128 at 9-16 tokens, with the stripes planes GEMV routed there (QTOOL_PLANES_TILE=16,
#             one or two stripes per block: QTOOL_PLANES_TILE_VARIANT=0 / 1) and without: session 40's planes_ab put
#             p1 / p2 ahead of the route on 14336 x 4096 and 8192 x 8192 (1.55-1.60x against 1.39-1.44x); session 39
#             measured one stripe on all shapes (lost on 5 of 6). A win on those shapes becomes a shape rule.
# ordertests  tests/test_tile_order.py (every Hopper library under five tile orders: bit-identical to the default's,
#             within 1e-2 of float64), the new 2 x 2-cluster configurations in the every-config tests, and the split
#             reductions with the tile grid padded to swizzle groups (the kept flags' bound)
# orderab     dev/order_ab.py: fp8, w8a8-int8, fp8-block and W4 g128 at 1024-8192 tokens on the six shapes, bf16 and
#             the layer as dispatched under the tile orders h1 (CUTLASS's), h8, m8, n8, plus libqtool_sm90's large /
#             pingpong / pingpong-2x2 and the block library's block-large / block-large-2x2; a win becomes the
#             default order (per library or by problem size) and the 2 x 2 tiles enter the W8A8 sweep / routes
cd "$(dirname "$0")/.."
LOG=session41.log
source dev/gpu_setup.sh

routeprobe() {
  step "where the weight-only routes' time goes: kernels per call, graph time, fixed + bytes fit"
  timeout -k 10 "${PROBE_TIMEOUT:-200}" python3 dev/route_probe.py --tokens ${PROBE_TOKENS:-1,8,16,32,64} \
    --json "$OUT/route_probe.json" 2>&1 | grep -v "^USDT" | tail -40
}
routeprobe8() {
  for scheme in ${PROBE_SCHEMES:-fp8 w8a8-int8 fp8-block}; do
    step "where the W8A8 routes' time goes: $scheme"
    timeout -k 10 "${PROBE_TIMEOUT:-150}" python3 dev/route_probe.py --scheme $scheme --tokens ${PROBE8_TOKENS:-1,4,16,64} \
      --json "$OUT/route_probe_$scheme.json" 2>&1 | grep -v "^USDT" | tail -32
  done
}
routencu() {
  step "ncu: the routes' launches at 16 and 64 tokens"
  timeout -k 10 "${NCU_TIMEOUT:-180}" ncu --profile-from-start off --clock-control none --kernel-name-base demangled \
    --metrics regex:'smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio',dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,launch__registers_per_thread,launch__grid_size \
    --csv --page raw python3 dev/route_probe.py --ncu --shapes ${NCU_SHAPES:-8192x8192,4096x4096} --tokens 16,64 \
    > "$OUT/ncu_route.csv" 2> "$OUT/ncu_route.err"
  echo "ncu exit $?"; tail -3 "$OUT/ncu_route.err"
  python3 dev/ncu_stalls.py "$OUT/ncu_route.csv"
}

splitadd() {
  step "the Hopper GEMMs' GPU tests with QTOOL_GEMM_SPLIT_ADD=any"
  QTOOL_GEMM_SPLIT_ADD=any gputests splitadd_tests "${PT_TIMEOUT:-200}" tests/test_mixed_gpu.py tests/test_w8a8_gpu.py
  for label in any chain; do
    local env="QTOOL_GEMM_SPLIT_ADD=$label"
    step "protocol tables, $env"
    env $env timeout -k 10 "${ROUTE_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py --formats w4a16-g128 \
      --tokens 9,16,32,64 --json "$OUT/splitadd_w4_$label.json" > /tmp/splitadd_w4_$label.txt 2>&1
    echo "exit $?"; tail -26 /tmp/splitadd_w4_$label.txt
    env $env timeout -k 10 "${ROUTE_TIMEOUT:-150}" python3 benchmarks/bench_w8a8.py --tokens 16,64,256 \
      --json "$OUT/splitadd_w8a8_$label.json" > /tmp/splitadd_w8a8_$label.txt 2>&1
    echo "exit $?"; tail -24 /tmp/splitadd_w8a8_$label.txt
  done
}
locktests() {
  step "the split reduction under each knob (tests/test_split_locks_gpu.py)"
  gputests locktests "${PT_TIMEOUT:-420}" tests/test_split_locks_gpu.py
  step "the Hopper GEMMs' and wo_gemm's GPU tests with QTOOL_GEMM_SPLIT_ADD=ordered QTOOL_WO_SPLIT=ordered"
  QTOOL_GEMM_SPLIT_ADD=ordered QTOOL_WO_SPLIT=ordered gputests ordered_tests "${PT_TIMEOUT:-240}" \
    tests/test_mixed_gpu.py tests/test_w8a8_gpu.py tests/test_wo_gemm_gpu.py \
    -k "schedules or 256_row or every_config or cuda_graph or scaled_mm_gemms or float64 or graph_capture"
}
lockab() {  # LOCK_SCHEMES: w4 (W4 g128) and / or W8A8 presets; LOCK_LABELS: the settings
  for label in ${LOCK_LABELS:-default keep ordered ordered-pdl any}; do
    local env="QTOOL_GEMM_LOCKS=off"
    case $label in keep) env="QTOOL_GEMM_LOCKS=keep";; ordered) env="QTOOL_GEMM_SPLIT_ADD=ordered QTOOL_WO_SPLIT=ordered";;
      ordered-pdl) env="QTOOL_GEMM_SPLIT_ADD=ordered QTOOL_WO_SPLIT=ordered QTOOL_GEMM_PDL=1";;
      any) env="QTOOL_GEMM_LOCKS=keep QTOOL_GEMM_SPLIT_ADD=any";; esac
    for scheme in ${LOCK_SCHEMES:-w4}; do
      local what=(--format w4a16-g128); [ "$scheme" = w4 ] || what=(--scheme "$scheme")
      step "route probe, $scheme, $env"
      env $env timeout -k 10 "${PROBE_TIMEOUT:-150}" python3 dev/route_probe.py "${what[@]}" --bf16 \
        --shapes ${LOCK_SHAPES:-4096x4096,14336x4096,8192x8192,28672x8192} --tokens ${LOCK_TOKENS:-16,64} \
        --json "$OUT/lockab_${scheme}_$label.json" 2>&1 | grep -v "^USDT" | tail -12
    done
  done
}
locksweep() {  # the mixed-input GEMM's schedules re-timed with the ordered adds (split-K by 8 tried as well)
  step "mixed_sweep under QTOOL_GEMM_SPLIT_ADD=ordered"
  QTOOL_GEMM_SPLIT_ADD=ordered timeout -k 10 "${SWEEP_TIMEOUT:-300}" python3 dev/mixed_sweep.py --formats w4a16-g128 \
    --tokens ${SWEEP_TOKENS:-16,64} --shapes ${SWEEP_SHAPES:-4096x4096,14336x4096,8192x8192,28672x8192} \
    --budget 260 --json "$OUT/locksweep.json" > /tmp/locksweep.txt 2>&1
  echo "exit $?"; python3 dev/mixed_sweep.py --show "$OUT/locksweep.json" 2>&1 | tail -20
}
stripes16() {
  for label in v0 v1 off; do
    local env="QTOOL_PLANES_TILE=16 QTOOL_PLANES_TILE_VARIANT=${label#v}"; [ $label = off ] && env="QTOOL_PLANES_TILE=8"
    step "protocol table, W4 g128 at 9-16 tokens, $env"
    env $env timeout -k 10 "${ROUTE_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py --formats w4a16-g128 \
      --tokens 9,12,16 --json "$OUT/stripes16_$label.json" > /tmp/stripes16_$label.txt 2>&1
    echo "exit $?"; tail -22 /tmp/stripes16_$label.txt
  done
}

ordertests() {
  step "the Hopper GEMMs under each tile order, the 2 x 2-cluster configurations"
  gputests ordertests "${PT_TIMEOUT:-300}" tests/test_tile_order.py tests/test_w8a8_gpu.py tests/test_mixed_gpu.py \
    -k "every_order or every_config or export or unknown_config or overlap"
  gputests ordertests_locks "${PT_TIMEOUT:-200}" tests/test_split_locks_gpu.py -k swizzled
}
orderab() {
  step "tile order and 2 x 2 clusters at 1024-8192 tokens (dev/order_ab.py)"
  timeout -k 10 "${ORDER_TIMEOUT:-300}" python3 dev/order_ab.py --schemes ${ORDER_SCHEMES:-fp8-block,fp8,w8a8-int8,w4a16} \
    --tokens ${ORDER_TOKENS:-1024,4096,8192} --orders ${ORDER_ORDERS:-h1,h8,m8,n8} --rounds ${ORDER_ROUNDS:-2} \
    --json "$OUT/order_ab.json" 2>&1 | grep -v "^USDT" | tail -80
}

blocksweep() {
  step "fp8-block: every tile with and without the overlapped promotion (dev/w8a8_sweep.py)"
  timeout -k 10 "${SWEEP_TIMEOUT:-240}" python3 dev/w8a8_sweep.py --kinds fp8-block \
    --tokens ${SWEEP_TOKENS:-16,32,64,128,256,512,1024} --budget 220 --json "$OUT/blocksweep.json" 2>&1 \
    | grep -v "^USDT" | tail -45
}

for stage in "$@"; do "$stage"; done
step "done"
