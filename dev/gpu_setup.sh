# Sourced by the device session scripts (w8a8_session.sh, w4_session.sh) with LOG set: logging to
# $OUT/$LOG, the CUTLASS headers from the carried nvidia-cutlass wheel, the extension build, and the
# libqtool_sm90*.so libraries prebuilt on the development machine (.gpu/w8a8, same nvcc) copied into
# the build cache so the device does not spend minutes compiling CUTLASS.
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
# the checkout's qtool_kernels -> kernels symlink makes the kernels importable without an install
export PYTHONUNBUFFERED=1 QTOOL_CUDA_ARCHS=${QTOOL_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16} PYTHONPATH=$PWD
exec > >(tee -a "$OUT/$LOG") 2>&1
step() { echo; echo "=== $* [$(date -u +%H:%M:%S)]"; }
# The device returns at most 8 files from $OUT (session 47 lost two bench JSONs to that): at exit, past 8, everything
# but the log travels as one archive, out.tar.gz (`tar -xzf` it here).
pack_out() {
  local n; n=$(find "$OUT" -type f | wc -l)
  [ "$n" -le 8 ] && return 0
  (cd "$OUT" && find . -mindepth 1 -maxdepth 1 ! -name "$LOG" ! -name out.tar.gz -printf '%P\n' > /tmp/pack_list &&
   tar -czf out.tar.gz -T /tmp/pack_list && xargs -d '\n' rm -rf < /tmp/pack_list) &&
    echo "packed \$OUT ($n files with the log) into out.tar.gz ($(du -h "$OUT/out.tar.gz" | cut -f1))"
}
trap pack_out EXIT

# Shared by the session scripts (sourced): the failures of a pytest output, every GPU test,
# and qtool bench on the 8B shape.
summarize() {  # $1: a pytest output file
  grep -E "^(FAILED|ERROR)" "$1" | sed -E 's/\[.*//' | sort | uniq -c
  grep -E "^E " "$1" | sort | uniq -c | sort -rn | head -8
  tail -1 "$1"
}

tests() {  # every GPU test ($1: the time limit in seconds), output in $OUT/tests.txt
  step "GPU tests"
  timeout -k 15 "${1:-${TESTS_TIMEOUT:-300}}" python3 -m pytest -q -m gpu tests/ --tb=short -rf --maxfail=20 > "$OUT/tests.txt" 2>&1
  summarize "$OUT/tests.txt"
}

gputests() {  # gputests NAME SECONDS PYTEST_ARGS...: GPU tests within a time limit, output in $OUT/NAME.txt, summarized
  local name=$1 limit=$2; shift 2
  timeout -k 15 "$limit" python3 -m pytest -q -m gpu --tb=short -rf -p no:logging "$@" > "$OUT/$name.txt" 2>&1
  summarize "$OUT/$name.txt"
}

sanitize() {  # sanitize TAG SCRIPT: compute-sanitizer memcheck and racecheck on a script of eager launches (dev/san_*.py)
  local tag=$1 script=$2
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool: $tag ($script)"
    timeout -k 10 "${SAN_TIMEOUT:-150}" compute-sanitizer --tool "$tool" --print-limit 20 python3 "$script" \
      > "/tmp/san_${tag}_$tool.txt" 2>&1
    local rc=$?
    echo "exit $rc"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|launches done" "/tmp/san_${tag}_$tool.txt" | tail -4
    [ "$rc" = 0 ] || grep -v "^=========" "/tmp/san_${tag}_$tool.txt" | tail -6  # the script's own failure, if any
  done
}

splittests() {  # wo_gemv's split variant (csrc/wo_split.cu) and the tile kernel, which shares its cluster sum
  step "split variant GPU tests; the tile kernel's"
  gputests splittests "${ST_TIMEOUT:-200}" tests/test_split_gpu.py tests/test_planes_gpu.py -k "split or tile"
}
splitab() {  # dev/split_ab.py: the split variant (the plan, every forced count) against the route and bf16
  step "split variant: the plan and every forced split count against the route and bf16 (dev/split_ab.py)"
  timeout -k 10 "${SA_TIMEOUT:-300}" python3 dev/split_ab.py --tokens "${SA_TOKENS:-9,16,32}" \
    ${SA_SHAPES:+--shapes $SA_SHAPES} ${SA_ASYM:+--asym} --json "$OUT/split_ab${SA_TAG:-}.json" 2>&1 | grep -v "^USDT"
}
san() {  # compute-sanitizer memcheck and racecheck on the split variant
  sanitize split dev/san_split.py
}

