#!/usr/bin/env bash
# The device calls of session 57 (carry [".gpu/w8a8", ".gpu/ext"]; H100s only, the ninth session without an H200;
# BENCHMARKS.md "H100, 2026-12-06 session 57"). Call 1 ran `session56.sh gap`, call 2 `dev/capture_probe.py`: an
# fp8-block layer on the narrow tile read 14.7 us in the first graph captured on fresh copies and 11.4 us once every
# copy had been called (block_mm.narrow_scales expanded the scales inside the graph, and kept memory that only a
# replay writes). Then:
#   fixtests w8a8all        the capture fix's GPU test; issue 18's table with every copy warmed before capture
#   oldfix gpufiles         the new test on session 56's block_mm.py (fails, as it must); five GPU test files
#   clocks                  dev/clock_probe.py: every large GEMM runs at the 700 W limit (the large-m ceiling)
#   foldtests foldab        w8_gemv's folded block scales in 64 registers (four blocks per SM), tested and timed
#   foldtests foldprobe smalltable   the final rule (four where that makes one wave), issue 18 at 1-16 tokens
# Next (session 58), on an H200: `bash dev/session55.sh first56` (issue 19's 8B goals at batches 1 / 16, owed since
# session 48), then `bash dev/session55.sh tables` (both whole tables on the H200, with this session's w8_gemv rule
# and bench fix); then re-sweep fp8-block 28672 x 8192 at 4-8 tokens on the H200 (`W8_TOKENS=1,2,4,8,16 W8_KINDS=
# fp8-block bash dev/session55.sh w8sweep`: its table routes them to block-swap, chosen against the slow GEMV).
cd "$(dirname "$0")/.."
LOG=session57.log
source dev/gpu_setup.sh
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

fixtests() {
  step "narrow scales under capture, the narrow tile's GPU tests"
  gputests fixtests "${FIX_TIMEOUT:-150}" tests/test_w8a8_gpu.py -k "narrow"
}
oldfix() {  # the capture test against session 56's block_mm.py (dev/old_block_mm.py.txt, carried for this call): must fail
  step "the narrow-scales capture test on the old block_mm.py (expected: 1 failed)"
  cp kernels/block_mm.py /tmp/block_mm.py && cp dev/old_block_mm.py.txt kernels/block_mm.py
  timeout -k 10 120 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py -k narrow_scales_first 2>&1 | tail -3
  cp /tmp/block_mm.py kernels/block_mm.py
}
gpufiles() {
  step "GPU tests: kernels, w8a8, mixed, planes, prefetch"
  gputests gpufiles "${GF_TIMEOUT:-420}" tests/test_kernels_gpu.py tests/test_w8a8_gpu.py tests/test_mixed_gpu.py \
    tests/test_planes_gpu.py tests/test_prefetch_gpu.py
}
clocks() {  # issue 18's large-m limit: SM clock and power under each GEMM run back to back (dev/clock_probe.py)
  for shape in ${CLOCK_SHAPES:-8192x8192x8192 4096x8192x28672}; do
    step "clock and power under each GEMM, $shape"
    timeout -k 10 120 python3 dev/clock_probe.py --shape "$shape" --json "$OUT/clock_$shape.json" 2>&1 | grep -v "^USDT"
  done
}
foldtests() {  # w8_gemv's GPU tests, then the block-scaled ones under switch 256 (64 registers, four blocks per SM)
  step "w8_gemv GPU tests, default and QTOOL_W8_GEMV=256"
  gputests foldtests "${FT_TIMEOUT:-150}" tests/test_w8a8_gpu.py -k "w8_gemv"
  QTOOL_W8_GEMV=256 gputests foldtests256 "${FT_TIMEOUT:-150}" tests/test_w8a8_gpu.py -k "w8_gemv and block"
}
foldab() {  # switch 256 against the default: the raw op (dev/gemv_probe.py), then the layers (bench_w8a8.py), ABAB
  step "w8_gemv: QTOOL_W8_GEMV=0 / 256 / 16 (dev/gemv_probe.py, one child each)"
  timeout -k 10 "${FP_TIMEOUT:-200}" python3 dev/gemv_probe.py --switches 0,256,16 --tokens 1,4,8 \
    --json "$OUT/foldprobe.json" 2>&1 | grep -v "^USDT" | grep -E "^fp8-block|^kind|failed"
  for round in 1 2; do
    for sw in 0 256; do
      step "bench_w8a8 at 1-8 tokens, QTOOL_W8_GEMV=$sw, round $round"
      QTOOL_W8_GEMV=$sw timeout -k 10 120 python3 benchmarks/bench_w8a8.py --tokens 1,2,4,8 \
        --json "$OUT/fold_${sw}_r$round.json" > "/tmp/fold_${sw}_r$round.txt" 2>&1
      echo "exit $?"; grep -E "^fp8-block " "/tmp/fold_${sw}_r$round.txt"
    done
  done
}
foldprobe() {  # the default (four blocks per SM where that makes one wave) against switch 256 (always three)
  step "w8_gemv: QTOOL_W8_GEMV=0 / 256 (dev/gemv_probe.py, one child each)"
  timeout -k 10 "${FP_TIMEOUT:-150}" python3 dev/gemv_probe.py --switches 0,256 --tokens 1,4,8 \
    --json "$OUT/foldprobe2.json" 2>&1 | grep -v "^USDT" | grep -E "^fp8-block|^kind|failed"
}
smalltable() {  # issue 18's table at 1-16 tokens on the final routes (what the fold change touches)
  step "W8A8 at 1-16 tokens (benchmarks/bench_w8a8.py)"
  timeout -k 10 "${ST_TIMEOUT:-120}" python3 benchmarks/bench_w8a8.py --tokens 1,2,4,8,16 \
    --json "$OUT/w8a8_small.json" > /tmp/w8a8_small.txt 2>&1
  echo "exit $?"; grep -E "^(fp8|w8a8-int8|fp8-block) " /tmp/w8a8_small.txt
}
for stage in "$@"; do "$stage"; done
step "done"
