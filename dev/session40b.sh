#!/usr/bin/env bash
# Session 40's second set of device calls (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]).
#   tilencu   Nsight Compute over the tile kernel (wo_planes_gemv variant 3) beside the stripes launches, W4 g128 at
#             16 / 32 tokens on 8192 x 28672 and 4096 x 4096 (dev/tile_probe.py): stall reasons, DRAM / L2 / issue
#   tiletests the tile kernel's GPU tests; tilesan: memcheck over them; tileab: dev/planes_ab.py at 5-32 tokens
#   call: bash dev/session40b.sh tiletests tilesan tileab tilencu
cd "$(dirname "$0")/.."
LOG=session40b.log
source dev/gpu_setup.sh

tilencu() {
  step "ncu: the tile kernel and the stripes launches, stall reasons"
  timeout -k 10 "${NCU_TIMEOUT:-150}" ncu --clock-control none --kernel-name-base demangled --kernel-name regex:'wo_planes' \
    --metrics regex:'smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio',dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,lts__t_sectors.avg.pct_of_peak_sustained_elapsed,launch__registers_per_thread,launch__grid_size,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,smsp__inst_executed.sum \
    --csv --page raw python3 dev/tile_probe.py ${TILE_SHAPES:+--shapes $TILE_SHAPES} > "$OUT/ncu_tile.csv" 2> "$OUT/ncu_tile.err"
  echo "ncu exit $?"; tail -3 "$OUT/ncu_tile.err"
  python3 dev/ncu_stalls.py "$OUT/ncu_tile.csv"
  python3 - "$OUT/ncu_tile.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
head, body = rows[0], rows[2:]
col = {h: i for i, h in enumerate(head)}
keep = ("gpu__time_duration.sum", "lts__t_sectors.avg.pct_of_peak_sustained_elapsed", "smsp__inst_executed.sum",
        "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum", "launch__grid_size")
for r in body:
    print(r[col["Kernel Name"]][:50], " ".join(f"{k.split('.')[0].split('__')[1]}={r[col[k]]}" for k in keep if k in col))
PY
}
tiletests() {
  step "GPU tests: the tile kernel, the planes kernels"
  gputests tiletests "${PT_TIMEOUT:-240}" tests/test_planes_gpu.py tests/test_kernels_gpu.py \
    -k "tile or given_planes or low_bit_planes or opcheck"
}
tilesan() {
  step "compute-sanitizer memcheck: the tile kernel"
  timeout -k 10 "${SAN_TIMEOUT:-120}" compute-sanitizer --tool memcheck \
    python3 -m pytest -q -m gpu tests/test_planes_gpu.py -k "tile_planes_gemv and dtype0" > "$OUT/san_memcheck.txt" 2>&1
  echo "exit $?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/san_memcheck.txt" | tail -3
}
tileab() {
  step "W4 g128 planes at 5-32 tokens: the tile kernel beside the stripes launches"
  timeout -k 10 "${AB_TIMEOUT:-200}" python3 dev/planes_ab.py --tokens ${TILE_TOKENS:-5,8,12,16,24,32} \
    --json "$OUT/planes_tile.json" 2>&1 | tail -50
}

tileroutes() {  # the protocol table with the tile kernel routed past 8 tokens (QTOOL_PLANES_GEMM=32) and without
  for label in on off; do
    local env="QTOOL_PLANES_GEMM=32"; [ $label = off ] && env="QTOOL_PLANES_GEMM=0"
    step "protocol table, W4 g128 at 9-32 tokens, $env"
    env $env timeout -k 10 "${ROUTE_TIMEOUT:-200}" python3 benchmarks/bench_kernels.py \
      --formats ${ROUTE_FORMATS:-w4a16-g128,w4a16-g128-asym} --tokens ${ROUTE_TOKENS:-9,12,16,24,32} \
      --json "$OUT/gemm_$label.json" > /tmp/gemm_$label.txt 2>&1
    echo "exit $?"; tail -${ROUTE_TAIL:-66} /tmp/gemm_$label.txt
  done
}
e2e16() {
  QTOOL_PLANES_GEMM=16 E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-gemm16" w4a16 16 128 6
  E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-b16" w4a16 16 128 6
}

for stage in "$@"; do "$stage"; done
step "done"
