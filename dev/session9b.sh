#!/usr/bin/env bash
# Session 9, second device call (nvidia-h200, carry [".gpu/w8a8"]): what the first (session9.sh tests w1
# table) left: the 1-bit GPU tests without -x and with each failure's message, the stacked GPTQ on 4 blocks
# of the 8B shape, gptq_quantize per linear, then Nsight Compute counters of every weight-only kernel.
#
#   bash dev/session9b.sh [binary] [gptq] [gptqprof] [ncu]
cd "$(dirname "$0")/.."
LOG=session9b.log
source dev/gpu_setup.sh

binary() {
  step "1-bit GPU tests, every case, failures with their messages"
  timeout 150 python3 -m pytest -q -m gpu tests/test_binary_gpu.py --tb=line -rf 2>&1 | tail -40
}

gptq() { bash dev/session9.sh gptq; }
gptqprof() { bash dev/session9.sh gptqprof; }
ncu() { bash dev/session9.sh ncu; }

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(binary gptq gptqprof ncu)
for s in "${stages[@]}"; do "$s"; done
step "done"
