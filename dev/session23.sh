#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 22 (nvidia-h200, carry [".gpu/w8a8"]; run
# `bash dev/prebuild_sm90.sh` on the development machine first, ~5-10 min, since a new checkout has no .gpu/;
# libqtool_sm90 changed in session 22: config 5, ping-pong):
#   call 1: bash dev/session23.sh silub aq            (the SiLU PDL twin A/B; act_quant)
#   call 2: TABLE_TIMEOUT=420 bash dev/session23.sh w8a8table, or E2E_TIMEOUT=330 bash dev/session23.sh e2eblock
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
#   split (call 1, this session): bash dev/session23.sh split
# split    W8A16 on the int8 GEMM through two int8 planes of the activations (kernels/split_mm.py): its GPU tests,
#          then bench_kernels' W8A16 at 17-512 tokens with the route off and forced on (QTOOL_ROWS_SPLIT)
# silub    the 8B W4A16 decode with the separate SiLU-and-multiply as our PDL twin (the default since session 22),
#          ours plain, and Inductor's, in one process, without the bf16 model (--skip-base)
# aq       act_quant's bandwidth on 8192 x 8192 and the W8A8 layers at 2048 tokens on the fused 8B shapes
# w8a8table issue 18's table, every (scheme, shape, M) with the anchors in one run
# e2eblock 8B fp8-block end to end (last measured in session 14)
# sanitize compute-sanitizer memcheck and racecheck over dev/sanitize_w8a8.py (every sm90 configuration)
cd "$(dirname "$0")/.."
LOG=session23.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

split() {
  step "W8A16 through two int8 planes: tests, then the layer with the route off / on"
  timeout -k 15 200 python3 -m pytest -q -m gpu tests/test_split_mm.py tests/test_w8a8_gpu.py tests/test_kernels_gpu.py -k "split or int8x2 or act_quant or rows" \
    --tb=short > "$OUT/split_tests.txt" 2>&1
  summarize "$OUT/split_tests.txt"
  for setting in ${SPLIT_SETTINGS:-0,0,0 1,8192,1099511627776}; do
    step "W8A16 at 17-512 tokens, QTOOL_ROWS_SPLIT=$setting"
    QTOOL_ROWS_SPLIT=$setting timeout -k 15 "${SPLIT_TIMEOUT:-170}" python3 benchmarks/bench_kernels.py \
      --formats w8a16-channel --tokens ${SPLIT_TOKENS:-17,32,64,128,256,512} \
      --shapes ${SPLIT_SHAPES:-4096x4096,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192} \
      --json "$OUT/split_${setting//,/_}.json" 2>&1 | tail -40
  done
}
silub() {
  step "8B w4a16 decode by SiLU-and-multiply kernel, no bf16 model"
  timeout -k 15 "${SI_TIMEOUT:-240}" python3 dev/prefetch_sweep.py --schemes w4a16 --mb 0 --silu pdl,ref,op --skip-base \
    --budget "${SI_BUDGET:-190}" --json "$OUT/silu.jsonl" > /tmp/silu.txt 2>&1
  echo "exit $?"; grep -E "^\{|Error|error" /tmp/silu.txt | tail -10
}
w8a8table() {
  step "W8A8: every scheme, shape and M"
  timeout -k 15 "${TABLE_TIMEOUT:-420}" python3 benchmarks/bench_w8a8.py --tokens 1,2,4,8,16,32,64,128,256,512,1024,4096,8192 \
    --json "$OUT/w8a8_table.json" > /tmp/w8a8_table.txt 2>&1
  echo "exit $?"; tail -60 /tmp/w8a8_table.txt
}
sanitize() {  # issue 18's "compute-sanitizer clean", with the ping-pong tiles
  for tool in ${SAN_TOOLS:-memcheck racecheck}; do
    step "compute-sanitizer $tool"
    timeout -k 10 "${SAN_TIMEOUT:-200}" compute-sanitizer --tool $tool --error-exitcode 3 python3 dev/sanitize_w8a8.py 2>&1 | tail -4
  done
}
e2eblock() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-330} bench8b "" "fp8-block" 1,16 2048 8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(silub aq)
for s in "${stages[@]}"; do "$s"; done
step "done"
