#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 18 (nvidia-h200, carry [".gpu/w8a8"]: the Hopper
# libraries did not change in session 18):
#   call 1: bash dev/session19.sh tests w4rows pdltests w8pdl w1pdl streampdl   (~10 min; session 19 ran tests w4rows
#           w8pdl: the row-major W4 GEMV lost to the dispatcher or won by too little for a third copy of the
#           weight, and was removed after it, so w4rows no longer runs: kernels/NOTES.md session 19)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 summary
# tests     every GPU test with the defaults: the ring GEMV's PDL (default since session 18's last call) has run
#           only the kernel test files so far, not the CUDA-graph decode and transformers tests
# pdltests  the w8_gemv and W1A16 GPU tests with QTOOL_PDL=2 (PDL for w8_gemv and w1_gemv, first tiles' weights in
#           registers or cp.async before griddepcontrol.wait; unmeasured)
# w8pdl     w8_gemv (W8A8 at 1, 8, 16 tokens; issue 18's M <= 16 >= 1.7x) and W8A16 per channel (w8_gemv rows, issue
#           19's W8 one-token 1.75x), QTOOL_PDL=1 (ring GEMV only, the default) vs 2; keep 2 where it wins on most
#           shapes: make it the default for prepared layers (an op flag like wo_gemv's variant + 16), else delete it
# streampdl wo_gemv variant 3 (wo_stream.cu) at 2-8 tokens, QTOOL_PDL=1 vs 2 (its PDL twin, bf16, <= 8 tokens)
# w1pdl     W1A16 at 1-8 tokens, QTOOL_PDL=1 vs 2 (issue 21 closed at 4.04-4.08x; margin)
#           (QTOOL_PDL=2 also launches silu_mul with PDL, so the down projection's GEMV streams during it: e2e with
#           PDLS=2 measures that in the model)
# (w4rows, the row-major W4A16 GEMV's tests and probe, ran in call 1; the kernel was removed after it)
# (zsum, the ring GEMV's ZSUM twins' tests and A/B, ran in call 3: 38 tests failed and it was slower; removed)
# e2e       8B decode w4a16 at batch 1 and 16, prefill 2048, with the ring GEMV's PDL (inside a model the kernel before
#           a GEMV is mostly not ours), issue 19's decode goals (2.5x / 2.0x / 0.97x; session 14: 2.00x / 1.51x / 1.15x)
cd "$(dirname "$0")/.."
LOG=session19.log
source dev/gpu_setup.sh


pdltests() {
  step "w8_gemv and 1-bit GPU tests with QTOOL_PDL=2"
  QTOOL_PDL=2 timeout 200 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_binary_gpu.py \
    tests/test_kernels_gpu.py tests/test_wo_stream_gpu.py tests/test_lowbit_gpu.py --tb=short -rf \
    > "$OUT/pdltests.txt" 2>&1
  summarize "$OUT/pdltests.txt"
}

w8pdl() {
  step "w8_gemv: QTOOL_PDL=1 vs 2"
  timeout 200 python3 dev/gemv_probe.py --env QTOOL_PDL --switches 1,2 --tokens 1,8,16 --json "$OUT/w8pdl.json" 2>&1 \
    | tail -40
  for v in 1 2; do
    QTOOL_PDL=$v timeout 100 python3 benchmarks/bench_kernels.py --formats w8a16-channel --tokens 1,8,16 \
      --json "$OUT/w8a16_pdl$v.json" > /dev/null 2>&1
  done
  python3 dev/ab_table.py "$OUT/w8a16_pdl1.json" "$OUT/w8a16_pdl2.json" --labels "PDL 1","PDL 2"
}

streampdl() {  # wo_gemv variant 3 at 2-8 tokens (W4 at 3-4, W2 / W3 at 2-8: weight_only.gemv_kind)
  step "wo_stream: QTOOL_PDL=1 vs 2"
  for v in 1 2; do
    QTOOL_PDL=$v timeout 120 python3 benchmarks/bench_kernels.py --formats w4a16-g128,w3a16-g128,w2a16-g64 \
      --tokens 2,4,8 --json "$OUT/stream_pdl$v.json" > /dev/null 2>&1
  done
  python3 dev/ab_table.py "$OUT/stream_pdl1.json" "$OUT/stream_pdl2.json" --labels "PDL 1","PDL 2"
}

w1pdl() {
  step "W1A16: QTOOL_PDL=1 vs 2"
  for v in 1 2; do
    QTOOL_PDL=$v timeout 100 python3 benchmarks/bench_kernels.py --formats w1a16 --tokens 1,2,4,8 \
      --shapes 8192x8192,4096x4096,28672x8192 --json "$OUT/w1a16_pdl$v.json" > /dev/null 2>&1
  done
  python3 dev/ab_table.py "$OUT/w1a16_pdl1.json" "$OUT/w1a16_pdl2.json" --labels "PDL 1","PDL 2"
}

e2e() {  # one run (bf16 then w4a16, each compiled: ~4-5 min); PDLS="0 1" for the A/B in two calls
  for v in ${PDLS:-1}; do
    QTOOL_PDL=$v E2E_TIMEOUT=400 bench8b "-pdl$v" "w4a16" 1,16 2048 8
  done
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests pdltests w8pdl w1pdl streampdl)
for s in "${stages[@]}"; do "$s"; done
step "done"
