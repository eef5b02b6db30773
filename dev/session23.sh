#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 22 (nvidia-h200, carry [".gpu/w8a8"]; run
# `bash dev/prebuild_sm90.sh` on the development machine first, ~5-10 min, since a new checkout has no .gpu/;
# libqtool_sm90 changed in session 22: config 5, ping-pong):
#   call 1: bash dev/session23.sh w8gemm w4res        (~9 min: w8_gemm's and wo_resident's first GPU runs and sweeps)
#   call 2: bash dev/session23.sh w8a16ab silub aq    (~9 min: W8A16 on w8_gemm vs its routes; the SiLU PDL twin
#           A/B; act_quant)
#   call 3: TABLE_TIMEOUT=420 bash dev/session23.sh w8a8table, or E2E_TIMEOUT=330 bash dev/session23.sh e2eblock
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# w8gemm   w8_gemm (csrc/w8_gemm.cu, session 22, written without a GPU): its GPU tests, then the W8A8 sweep at 17-256
#          tokens with its three variants' columns (staged / resident / resident with L2 prefetches) beside every
#          GEMM, fp8 / int8 / fp8-block; the winners merged into kernels/tuning.py on the device (copied to $OUT/tuning.py: merge it
#          here with `python3 dev/w8a8_sweep.py --emit <w8gemm.json> --merge`)
# w4res    wo_resident (csrc/wo_resident.cu, session 22, unmeasured): its GPU tests, then the W4 g128 sweep at 17-256
#          tokens with its columns (with and without L2 prefetches) beside every mixed-input schedule; winners
#          merged into kernels/tuning.py on the device ($OUT/tuning_mixed.py; here: python3 dev/mixed_sweep.py --emit <w4res.json> --merge)
# w8a16ab  W8A16 per channel at 32-256 tokens with QTOOL_ROWS_GEMM off / each w8_gemm variant (weight_only.py)
# silub    the 8B W4A16 decode with the separate SiLU-and-multiply as our PDL twin (the default since session 22),
#          ours plain, and Inductor's, in one process, without the bf16 model (--skip-base)
# aq       act_quant's bandwidth on 8192 x 8192 and the W8A8 layers at 2048 tokens on the fused 8B shapes
# w8a8table issue 18's table, every (scheme, shape, M) with the anchors in one run
# e2eblock 8B fp8-block end to end (last measured in session 14)
# sanitize compute-sanitizer memcheck and racecheck over dev/sanitize_w8a8.py (w8_gemm, every sm90 configuration)
cd "$(dirname "$0")/.."
LOG=session23.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

w8gemm() {
  step "w8_gemm: tests, then W8A8 at 17-256 tokens beside every GEMM (routes merged into kernels/tuning.py here)"
  timeout -k 15 200 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py -k "w8_gemm" --tb=short -x \
    > "$OUT/w8gemm_tests.txt" 2>&1
  summarize "$OUT/w8gemm_tests.txt"
  timeout -k 15 "${WG_TIMEOUT:-220}" python3 dev/w8a8_sweep.py --kinds fp8,int8,fp8-block --tokens 17,32,64,128,256 \
    --shapes 4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,8192x28672 \
    --budget "${WG_BUDGET:-170}" --json "$OUT/w8gemm.json" 2>&1 | grep -E "M=|budget|Error" | tail -90
  python3 dev/w8a8_sweep.py --emit "$OUT/w8gemm.json" --merge > /dev/null 2>&1 && cp kernels/tuning.py "$OUT/tuning.py"
}
w4res() {
  step "wo_resident: tests, then W4 g128 at 17-256 tokens beside every mixed-input schedule"
  timeout -k 15 200 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py -k "wo_resident" --tb=short -x \
    > "$OUT/w4res_tests.txt" 2>&1
  summarize "$OUT/w4res_tests.txt"
  timeout -k 15 "${W4_TIMEOUT:-220}" python3 dev/mixed_sweep.py --formats w4a16-g128 --tokens 17,32,64,128,256 \
    --shapes 4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,8192x28672 --budget "${W4_BUDGET:-170}" \
    --json "$OUT/w4res.json" 2>&1 | grep -E "M=|budget|Error" | tail -40
  python3 - "$OUT/w4res.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    t = {k: v for k, v in r["kernels"].items() if v}
    best = min(t, key=t.get)
    res = t.get("wo_resident")
    print(f"{r['K']}x{r['N']} M={r['M']}: bf16 {r['bf16'] * 1e3:.1f} us, dispatcher {r['bf16'] / r['auto']:.2f}x, "
          f"wo_resident {r['bf16'] / res if res else 0:.2f}x, best {best} {r['bf16'] / t[best]:.2f}x")
PY
  python3 dev/mixed_sweep.py --emit "$OUT/w4res.json" --merge > /dev/null 2>&1 && cp kernels/tuning.py "$OUT/tuning_mixed.py"
}
w8a16ab() {
  for setting in 0,0 256,0 256,1 256,2; do
    step "W8A16 at 32-256 tokens, QTOOL_ROWS_GEMM=$setting"
    QTOOL_ROWS_GEMM=$setting timeout -k 15 "${AB16_TIMEOUT:-100}" python3 benchmarks/bench_kernels.py \
      --formats w8a16-channel --tokens 32,64,128,256 --shapes 4096x4096,4096x14336,14336x4096,8192x8192 \
      --json "$OUT/w8a16_$setting.json" 2>&1 | tail -12
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
sanitize() {  # issue 18's "compute-sanitizer clean", with w8_gemm and the ping-pong tiles
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool"
    timeout -k 10 "${SAN_TIMEOUT:-200}" compute-sanitizer --tool $tool --error-exitcode 3 python3 dev/sanitize_w8a8.py 2>&1 | tail -4
  done
}
e2eblock() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-330} bench8b "" "fp8-block" 1,16 2048 8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(w8gemm w4res)
for s in "${stages[@]}"; do "$s"; done
step "done"
