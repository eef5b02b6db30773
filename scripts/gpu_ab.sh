#!/usr/bin/env bash
# A/B of the v3 run-time switches in one GPU call (~4 minutes on an H100 with a cached build):
#   QTOOL_PDL=0/1/2 (kernels/csrc/wo_launch.cuh): plain launches / PDL with every read after
#   griddepcontrol.wait / PDL with the first weight ring issued before it; and QTOOL_GEMV_MAX_M=8 with
#   M = 5..8 (wo_gemv against wo_gemm through the dispatcher).
#
#   OUT=/some/dir bash scripts/gpu_ab.sh [quick | full]
#
# Writes $OUT/bench-pdl{0,1,2}.json, $OUT/bench-m58-gemv{4,8}.json and $OUT/ab.log; the GPU
# correctness tests run with QTOOL_PDL=1 and QTOOL_PDL=2. Exit status nonzero when a step failed.
set -uo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export QTOOL_KERNELS_CACHE=${QTOOL_KERNELS_CACHE:-$PWD/build/qtool-kernels}
export QTOOL_CUDA_ARCHS=${QTOOL_CUDA_ARCHS:-90}  # one target: a third of the compile time
exec > >(tee -a "$OUT/ab.log") 2>&1

failed=()
step() { echo; echo "=== $* [$(date -u +%H:%M:%S)]"; }
run() { "$@" || { echo "FAILED (exit $?): $*"; failed+=("$*"); }; }

bash scripts/gpu_check.sh build || failed+=("build")
# gpu_check.sh may have fallen back to build/pythonpath instead of pip -e
[ -d build/pythonpath ] && export PYTHONPATH=$PWD:$PWD/build/pythonpath${PYTHONPATH:+:$PYTHONPATH}

for pdl in 1 2; do
  step "GPU correctness tests, QTOOL_PDL=$pdl"
  run env QTOOL_PDL=$pdl "$PY" -m pytest -q -m gpu tests/test_kernels_gpu.py -x -k "emulation or float64 or smoke or compile"
done

quick=--quick
[ "${1:-quick}" = full ] && quick=
for pdl in 0 1 2; do
  step "bench $quick QTOOL_PDL=$pdl"
  run env QTOOL_PDL=$pdl "$PY" scripts/bench_kernels.py $quick --json "$OUT/bench-pdl$pdl.json"
done

# GEMV against GEMM at M = 5..8: the dispatcher's graph time with the cut-off at 4 (wo_gemm) and 8 (wo_gemv);
# the raw kernel_ms columns time both kernels in either run.
for cut in 4 8; do
  step "bench M = 4..8, QTOOL_GEMV_MAX_M=$cut (QTOOL_PDL=1)"
  run env QTOOL_PDL=1 QTOOL_GEMV_MAX_M=$cut "$PY" scripts/bench_kernels.py --quick --tokens 4,5,8 \
    --json "$OUT/bench-m58-gemv$cut.json"
done

step "summary: graph us per call (qtool dispatcher), M=1"
"$PY" - "$OUT" <<'PYEOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
runs = {p: json.loads((out / f"bench-pdl{p}.json").read_text()) for p in "012" if (out / f"bench-pdl{p}.json").exists()}
keys = sorted({(r["K"], r["N"], r["format"], r["M"]) for d in runs.values() for r in d["rows"]})
print("K x N format M | " + " | ".join(f"PDL={p} graph/raw-gemv us" for p in runs))
for key in keys:
    cells = []
    for d in runs.values():
        r = next((r for r in d["rows"] if (r["K"], r["N"], r["format"], r["M"]) == key), None)
        g = r and r["graph_qtool_ms"]
        v = r and r["kernel_ms"].get("wo_gemv")
        cells.append(f"{g * 1e3:.1f}" if g else "-")
        cells[-1] += "/" + (f"{v * 1e3:.1f}" if v else "-")
    print(f"{key[0]}x{key[1]} {key[2]} {key[3]} | " + " | ".join(cells))
PYEOF

echo
if ((${#failed[@]})); then
  echo "=== ${#failed[@]} step(s) failed:"; printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo "=== all steps passed; log in $OUT/ab.log"
