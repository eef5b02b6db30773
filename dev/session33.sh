#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 32 (nvidia-h200, carry [".gpu/w8a8", ".gpu/ext"];
# `bash dev/compile_check.sh` here after any kernel edit, `bash dev/prebuild_ext.sh` after any change under
# kernels/csrc: gpu_setup.sh loads .gpu/ext's library where its stamp matches, else builds, ~50 s).
#   call 1: bash dev/session33.sh gatedtests gatedprobe gatedab   (~7 min)
#           session 32's gated x (the W4 down projection's ring GEMV stages silu(gate) * up itself, so a decode
#           block has four qtool kernels instead of five; qtool_kernels/mlp.py GATED_X, off): its GPU tests with
#           the weight-only GEMV tests (the plain launches gained a template argument), the three-kernel vs
#           two-kernel MLP in a CUDA graph (dev/gated_probe.py), the 8B W4A16 decode with it off / on, alternating.
#   call 2: if it wins: GATED_X on by default (kernels/mlp.py), then bash dev/session33.sh e2e   (~7 min: qtool
#           bench at batch 1 / 16 for the four schemes with this session's defaults: the decode attention kernel
#           and, if on, the gated x; bf16 in each process)
#   call 3: bash dev/session33.sh prefill sanitize   (~6 min: issue 18's prefill 1 x 2048 for the W8A8 schemes,
#           int8 at 1.48x against 1.5x when last measured; compute-sanitizer memcheck / racecheck of the decode
#           attention kernels and the gated launch, which issue 18's "done when" asks of every kernel)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# gatedtests  tests/test_gated_down.py, tests/test_mlp.py and the weight-only GPU tests (test_kernels_gpu, lowbit)
# gatedprobe  dev/gated_probe.py: gate/up + silu_mul + down against gate/up + gated down, 8B and 70B MLP shapes
# gatedab     the 8B W4A16 decode at batch 1, GATED_X 0/1/0/1 in one process (dev/prefetch_sweep.py, silu pdl as
#             qtool bench runs it), then qtool bench with QTOOL_GATED_X=1 (bf16 beside it)
# e2e         qtool bench llama-8b at batch 1 and 16, w8a8-int8 fp8 fp8-block w4a16
# prefill     qtool bench llama-8b --prefill-len 2048 at batch 1, the three W8A8 schemes
# sanitize    compute-sanitizer memcheck and racecheck over dev/attn_probe.py (both variants, small) and
#             dev/gated_probe.py (one round, small shapes)
cd "$(dirname "$0")/.."
LOG=session33.log
source dev/gpu_setup.sh

gatedtests() {
  step "gated x GPU tests, the silu_mul / w8_gemv swiglu tests and the wo_gemv tests"
  gputests gatedtests "${GT_TIMEOUT:-300}" tests/test_gated_down.py tests/test_mlp.py tests/test_kernels_gpu.py \
    tests/test_lowbit_gpu.py
}
gatedprobe() {
  step "gated MLP probe: three kernels against two"
  timeout -k 10 "${GP_TIMEOUT:-150}" python3 dev/gated_probe.py --shapes 4096x14336,8192x28672 --rounds 3 \
    --json "$OUT/gated_probe.json" 2>&1 | tail -4
}
gatedab() {
  step "8B W4A16 decode, batch 1: gated x off / on / off / on (one process), then qtool bench with it on"
  timeout -k 15 "${GA_TIMEOUT:-220}" python3 dev/prefetch_sweep.py --schemes w4a16 --mb 0 --silu pdl \
    --gated-x 0,1,0,1 --batch-sizes 1 --skip-base --json "$OUT/gatedab.jsonl" 2>&1 | grep -E '^\{' | tail -4
  QTOOL_GATED_X=1 E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b gx w4a16 1,16 128 9
}
e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b "" "${E2E_SCHEMES:-w8a8-int8 fp8 fp8-block w4a16}" 1,16 128 9
}
prefill() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-150} bench8b p2k "${PF_SCHEMES:-w8a8-int8 fp8 fp8-block}" 1 2048 4
}
sanitize() {
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool: decode attention (both variants) and the gated launch"
    timeout -k 10 "${SZ_TIMEOUT:-120}" compute-sanitizer --tool "$tool" --print-limit 20 python3 dev/attn_probe.py \
      --batches 1,16 --lengths 161,600 --splits 0 --variants 1,2 > "/tmp/san_attn_$tool.txt" 2>&1
    echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^B=" "/tmp/san_attn_$tool.txt" | tail -6
    timeout -k 10 "${SZ_TIMEOUT:-120}" compute-sanitizer --tool "$tool" --print-limit 20 python3 dev/gated_probe.py \
      --shapes 1024x2048 --rounds 1 > "/tmp/san_gated_$tool.txt" 2>&1
    echo "exit $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|^\{" "/tmp/san_gated_$tool.txt" | tail -3
  done
}

for stage in "$@"; do "$stage"; done
step "done"
