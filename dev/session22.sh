#!/usr/bin/env bash
# Session 22's device calls (nvidia-h200, carry [".gpu/w8a8"], the Hopper libraries prebuilt here first by
# `bash dev/prebuild_sm90.sh`, ~5-10 min, since a new checkout has no .gpu/); BENCHMARKS.md "session 22":
#   call 1: bash dev/session22.sh swiglu w8lean blockpdl                                      (512 s)
#   call 2: SW_SCHEMES=w8a8-int8 SW_TIMEOUT=240 SW_BUDGET=200 SI_TIMEOUT=270 SI_BUDGET=220 \
#             bash dev/session22.sh swiglu silu                                               (cut at 600 s)
#   call 3: PP_BUDGET=150 AB_BUDGET=120 SI_TIMEOUT=130 SI_BUDGET=90 bash dev/session22.sh pingpong abint8 silub  (435 s)
# Next session: dev/session23.sh (its header has the plan).
# w8lean   w8_gemv's lean block-scaled variant at 9-16 tokens (QTOOL_W8_GEMV=64, csrc/w8_gemv.cu): the w8_gemv GPU
#          tests with the switch on, then the A/B at 9-16 tokens (session 21: fp8-block w8_gemv at 16 tokens 0.97-1.18x
#          bf16, 127 registers and two blocks per SM; the lean one takes 80 and three). If it wins, sweep fp8-block
#          at 16-32 tokens again with it as the default (dev/w8a8_sweep.py --kinds fp8-block --tokens 16,32).
# aq       act_quant's bandwidth (session 20's saturating int8 conversion, unmeasured since) and the W8A8 layers at
#          2048 tokens on the fused 8B shapes
# pf8      the L2 prefetch for w8_gemv (fp8, 0 / 4 / 16 MiB): session 21's sweep measured W4A16 only (every size
#          slower; the fp8 half ran eager when dynamo hit its recompile limit, fixed since)
# blockpdl the fp8-block GEMM launched with PDL after act_quant (session 21 built the bit into libqtool_sm90_block,
#          off: scaled_mm.BLOCK_PDL_MAX_M = 0): the block GEMM tests (each configuration with PDL after act_quant),
#          then the layers at 16-256 tokens with and without it, one process (dev/block_pdl_probe.py)
# swiglu   W8A8 gate/up layers with SiLU-and-multiply in w8_gemv's epilogue at <= 8 tokens (session 21, built and
#          CPU-tested, unmeasured): the gated MLP GPU tests, then the 8B fp8 and int8 decode with it on and off in one
#          process (issue 18's batch-1 goal, 1.6x: fp8 1.59x, int8 1.58x without it)
# silu     W4A16 8B decode with the separate SiLU-and-multiply as Inductor's kernel, ours, or ours launched as the PDL
#          twin (waits for gate/up, releases the down GEMV at once; kernels/mlp.py COMPILED_KERNEL / PDL, off)
# w8a8table issue 18's table, every (scheme, shape, M) with the anchors in one run, after the routes settle
# e2eblock 8B fp8-block end to end (session 21's run was cut at 190 s while compiling; last measured in session 14)
cd "$(dirname "$0")/.."
LOG=session22.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

