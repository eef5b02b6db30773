#!/usr/bin/env bash
# The next session's first device call, prepared at the end of session 20 (nvidia-h200, carry [".gpu/w8a8"]; the
# Hopper libraries did not change in session 20, the extension did: act_quant's int8 conversion):
#   bash dev/session21.sh                   (~9 min)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
#     (GPTQ with and without true-sequential groups; without them every rank runs whole linears since session 20)
# tests    every GPU test (the new int8 tie / saturation test of act_quant among them)
# aq       act_quant and the W8A8 layers at 2048 tokens on the fused 8B shapes (session 20: int8 act_quant 2.7 TB/s
#          on 8192 x 8192 where e4m3 ran 3.7; 45 vs 34 us on 2048 x 14336)
# e2e      8B w8a8-int8 and fp8 on one host (session 20: int8 prefill 1.39x in call 1 where session 14 had 1.65x,
#          fp8 1.66x in call 2 on another host; the int8 layers at 2048 tokens run as fast as fp8's), prefill
#          1 x 2048, decode at batch 1 and 16
# prefetch 8B decode at 0 / 4 / 16 / 32 MiB of the next weight pulled into L2 by each GEMV (w8_gemv now prefetches
#          too; session 21), w4a16 and fp8, batch 1 and 16
# narrow   fp8-block's 64 x 64 tile (config 4, block-narrow): GPU tests of every block config, then the sweep on the
#          4096-wide layers at 16-512 tokens (session 20: skinny 0.78x / 0.90x at 64 / 128 tokens on 4096 x 4096)
# e2eblock 8B fp8-block, the same (last measured in session 14); a second call: `bash dev/session21.sh e2eblock`
cd "$(dirname "$0")/.."
LOG=session21.log
source dev/gpu_setup.sh
step "host: $(nproc) cores, $(lscpu | sed -n "s/^Model name: *//p")"

e2e() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "" "${E2E_SCHEMES:-w8a8-int8 fp8}" 1,16 2048 8
}
pftests() {  # the prefetch's own GPU tests (bit-identical outputs, linked chains under CUDA graphs)
  step "prefetch GPU tests"
  timeout -k 15 180 python3 -m pytest -q -m gpu tests/test_kernels_gpu.py tests/test_fusion.py -k "prefetch or fused_decode" \
    --tb=short > "$OUT/pftests.txt" 2>&1
  summarize "$OUT/pftests.txt"
}
prefetch() {  # how much of the next weight each GEMV pulls into L2 (QTOOL_PREFETCH_MB), 8B decode, one process
  step "8B decode by prefetch size"
  timeout -k 15 "${PF_TIMEOUT:-420}" python3 dev/prefetch_sweep.py --schemes "${PF_SCHEMES:-w4a16,fp8}" \
    --mb "${PF_MB:-0,4,16,32}" --budget "${PF_BUDGET:-360}" --json "$OUT/prefetch.jsonl" > /tmp/prefetch.txt 2>&1
  echo "exit $?"; grep -E "^\{|Error|error" /tmp/prefetch.txt | tail -20
}
narrow() {  # the fp8-block narrow tile (64 x 64, scales per 64 rows): its GPU tests, then every block config swept
  step "fp8-block narrow tile: tests and sweep"
  timeout -k 15 150 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py -k "block" --tb=short > "$OUT/narrowtests.txt" 2>&1
  summarize "$OUT/narrowtests.txt"
  timeout -k 10 200 python3 dev/w8a8_sweep.py --kinds fp8-block --shapes 4096x4096,4096x6144,14336x4096,4096x14336 \
    --tokens 16,32,64,128,256,512 --budget 170 --json "$OUT/narrow.json" 2>&1 | grep -v "^$" | tail -40
}
e2eblock() {
  E2E_TIMEOUT=${E2E_TIMEOUT:-200} bench8b "" "fp8-block" 1,16 2048 8
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests aq e2e)
for s in "${stages[@]}"; do "$s"; done
step "done"
