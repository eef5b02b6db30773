#!/usr/bin/env bash
# GPU-session stages for a device machine without network (prepare .gpu/ first: dev/gpu_payload.sh).
#
#   bash dev/gpu_session.sh build kernels bench8b        carry [".gpu/whl"]
#   bash dev/gpu_session.sh models                       carry [".gpu/whl", ".gpu/lcwhl", ".gpu/data", ".gpu/smollm2.gguf"]
#
# build installs the checkout and builds the extension; kernels builds the extension for sm_90 and runs
# the GPU tests and the kernel benchmark; bench8b runs `qtool bench` on an 8B-shaped Llama (W4A16 vs
# bf16, kernel profile). models writes the float model from the GGUF, quantizes every 8-bit preset,
# GPTQ and AWQ on the GPU and evaluates each there (float32 for the quality table, bfloat16 through the
# kernels and torch._scaled_mm), and runs llm-compressor's AWQ; profile times GPTQ and AWQ by function
# (benchmarks/profile_method.py); ncu_gemv and ncu_source profile wo_gemv with Nsight Compute.
# Results land in $OUT: logs, bench*.json, quality.tgz. Each step has a time limit so that each call
# ends within 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 QTOOL_CUDA_ARCHS=${QTOOL_CUDA_ARCHS:-90} MAX_JOBS=${MAX_JOBS:-16}
exec > >(tee -a "$OUT/session.log") 2>&1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site
step() { echo; echo "=== $* [$(date -u +%H:%M:%S)]"; }

build() { timeout 150 bash dev/gpu_check.sh build; }

kernels() {
  timeout 150 bash dev/gpu_check.sh quick          # build (sm_90, ~20 s), smoke test, quick benchmark
  timeout 120 bash dev/gpu_check.sh test
  timeout 90 bash dev/gpu_check.sh bench
}

bench8b() {
  step "8B-shaped Llama, W4A16 vs bf16 decode (batch 1, token loop with CUDA graphs, kernel profile)"
  timeout "${BENCH_TIMEOUT:-300}" qtool bench llama-8b --random-weights --scheme w4a16 --decode-tokens 64 --batch-sizes 1 \
    --prefill-len 2048 --profile --json "$OUT/bench-8b${BENCH_TAG:-}.json" ${BENCH_ARGS:-}
}

ncu_gemv() {  # hardware counters of wo_gemv at the 8B's decode shapes (Nsight Compute)
  export PYTHONPATH=$PWD:$PYTHONPATH  # this checkout's quantize and qtool_kernels
  step "ncu wo_gemv"
  timeout 240 ncu --clock-control none -k regex:wo_gemv --launch-skip 0 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
    --section SchedulerStats python3 dev/ncu_gemv.py > "$OUT/ncu-gemv.txt" 2>&1
  grep -E "^  wo_gemv|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers|Grid Size|Block Size|Stall" \
    "$OUT/ncu-gemv.txt" | head -120
}

ncu_source() {  # ncu's per-instruction stall sampling of wo_gemv at 4096 x 4096 (SASS lines with stall reasons)
  export PYTHONPATH=$PWD:$PYTHONPATH  # this checkout's quantize and qtool_kernels
  step "ncu source-level sampling, 4096 x 4096 (4th launch)"
  timeout 150 ncu --clock-control none --set full -k regex:wo_gemv --launch-skip 3 --launch-count 1 -f \
    -o "$OUT/gemv4096" python3 dev/ncu_gemv.py > /dev/null 2>&1
  ncu --import "$OUT/gemv4096.ncu-rep" --page source --csv --print-source sass > "$OUT/gemv4096-sass.csv" 2>&1
  ncu --import "$OUT/gemv4096.ncu-rep" --page details > "$OUT/gemv4096-details.txt" 2>&1
  wc -l "$OUT/gemv4096-sass.csv"
}

profile() {  # where GPTQ's and AWQ's time goes on the GPU (random SmolLM2-shaped model; no GGUF needed)
  for method in gptq awq; do
    step "profile $method"
    timeout 200 python3 benchmarks/profile_method.py --method "$method" --config smollm2-135m --device cuda --top 25 \
      --json "$OUT/profile-$method.json"
  done
}

quality() {  # quantize on the GPU, evaluate there in float32 (the table) and bfloat16 (kernels, _scaled_mm)
  for name in "$@"; do
    DEVICE=cuda DATA=.gpu/data OUT_DIR=runs/quality timeout 150 bash benchmarks/smollm2_quality.sh "$name"
    [ -d "runs/quality/$name" ] || continue
    timeout 60 qtool eval "runs/quality/$name" --base models/smollm2 --dataset .gpu/data/test.jsonl --seq-len 512 \
      --max-windows 40 --batch-size 8 --device cuda --dtype bfloat16 --json "runs/quality/$name.bf16.json" | tail -3
  done
}

models() {
  step "model"
  if [ ! -f models/smollm2/config.json ]; then
    [ -f .gpu/smollm2.gguf ] || { echo "models needs SmolLM2's GGUF at .gpu/smollm2.gguf"; exit 3; }
    python3 scripts/prepare_smollm2.py --gguf .gpu/smollm2.gguf --output models/smollm2 2>&1 | tail -1
  fi
  mkdir -p runs
  step "presets, six at once (no timings taken from these)"
  local jobs=()
  for name in fp8-dynamic fp8-block int8-w8a8 rtn-w8a16 smoothquant-auto-w8a8 gptq-fp8-weight-only; do
    quality "$name" > "runs/preset-$name.log" 2>&1 &
    jobs+=($!)
  done
  wait "${jobs[@]}"  # not a bare `wait`: that also waits for the tee behind `exec > >(tee ...)`, forever
  tail -n 2 runs/preset-*.log
  step "llm-compressor AWQ g64 (alone on the machine)"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/lcwhl/*.whl
  for config in ${LLMC_CONFIGS:-awq-w4g64}; do
    timeout 170 python3 benchmarks/llmcompressor_baseline.py --model models/smollm2 --config "$config" --data .gpu/data \
      --out runs/llmc > "runs/llmc-$config.log" 2>&1 || echo "llm-compressor $config failed"
    tail -3 "runs/llmc-$config.log"
  done
  step "our GPTQ and AWQ g64, activations cached on the GPU (alone on the machine)"
  quality gptq-w4g64 awq-w4g64
  tar czf "$OUT/quality.tgz" runs/quality/*.json runs/quality/*.log runs/llmc* runs/preset-*.log 2>/dev/null
}

for stage in "$@"; do
  case "$stage" in
    build | kernels | bench8b | models | profile | ncu_gemv | ncu_source) "$stage" ;;
    *) echo "usage: bash dev/gpu_session.sh STAGE... (build kernels bench8b models profile ncu_gemv ncu_source)"; exit 2 ;;
  esac
done
