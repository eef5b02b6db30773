#!/usr/bin/env bash
# The device calls of session 57 (carry [".gpu/w8a8", ".gpu/ext"]; H100s again). Call 1 ran `session56.sh gap`,
# call 2 `dev/capture_probe.py`: an fp8-block layer on the narrow tile read 14.7 us in the first graph captured on
# fresh copies and 11.4 us once every copy had been called (block_mm.narrow_scales expanded the scales inside the
# graph, and cached memory that only a replay writes). Then:
#   fixtests  the capture fix's GPU test and the narrow tile's tests
#   w8a8all   issue 18's whole table with every copy warmed eagerly before capture (benchmarks/bench_w8a8.py)
cd "$(dirname "$0")/.."
LOG=session57.log
source dev/gpu_setup.sh
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

fixtests() {
  step "narrow scales under capture, the narrow tile's GPU tests"
  gputests fixtests "${FIX_TIMEOUT:-150}" tests/test_w8a8_gpu.py -k "narrow"
}
for stage in "$@"; do "$stage"; done
step "done"
