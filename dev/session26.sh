#!/usr/bin/env bash
# Session 26's device calls (nvidia-h200, carry [".gpu/w8a8"]; the Hopper libraries there match the code:
# `python3 -c 'import quantize; from qtool_kernels import sm90; print([l.path().name for l in sm90.ALL])'`):
#   call 1: bash dev/session26.sh wotests woab pdltest     (wo_gemm's deep pipeline and one-kernel split-K: tests,
#           the A/B of its four forms beside bf16 and the dispatcher; session 25's loosened Inductor-PDL test)
#   call 2: bash dev/session26.sh sanitize e2ew4           (compute-sanitizer over wo_gemm; 8B w4a16 end to end)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# wotests   wo_gemm's GPU tests (every form), the raw-kernel and QuantLinear tests that route through it
# woab      dev/wo_gemm_ab.py: W4 g128 and W8 per channel, 8-128 tokens, the six issue shapes and the fused ones
# pdltest   the Inductor-PDL decode test (bounded by norms since session 25)
# sanitize  compute-sanitizer memcheck and racecheck over dev/sanitize_wo_gemm.py
# e2ew4     8B w4a16 decode batch 1 / 16 and prefill 1 x 2048 (session 25's run hit its 145 s limit)
# wotable   issue 19's whole weight-only table (gpu_setup.sh)
cd "$(dirname "$0")/.."
LOG=session26.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

wotests() {
  step "wo_gemm GPU tests"
  timeout -k 15 "${WT_TIMEOUT:-200}" python3 -m pytest -q -m gpu tests/test_wo_gemm_gpu.py tests/test_kernels_gpu.py \
    --tb=short -rf -p no:logging > "$OUT/wotests.txt" 2>&1
  summarize "$OUT/wotests.txt"
}
woab() {
  step "wo_gemm forms A/B"
  timeout -k 15 "${AB_TIMEOUT:-260}" python3 dev/wo_gemm_ab.py --budget "${AB_BUDGET:-220}" \
    --shapes 4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,4096x28672,8192x28672,28672x8192 \
    --json "$OUT/wo_gemm_ab.json" > /tmp/woab.txt 2>&1
  echo "exit $?"; grep -vE "Warning|warn" /tmp/woab.txt | tail -90
}
pdltest() {
  step "Inductor-PDL decode test"
  timeout -k 15 "${PT_TIMEOUT:-150}" python3 -m pytest -q -m gpu tests/test_fusion.py -k inductor_pdl -p no:logging \
    --tb=short > "$OUT/pdltest.txt" 2>&1
  summarize "$OUT/pdltest.txt"
}
sanitize() {
  for tool in ${SAN_TOOLS:-memcheck racecheck}; do
    step "compute-sanitizer $tool"
    timeout -k 10 "${SAN_TIMEOUT:-120}" compute-sanitizer --tool $tool --error-exitcode 3 python3 dev/sanitize_wo_gemm.py 2>&1 | tail -4
  done
}
e2ew4() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "" "w4a16" 1,16 2048 12
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(wotests woab)
for s in "${stages[@]}"; do "$s"; done
step "done"
