#!/usr/bin/env bash
# The next session's device calls, prepared in session 37 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]: on a fresh
# development machine `bash dev/prebuild_sm90.sh` (~13 min) and `bash dev/prebuild_ext.sh` (~3 min) first).
#   call 1: bash dev/session38.sh fusedtests e2efused     (~8 min)
# fusedtests  the planes under torch.compile (tests/test_planes_gpu.py) and the gated MLP's tests
# e2efused    qtool bench llama-8b w4a16 at batch 1 and 4 with QTOOL_FUSED_PLANES=1 (the q/k/v, gate/up and down
#             GEMVs at 1-2 tokens on the planes, Inductor writing them in the RMSNorm and SiLU-and-multiply kernels)
#             and without, one process each
cd "$(dirname "$0")/.."
LOG=session38.log
source dev/gpu_setup.sh

fusedtests() {
  step "GPU tests: the planes under torch.compile"
  gputests fusedtests "${PT_TIMEOUT:-240}" tests/test_planes_gpu.py tests/test_mlp.py
}
e2efused() {
  QTOOL_FUSED_PLANES=1 E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "-fused" "w4a16" ${E2E_BATCHES:-1,4} 2048 11
  E2E_TIMEOUT=${E2E_TIMEOUT:-300} bench8b "" "w4a16" ${E2E_BATCHES:-1,4} 2048 11
}

for stage in "$@"; do "$stage"; done
step "done"
