#!/usr/bin/env bash
# Session 20's third device call (nvidia-h200, carry [".gpu/w8a8"]):
#   bash dev/session20c.sh                  (~8 min)
# w8big   the W8A8 table at 512-8192 tokens with session 19's final code, torch's anchors beside it (issue 18, M >= 1024)
# e2e     8B w8a8-int8 (call 1's prefill 1.39x where session 14 measured 1.65x; fp8 in call 2 1.66x) and fp8-block
cd "$(dirname "$0")/.."
LOG=session20c.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

w8big() {
  step "W8A8 table, 512-8192 tokens"
  timeout 220 python3 benchmarks/bench_w8a8.py --tokens 512,1024,4096,8192 --json "$OUT/w8big.json" 2>&1 | tail -30
}
e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-170} bench8b "" "w8a8-int8 fp8-block" 1,16 2048 8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(w8big e2e)
for s in "${stages[@]}"; do "$s"; done
step "done"