pdltest() {  # the Inductor-PDL decode test (qtool bench's decode compile options against Inductor's plain launches)
  step "Inductor-PDL decode test"
  gputests pdltest "${PT_TIMEOUT:-150}" tests/test_fusion.py -k inductor_pdl
}

ncu_source() {  # ncu_source SHAPE ONLY TAG REGEX (profile_kernels.py --only): --set full + source page, CSVs to $OUT
  local shape=$1 only=$2 tag=$3 regex=$4
  step "ncu --set full: $only on $shape"
  timeout -k 10 "${NS_TIMEOUT:-120}" ncu --clock-control none --target-processes all --kernel-name-base demangled \
    --kernel-name regex:"$regex" --launch-skip 1 --launch-count 1 --set full \
    --import-source yes -f -o "/tmp/$tag" python3 dev/profile_kernels.py --shape "$shape" --only "$only" ${NS_BITS:+--bits $NS_BITS} \
    > "/tmp/$tag.log" 2>&1
  echo "ncu exit $?"; tail -2 "/tmp/$tag.log"
  ncu --import "/tmp/$tag.ncu-rep" --page details --csv > "$OUT/${tag}_details.csv" 2>&1
  ncu --import "/tmp/$tag.ncu-rep" --page source --csv --print-source sass > "$OUT/${tag}_sass.csv" 2>&1
  grep -E '"(Duration|DRAM Throughput|Executed Instructions|Registers Per Thread|Issue Slots Busy)"' \
    "$OUT/${tag}_details.csv" | awk -F'","' '{print $13 ": " $15}' | head -8
}
ncuw23() {  # ncu --set full of the lean ring GEMV at one token, W4 g128 / W3 g128 / W2 g64 on 8192 x 8192 (sessions 35-36)
  for bits in 4 3 2; do
    ncu_source 8192x8192 "w$bits wo_gemv v1 M=1" "gv1_w$bits" 'wo_gemv_kernel'
  done
}
# Output to a file, not a pipe: in session 20 a bench cut off by its time limit left processes holding the pipe
# open (torch.compile's workers, a guess), and `tail` waited on them for the rest of the call.
bench8b() {  # bench8b LABEL SCHEMES BATCHES PREFILL TAIL [flags]: qtool bench on the 8B shape, one run per scheme
  local label=$1 schemes=$2 batches=$3 prefill=$4 tail_lines=$5; shift 5
  for s in $schemes; do
    step "8B $label, $s vs bf16"
    timeout -k 15 "${E2E_TIMEOUT:-200}" python3 -m quantize bench llama-8b --random-weights --scheme "$s" --decode-tokens 32 \
      --batch-sizes "$batches" --prefill-len "$prefill" "$@" --json "$OUT/e2e-$s$label.json" > "/tmp/e2e-$s$label.txt" 2>&1
    echo "exit $?"; tail -"$tail_lines" "/tmp/e2e-$s$label.txt"
  done
}

