#!/usr/bin/env bash
# Hardware counters of issue 19's kernels (Nsight Compute, if the device's runtime allows it: KINDS.md):
# DRAM throughput, achieved occupancy, warp stall reasons of wo_gemv / wo_gemm / wo_gemm_v3 / w4_mm /
# w1_gemv beside cuBLAS, at one shape. Then compute-sanitizer over the 1-bit GPU tests.
#
#   carry [".gpu/w8a8"]: [SHAPE=KxN] [ONLY=substrings] bash dev/ncu_session.sh [ncu] [stalls] [sanitize]
# (ONLY: profile_kernels.py --only, e.g. ONLY="M=1,M=4" for the GEMVs and bf16)
cd "$(dirname "$0")/.."
LOG=ncu_session.log
source dev/gpu_setup.sh

ncu_() {
  step "ncu: one shape (${SHAPE:-8192x8192}), every weight-only kernel and cuBLAS"
  # The flush kernel (a memset) is skipped by name; each kernel of a case is profiled on every launch.
  timeout 240 ncu --clock-control none --target-processes all --kernel-name-base demangled \
    --kernel-name regex:'^(?!.*(fill|memset|vectorized_elementwise)).*' \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
    --section WarpStateStats --csv --page details \
    python3 dev/profile_kernels.py --shape "${SHAPE:-8192x8192}" ${ONLY:+--only "$ONLY"} > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
  echo "ncu exit $?"; tail -3 "$OUT/ncu.err"
  python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
if not rows:
    sys.exit("no ncu rows")
head, body = rows[0], rows[1:]
col = {h: i for i, h in enumerate(head)}
want = ("DRAM Throughput", "Memory Throughput", "Duration", "Achieved Occupancy", "Registers Per Thread",
        "Grid Size", "Block Size", "Warp Cycles Per Issued Instruction", "Dynamic Shared Memory Per Block")
seen = collections.OrderedDict()
for r in body:
    name, metric, value = r[col["Kernel Name"]][:60], r[col["Metric Name"]], r[col["Metric Value"]]
    if metric in want:
        seen.setdefault(name, {})[metric] = value + " " + r[col["Metric Unit"]]
for name, metrics in seen.items():
    print(name, "|", "; ".join(f"{k}: {v}" for k, v in metrics.items()))
PY
}

stalls() {  # why each kernel waits: the per-reason stall counts the details page leaves out
  step "ncu: warp stall reasons per issued instruction (${SHAPE:-8192x8192})"
  timeout 240 ncu --clock-control none --target-processes all --kernel-name-base demangled \
    --kernel-name regex:'(wo_gemv|wo_stream|wo_gemm|w1_gemv|w1a1|binarize|cutlass|nvjet|gemv|dequant)' --launch-count 200 \
    --metrics regex:'smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio',dram__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active \
    --csv --page raw python3 dev/profile_kernels.py --shape "${SHAPE:-8192x8192}" ${ONLY:+--only "$ONLY"} > "$OUT/ncu_stalls.csv" 2> "$OUT/ncu_stalls.err"
  echo "ncu exit $?"; tail -3 "$OUT/ncu_stalls.err"
  python3 dev/ncu_stalls.py "$OUT/ncu_stalls.csv"
}

sanitize() {
  step "compute-sanitizer memcheck over the 1-bit GPU tests (a few cases)"
  timeout 200 compute-sanitizer --tool memcheck --print-limit 5 python3 -m pytest -q -x -m gpu \
    tests/test_binary_gpu.py -k "4096-1536 or both_activation" 2>&1 | tail -20
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(ncu_ sanitize)
for s in "${stages[@]}"; do [ "$s" = ncu ] && s=ncu_; "$s"; done
step "done"
