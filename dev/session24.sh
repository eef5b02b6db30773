#!/usr/bin/env bash
# Session 24's device calls (run; the next session's are dev/session25.sh), prepared at the end of session 23 (nvidia-h200, carry [".gpu/w8a8"]; run
# `bash dev/prebuild_sm90.sh` on the development machine first: libqtool_sm90 changed in session 23, configs 6 and 7):
#   call 1: bash dev/session24.sh tiles sanitize       (~8 min: the two new W8A8 tiles' tests and sweep; memcheck and
#           racecheck over dev/sanitize_w8a8.py, which stopped on its own bound in session 23)
#   call 2: bash dev/session24.sh inductorpdl gptqprobe (~9 min: Inductor's kernels with PDL in the W4A16 decode;
#           where GPTQ's arithmetic goes per linear, whole and half the rows)
#   call 3: TABLE_TIMEOUT=420 bash dev/session24.sh wotable (issue 19's whole weight-only table with the anchors)
#   if time is left: E2E_TIMEOUT=330 bash dev/session24.sh e2eblock (8B fp8-block end to end, last in session 14)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# tiles     libqtool_sm90 configs 6 (skinny-pair: 64 x 128 tiles in 2-CTA clusters along m, the weight tile
#           multicast) and 7 (thin: 64 x 32 tiles): their GPU tests, then the W8A8 sweep at 32-512 tokens beside every
#           configuration, the winners merged into kernels/tuning.py on the device ($OUT/tuning.py; here:
#           python3 dev/w8a8_sweep.py --emit <tiles.json> --merge)
# sanitize  compute-sanitizer memcheck and racecheck over dev/sanitize_w8a8.py (act_quant and its int8x2 planes,
#           w8_gemv, every sm90 configuration)
# inductorpdl  the 8B W4A16 decode steps with Inductor's Triton kernels launched with PDL (TORCHINDUCTOR_ENABLE_PDL=1)
#           against without, one process each (dev/decode_profile.py: tokens/s and one step's kernels, no prefill)
# gptqprobe dev/gptq_probe.py: the Cholesky chain, the column loop and the lazy updates of one GPTQ linear per 8B
#           block shape, for all rows and half of them (a rank's share on two GPUs: issue 20's 1.41-1.58x per block),
#           and the column kernel's launch shapes (rows per program, warps)
# wotable   issue 19's table: every weight-only format, shape and M, with tinygemm beside it
# e2epdl    the 8B decode steps of w4a16, w8a8-int8 and fp8 against one bf16 baseline, all compiled as qtool bench
#           now compiles them (Inductor's kernels with PDL)
# e2eattn   the same with qtool's decode attention (quantize/attention.py) on the quantized models, and w8_gemv's PDL
#           twin on every 8-bit layer to 8 tokens against session 19's rule (tuning.GEMV_PDL)
# pdltests  GPU tests of the decode with Inductor PDL, and of libqtool_sm90 without config 7 (removed after call 1)
# e2eblock  8B fp8-block end to end
cd "$(dirname "$0")/.."
LOG=session24.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

tiles() {
  step "libqtool_sm90 configs 6 and 7: tests, then W8A8 at 32-512 tokens beside every configuration"
  timeout -k 15 200 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py -k "sm90" --tb=short > "$OUT/tiles_tests.txt" 2>&1
  summarize "$OUT/tiles_tests.txt"
  timeout -k 15 "${TILES_TIMEOUT:-240}" python3 dev/w8a8_sweep.py --kinds fp8,int8 --tokens 32,64,128,256,512 \
    --shapes 4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,8192x28672 \
    --budget "${TILES_BUDGET:-200}" --json "$OUT/tiles.json" 2>&1 | grep -E "M=|budget|Error" | tail -70
  python3 dev/w8a8_sweep.py --emit "$OUT/tiles.json" --merge > /dev/null 2>&1 && cp kernels/tuning.py "$OUT/tuning.py"
}
sanitize() {
  for tool in ${SAN_TOOLS:-memcheck racecheck}; do
    step "compute-sanitizer $tool"
    timeout -k 10 "${SAN_TIMEOUT:-150}" compute-sanitizer --tool $tool --error-exitcode 3 python3 dev/sanitize_w8a8.py 2>&1 | tail -4
  done
}
inductorpdl() {
  python3 -c "import torch._inductor.config as c; print('inductor enable_pdl:', hasattr(c.triton, 'enable_pdl'))"
  for pdl in 0 1; do
    step "8B w4a16 decode steps, TORCHINDUCTOR_ENABLE_PDL=$pdl: tokens/s and the kernels of one step"
    TORCHINDUCTOR_ENABLE_PDL=$pdl timeout -k 15 "${IP_TIMEOUT:-150}" python3 dev/decode_profile.py --scheme w4a16 \
      --json "$OUT/decode_profile_pdl$pdl.json" > "/tmp/dprof$pdl.txt" 2>&1
    echo "exit $?"; grep -vE "Warning|warn" "/tmp/dprof$pdl.txt" | tail -32
  done
}
gptqprobe() {
  step "GPTQ's arithmetic per linear"
  timeout -k 15 "${GP_TIMEOUT:-200}" python3 dev/gptq_probe.py --json "$OUT/gptq_probe.json" 2>&1 | tail -16
}
e2epdl() {
  step "8B decode steps, Inductor's kernels with PDL (bench.decode_compile_options), bf16 once, then each scheme"
  timeout -k 15 "${EP_TIMEOUT:-420}" python3 dev/prefetch_sweep.py --schemes "${EP_SCHEMES:-w4a16,w8a8-int8,fp8}" --mb 0 \
    --budget "${EP_BUDGET:-300}" --json "$OUT/e2e_pdl.jsonl" > /tmp/e2epdl.txt 2>&1
  echo "exit $?"; grep -E "^\{|Error|error" /tmp/e2epdl.txt | tail -8
}
e2eattn() {
  step "8B decode steps: Inductor PDL, decode attention on the quantized models; w8_gemv's PDL twin by rule and everywhere"
  timeout -k 15 "${EA_TIMEOUT:-440}" python3 dev/prefetch_sweep.py --schemes "${EA_SCHEMES:-w4a16,w8a8-int8,fp8}" --mb 0 \
    --gemv-pdl "${EA_GEMV_PDL:-rule,all}" --budget "${EA_BUDGET:-330}" --json "$OUT/e2e_attn.jsonl" > /tmp/e2eattn.txt 2>&1
  echo "exit $?"; grep -E "^\{|Error|error" /tmp/e2eattn.txt | tail -8
}
pdltests() {
  step "GPU tests: decode with Inductor PDL equals without; libqtool_sm90 without config 7"
  timeout -k 15 "${PT_TIMEOUT:-150}" python3 -m pytest -q -m gpu tests/test_fusion.py tests/test_w8a8_gpu.py tests/test_attention.py \
    -k "${PT_FILTER:-inductor_pdl or cuda_graphs or sm90}" --tb=short > "$OUT/pdl_tests.txt" 2>&1
  summarize "$OUT/pdl_tests.txt"
}
e2eblock() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-330} bench8b "" "fp8-block" 1,16 2048 8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tiles sanitize)
for s in "${stages[@]}"; do "$s"; done
step "done"
