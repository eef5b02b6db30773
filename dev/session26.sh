#!/usr/bin/env bash
# Session 26's device calls (nvidia-h200, carry [".gpu/w8a8"]; the Hopper libraries there match the code:
# `python3 -c 'import quantize; from qtool_kernels import sm90; print([l.path().name for l in sm90.ALL])'`):
#   call 1 (914f766): bash dev/session26.sh wotests woab pdltest   (wo_gemm's deep pipeline and one-kernel split-K:
#           tests, the A/B of its four forms beside bf16 and the dispatcher; session 25's loosened Inductor-PDL test).
#           The forms lost (BENCHMARKS.md, session 26) and were removed; their stages are gone with them.
#   call 2: bash dev/session26.sh ncusrc e2ew4   (per-instruction stall samples of wo_gemm and the routed CUTLASS
#           W4 GEMM on the small layer; 8B w4a16 end to end)
#   call 3: bash dev/session26.sh wotests wosweep ncuwo   (wo_gemm from the profile: group parameters a piece ahead,
#           zero-point pairs once per group, the activation copies' addresses once per block, one barrier per piece)
#   call 4: bash dev/session26.sh tests gemvsmall e2ew4b  (every GPU test after the wo_gemm change; wo_gemm against
#           the GEMVs at 5-8 tokens on the small layers; 8B w4a16 decode with the new wo_gemm routes)
#   call 5: bash dev/session26.sh ncugemv e2ew4c   (the ring GEMV's per-line stalls at one token; 8B w4a16 at batch 16)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# ncusrc    Nsight Compute, full set with per-SASS-line stall samples, of wo_gemm at 16 tokens (4096 x 4096 and
#           4096 x 28672) and the routed CUTLASS W4A16 GEMM at 64 tokens on 4096 x 4096: $OUT/*_details.csv, *_sass.csv
# wotests   wo_gemm's GPU tests and the raw-kernel / QuantLinear tests that route through it
# wosweep   dev/mixed_sweep.py on the 4096-row layers at 8-128 tokens (W4 g128, W8 per channel): wo_gemm beside every
#           Hopper schedule, for tuning.py's routes
# ncuwo     ncu --set full of wo_gemm at 16 tokens on 4096 x 28672 after the change (details and SASS pages)
# ncugemv   the same for the ring GEMV at one token (lean on 4096 x 28672, wide on 14336 x 4096)
# gemvsmall bench_kernels on 4096 x 4096 and 4096 x 6144 at 5-8 tokens (W4 g128, W8 per channel): every kernel column
# e2ew4b    8B w4a16 decode steps at batch 1 and 16 (prefill 128), one process
# pdltest   the Inductor-PDL decode test (bounded by norms since session 25)
# e2ew4     8B w4a16 decode batch 1 / 16 and prefill 1 x 2048 (session 25's run hit its 145 s limit)
# wotable   issue 19's whole weight-only table (gpu_setup.sh)
cd "$(dirname "$0")/.."
LOG=session26.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

ncusrc() {  # where each kernel's warps stall, per SASS line
  ncu_source 4096x4096 "w4 wo_gemm M=16" wo16 'wo_gemm_kernel|GemmUniversal'
  ncu_source 4096x28672 "w4 wo_gemm M=16" wo16w 'wo_gemm_kernel|GemmUniversal'
  ncu_source 4096x4096 "w4 w4_mm routed M=64" mm64 'wo_gemm_kernel|GemmUniversal'
}
ncugemv() {  # the decode GEMVs as the 8B layers launch them: lean on gate/up (4096 x 28672), wide on down (14336 x 4096)
  ncu_source 4096x28672 "w4 wo_gemv v1 M=1" gv1 'wo_gemv_kernel'
  ncu_source 14336x4096 "w4 wo_gemv v2 M=1" gv2 'wo_gemv_kernel'
}
wotests() {
  step "wo_gemm GPU tests"
  timeout -k 15 "${WT_TIMEOUT:-200}" python3 -m pytest -q -m gpu tests/test_wo_gemm_gpu.py tests/test_kernels_gpu.py \
    --tb=short -rf -p no:logging > "$OUT/wotests.txt" 2>&1
  summarize "$OUT/wotests.txt"
}
wosweep() {
  step "mixed sweep on the 4096-row layers, 8-128 tokens"
  timeout -k 15 "${WS_TIMEOUT:-260}" python3 dev/mixed_sweep.py --formats w4a16-g128,w8a16-channel \
    --shapes 4096x4096,4096x6144 --tokens 8,16,17,32,64,128 --budget "${WS_BUDGET:-230}" --json "$OUT/wosweep.json" \
    > /tmp/wosweep.txt 2>&1
  echo "exit $?"; grep -vE "Warning|warn" /tmp/wosweep.txt | tail -30
}
ncuwo() {
  ncu_source 4096x28672 "w4 wo_gemm M=16" wo16n 'wo_gemm_kernel'
}
gemvsmall() {
  step "weight-only small layers at 5-8 tokens, every kernel"
  timeout -k 15 "${GS_TIMEOUT:-150}" python3 benchmarks/bench_kernels.py --formats w4a16-g128,w8a16-channel \
    --shapes 4096x4096,4096x6144 --tokens 5,6,7,8 --json "$OUT/gemvsmall.json" > /tmp/gemvsmall.txt 2>&1
  echo "exit $?"; tail -20 /tmp/gemvsmall.txt
}
e2ew4c() {  # batch 16 only (call 4's e2ew4b ran out of its 200 s)
  E2E_TIMEOUT=${E2E_TIMEOUT:-240} bench8b "-c" "w4a16" 16 128 10
}
e2ew4b() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "-b" "w4a16" 1,16 128 10
}
e2ew4() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-280} bench8b "" "w4a16" 1,16 2048 12
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(ncusrc e2ew4)
for s in "${stages[@]}"; do "$s"; done
step "done"