w8lean() {
  step "w8_gemv lean block-scaled at 9-16 tokens: tests with QTOOL_W8_GEMV=64, then the A/B"
  QTOOL_W8_GEMV=64 timeout -k 15 200 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py -k "gemv or fp8_block" \
    --tb=short > "$OUT/w8lean_tests.txt" 2>&1
  summarize "$OUT/w8lean_tests.txt"
  timeout -k 15 200 python3 dev/gemv_probe.py --switches 0,64 --tokens 9,12,16 --json "$OUT/w8lean.json" 2>&1 |
    grep -E "fp8-block|setting|failed" | tail -40
}
pf8() {
  step "8B fp8 decode by prefetch size"
  timeout -k 15 "${PF_TIMEOUT:-300}" python3 dev/prefetch_sweep.py --schemes fp8 --mb "${PF_MB:-0,4,16}" \
    --budget "${PF_BUDGET:-250}" --json "$OUT/prefetch_fp8.jsonl" > /tmp/prefetch.txt 2>&1
  echo "exit $?"; grep -E "^\{|Error|error" /tmp/prefetch.txt | tail -10
}
blockpdl() {  # the fp8-block GEMM launched with PDL after act_quant (block_mm.PDL; off until this says where it wins)
  step "fp8-block layers: block GEMM with and without PDL"
  timeout -k 15 200 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py -k "block_gemm" --tb=short > "$OUT/blockpdl_tests.txt" 2>&1
  summarize "$OUT/blockpdl_tests.txt"
  timeout -k 15 200 python3 dev/block_pdl_probe.py --json "$OUT/blockpdl.json" 2>&1 | tail -40
}
swiglu() {  # W8A8 gate/up with SiLU-and-multiply in w8_gemv's epilogue (<= 8 tokens): its GPU tests, then decode
  step "w8_gemv's gated epilogue: tests, then the 8B decode with and without it (one process)"
  timeout -k 15 150 python3 -m pytest -q -m gpu tests/test_mlp.py --tb=short > "$OUT/swiglu_tests.txt" 2>&1
  summarize "$OUT/swiglu_tests.txt"
  timeout -k 15 "${SW_TIMEOUT:-330}" python3 dev/prefetch_sweep.py --schemes "${SW_SCHEMES:-fp8,w8a8-int8}" --mb 0 \
    --swiglu 8,0 --budget "${SW_BUDGET:-280}" --json "$OUT/swiglu.jsonl" > /tmp/swiglu.txt 2>&1
  echo "exit $?"; grep -E "^\{|Error|error" /tmp/swiglu.txt | tail -10
}
w8a8table() {  # issue 18's whole table in one run: every scheme, shape and M with the anchors (bench_w8a8.py)
  step "W8A8: every scheme, shape and M"
  timeout -k 15 "${TABLE_TIMEOUT:-420}" python3 benchmarks/bench_w8a8.py --tokens 1,2,4,8,16,32,64,128,256,512,1024,4096,8192 \
    --json "$OUT/w8a8_table.json" > /tmp/w8a8_table.txt 2>&1
  echo "exit $?"; tail -60 /tmp/w8a8_table.txt
}
silu() {  # W4A16 decode: the separate SiLU-and-multiply under torch.compile as Inductor's, our kernel, its PDL twin
  step "8B w4a16 decode by SiLU-and-multiply kernel (one process)"
  timeout -k 15 "${SI_TIMEOUT:-300}" python3 dev/prefetch_sweep.py --schemes w4a16 --mb 0 --silu ref,op,pdl \
    --budget "${SI_BUDGET:-250}" --json "$OUT/silu.jsonl" > /tmp/silu.txt 2>&1
  echo "exit $?"; grep -E "^\{|Error|error" /tmp/silu.txt | tail -10
}
pingpong() {  # libqtool_sm90's config 5 (128 x 128 ping-pong, 2-CTA clusters) beside the others at 256-8192 tokens
  step "W8A8 large-m ping-pong: tests, then the sweep (routes merged into kernels/tuning.py here)"
  timeout -k 15 150 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py -k "every_config" --tb=short > "$OUT/pingpong_tests.txt" 2>&1
  summarize "$OUT/pingpong_tests.txt"
  timeout -k 15 "${PP_TIMEOUT:-200}" python3 dev/w8a8_sweep.py --kinds fp8,int8 --tokens 256,512,1024,2048,4096,8192 \
    --budget "${PP_BUDGET:-160}" --json "$OUT/pingpong.json" 2>&1 | grep -E "M=|budget|Error" | tail -80
  python3 dev/w8a8_sweep.py --emit "$OUT/pingpong.json" --merge > /dev/null 2>&1 && cp kernels/tuning.py "$OUT/tuning.py"
}
abint8() {  # w8a8-int8 decode with and without w8_gemv's SiLU-and-multiply epilogue, no bf16 model (one process)
  step "8B int8 decode: swiglu 8 / 0"
  timeout -k 15 "${AB_TIMEOUT:-200}" python3 dev/prefetch_sweep.py --schemes w8a8-int8 --mb 0 --swiglu 8,0 --skip-base \
    --budget "${AB_BUDGET:-150}" --json "$OUT/abint8.jsonl" > /tmp/abint8.txt 2>&1
  echo "exit $?"; grep -E "^\{|Error|error" /tmp/abint8.txt | tail -10
}
silub() {  # silu without the bf16 model
  step "8B w4a16 decode by SiLU-and-multiply kernel, no bf16 model"
  timeout -k 15 "${SI_TIMEOUT:-200}" python3 dev/prefetch_sweep.py --schemes w4a16 --mb 0 --silu pdl,op,ref --skip-base \
    --budget "${SI_BUDGET:-150}" --json "$OUT/silu.jsonl" > /tmp/silu.txt 2>&1
  echo "exit $?"; grep -E "^\{|Error|error" /tmp/silu.txt | tail -10
}
e2eblock() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-320} bench8b "" "fp8-block" 1,16 2048 8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(swiglu w8lean blockpdl)
for s in "${stages[@]}"; do "$s"; done
step "done"
