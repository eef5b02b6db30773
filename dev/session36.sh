#!/usr/bin/env bash
# Session 36's device calls (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"]; `bash dev/prebuild_sm90.sh` and
# `bash dev/prebuild_ext.sh` first on a fresh development machine, else gpu_setup.sh compiles for minutes).
#   call 1: bash dev/session36.sh ncuw23 e2e2k     (~9 min)
# ncuw23  ncu --set full of wo_gemv's lean launch at one token, W4 g128 / W3 g128 / W2 g64 on 8192 x 8192: whether the
#         low-bit GEMVs are bound by issue, by latency or by DRAM (kernels/NOTES.md, session 34's instruction counts)
# e2e2k   qtool bench llama-8b, batch 1 and 16, prefill 1 x 2048 (issues 18 and 19's end-to-end protocol), the
#         schemes in E2E_SCHEMES (default: fp8-block w4a16, the two whose goals are open), bf16 in each process
cd "$(dirname "$0")/.."
LOG=session36.log
source dev/gpu_setup.sh

e2e2k() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-170} bench8b "" "${E2E_SCHEMES:-fp8-block w4a16}" 1,16 2048 9
}

for stage in "$@"; do "$stage"; done
step "done"