# issue 19's table: every weight-only format, shape and M, with tinygemm beside it
wotable() {
  step "weight-only: every format, shape and M"
  timeout -k 15 "${TABLE_TIMEOUT:-420}" python3 benchmarks/bench_kernels.py \
    --formats w4a16-g128,w8a16-channel,w3a16-g128,w2a16-g64 --tokens 1,4,16,32,64,128,256,4096 \
    --json "$OUT/wo_table.json" > /tmp/wo_table.txt 2>&1
  echo "exit $?"; tail -70 /tmp/wo_table.txt
}
w8a8all() {  # issue 18's table: every W8A8 scheme, shape and M of the issue, torch's anchors beside them
  step "W8A8: every scheme, shape and M"
  timeout -k 15 "${W8A8_TIMEOUT:-300}" python3 benchmarks/bench_w8a8.py \
    --tokens 1,2,4,8,16,32,64,128,256,512,1024,4096,8192 --json "$OUT/w8a8_table.json" > /tmp/w8a8_table.txt 2>&1
  echo "exit $?"; tail -40 /tmp/w8a8_table.txt
}
asymtable() {  # issue 19 asks W4 g128 sym and asym: the asymmetric format alone (zero points per row and group)
  step "weight-only: W4 g128 asymmetric, every shape"
  timeout -k 15 "${ASYM_TIMEOUT:-200}" python3 benchmarks/bench_kernels.py \
    --formats w4a16-g128-asym --tokens ${ASYM_TOKENS:-1,4,16,32,64,128,256,4096} \
    --json "$OUT/wo_asym.json" > /tmp/wo_asym.txt 2>&1
  echo "exit $?"; tail -24 /tmp/wo_asym.txt
}

aq() {  # act_quant's bandwidth on 8192 x 8192 bf16, and the W8A8 layers at 2048 tokens on the fused 8B shapes
  step "act_quant and W8A8 layers at 2048 tokens"
  timeout -k 10 150 python3 dev/w8a8_sweep.py --kinds int8,fp8 --shapes 4096x6144,4096x4096,4096x28672,14336x4096 \
    --tokens 2048 --budget 120 --json "$OUT/aq2k.json" 2>&1 | grep -v "^$" | tail -10
  timeout -k 10 60 python3 -c "import json, sys; sys.path.insert(0, 'benchmarks'); import bench_w8a8 as b; b.build.load_extension(); \
print(json.dumps(b.act_quant_bandwidth()))" 2>&1 | tail -2
}

step "CUTLASS headers, prebuilt Hopper libraries, extension build"
if [ -d .gpu/ext ]; then  # the extension built here beforehand (dev/prebuild_ext.sh), where it loads
  python3 -c "import quantize; from pathlib import Path; from qtool_kernels import build; print(build.install_prebuilt(Path('.gpu/ext')))"
  if ! timeout -k 5 120 python3 -c "import sys, quantize; from qtool_kernels import build; sys.exit(build.load_extension() is None)" \
      > /tmp/prebuilt_ext.log 2>&1; then
    echo "the prebuilt extension does not load on this machine: building it"; tail -3 /tmp/prebuilt_ext.log
    python3 -c "import quantize; from qtool_kernels import build; (build.build_dir() / 'qtool_cuda.so').unlink(missing_ok=True)"
  fi
fi
# The Hopper libraries travel xz-packed (dev/prebuild_sm90.sh: 32 MB -> 3 MB of the 64 MiB a call carries)
python3 -c 'import lzma, pathlib
for packed in pathlib.Path(".gpu/w8a8").glob("*.so.xz"):
    target = packed.with_suffix("")
    if not target.exists(): target.write_bytes(lzma.decompress(packed.read_bytes()))'
mkdir -p /tmp/cutlass && (cd /tmp/cutlass && python3 -m zipfile -e "$OLDPWD"/.gpu/w8a8/nvidia_cutlass-*.whl . )
export QTOOL_CUTLASS_INCLUDE=/tmp/cutlass/cutlass_library/source/include
python3 - <<'PY'
import shutil, time
from pathlib import Path
import quantize  # noqa: F401  (makes qtool_kernels importable)
from qtool_kernels import build, sm90
t = time.time(); assert build.load_extension(verbose=False) is not None, build._loader.reason
print(f"extension built in {time.time() - t:.0f} s")
for lib in sm90.ALL:
    target = lib.path()
    pre = Path(".gpu/w8a8") / target.name
    if pre.is_file():
        target.parent.mkdir(parents=True, exist_ok=True); shutil.copy(pre, target); print("prebuilt", target.name)
t = time.time(); print(sm90.build_all(), f"{time.time() - t:.0f} s")  # any not prebuilt: compiled side by side
for lib in sm90.ALL:
    t = time.time(); print(lib.stem, "loaded:", lib.load(), lib.reason, f"{time.time() - t:.0f} s")
print(build.info())
PY
