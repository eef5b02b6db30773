#!/usr/bin/env bash
# Session 28's device calls (nvidia-h200, carry [".gpu/w8a8"]):
#   calls 1-2: BB_FORMATS=4:128,8:-1,3:128,2:64 BB_TIMEOUT=200 bash dev/session28.sh bulk g2lean sanitize
#           (wo_gemv variant 4 "bulk" against the ring GEMV and its tests, removed since with dev/bulk_ab.py: the
#           stage no longer runs; two-group chunks on the lean / wide launches; compute-sanitizer over the GEMV variants)
#   call 3: bash dev/session28.sh foldtests foldab e2efb   (fp8-block's scales folded into w8_gemv's FP8 decode)
#   call 4: FB_BATCHES=1 E2E_TIMEOUT=240 bash dev/session28.sh foldtests fbsweep e2efb   (the 2^-64 detour fixed,
#           the 9-16-token rule; fp8-block routes at 1-32 tokens; the 8B fp8-block decode at batch 1)
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 gptq8ns_1 gptq8ns_2 summary
# bulk, g2lean  session 27's stages (dev/session27.sh)
# foldtests     the w8_gemv GPU tests (block scales at every m, the 2^-64 detour for huge scales)
# foldab        dev/gemv_probe.py QTOOL_W8_GEMV=0 (folded) vs 128 (before), plain and PDL launches
# fbsweep       dev/w8a8_sweep.py fp8-block at 1-32 tokens (every route, the folded w8_gemv among them)
# e2efb         qtool bench llama-8b --scheme fp8-block, decode at batch 1 and 16
# sanitize      compute-sanitizer memcheck and racecheck over every wo_gemv variant (ring 0/1/2, bulk 4) at 1-8 tokens
cd "$(dirname "$0")/.."
LOG=session28.log
source dev/gpu_setup.sh

bulk() { bash dev/session27.sh bulk; }  # removed: prints a note
g2lean() { bash dev/session27.sh g2lean; }

sanitize() {
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool: wo_gemv variants 0, 1, 2, 4 (bf16, W4 g128 asym, W8 g32 sym)"
    timeout -k 10 "${SAN_TIMEOUT:-120}" compute-sanitizer --tool $tool --print-limit 5 python3 -m pytest -q -x -m gpu \
      tests/test_kernels_gpu.py -k "gemv_both_activation_paths and dtype0" -p no:logging 2>&1 | tail -8
  done
}

foldtests() {
  step "w8_gemv GPU tests"
  timeout -k 10 "${FT_TIMEOUT:-150}" python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py -k "w8_gemv or w8a8_layers" \
    --tb=short -rf -p no:logging > "$OUT/foldtests.txt" 2>&1
  summarize "$OUT/foldtests.txt"
}
foldab() {
  for pdl in 1 2; do
    step "w8_gemv: folded block scales (0) vs before (128), QTOOL_PDL=$pdl"
    QTOOL_PDL=$pdl timeout -k 10 "${FA_TIMEOUT:-170}" python3 dev/gemv_probe.py --switches 0,128 \
      --tokens "$([ $pdl = 1 ] && echo 1,4,8,12,16 || echo 1)" --json "$OUT/foldab_pdl$pdl.json" 2>&1 | grep -E "fp8-block|fp8 8192x8192" | grep -v "^$"
  done
}
fbsweep() {  # fp8-block routes at 1-32 tokens with the folded w8_gemv (kernels/tuning.py's W8A8 table)
  step "fp8-block sweep at 1-32 tokens"
  timeout -k 10 "${FS_TIMEOUT:-170}" python3 dev/w8a8_sweep.py --kinds fp8-block --tokens "${FS_TOKENS:-1,2,4,8,16,17,32}" \
    --shapes "${FS_SHAPES:-4096x4096,4096x6144,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192}" \
    --budget "${FS_BUDGET:-120}" --json "$OUT/fbsweep.json" 2>&1 | grep -E "fp8-block|budget" | sed -E 's/GEMM \+ act_quant: //'
}
e2efb() { E2E_TIMEOUT=${E2E_TIMEOUT:-320} bench8b "" fp8-block ${FB_BATCHES:-1,16} 128 12; }

for stage in "$@"; do "$stage"; done
