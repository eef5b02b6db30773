#!/usr/bin/env bash
# The next session's device calls, prepared in session 38 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]: on a fresh
# development machine `bash dev/prebuild_sm90.sh` (~13 min) and `bash dev/prebuild_ext.sh` (~3 min) first).
#   call 1: bash dev/session39.sh gatedtests gatede2e        (~7 min)
# gatedtests  x_planes' gated form (the planes of silu(gate) * up, csrc/wo_planes.cu) against silu_mul + x_planes,
#             the gated MLP on it against float64 (tests/test_planes_gpu.py), and the planes kernels' tests
# gatede2e    qtool bench llama-8b w4a16 at batch 1 and 4 with QTOOL_GATED_PLANES=1 and without, one process each:
#             if it wins, GATED_PLANES goes on (qtool_kernels/gated_planes.py) with the measured figures
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

for stage in "$@"; do "$stage"; done
step "done"
