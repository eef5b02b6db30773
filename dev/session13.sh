#!/usr/bin/env bash
# The next session's device calls, prepared at the end of session 12 (nvidia-h200, carry [".gpu/w8a8"], prebuilt
# with bash dev/prebuild_sm90.sh; re-run it first if kernels/csrc/sm90 changed):
#   call 1: bash dev/session13.sh tests clusterbisect gemvsweep blocksweep          (~8 min)
#   then: python3 dev/w8a8_sweep.py --emit <sweep JSONs>, merged cell by cell into kernels/tuning.py W8A8 (these
#   sweeps cover 1-16 tokens only: keep the rows' other cells), and
#   call 2: bash dev/session13.sh w8table e2eall                                     (~9 min)
#   call 3: bash dev/session13.sh e2enofuse (the same without any fusion: what the quantized layers alone give)
# session 13, call 2 (after the ring in w8_gemv): bash dev/session13.sh gemvtests clusterprobe gemvsweep w8table
# session 13, call 3 (ring reverted; prefetch, 16-warp blocks): bash dev/session13.sh gemvtests gemvab clusterprobe2 e2eall
#   nvidia-h200-x2 (issue 20): bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 summary
# tests         every GPU test; new: w8_gemv's code conversion without conversion instructions (session 12, never
#               run), checked exactly over every int8 / E4M3 / E5M2 code;
# clusterbisect the mixed GEMM's 2-CTA cluster launches fail after the fp8-block layer tests ran in the same
#               process (session 12): the first cluster launch after each fp8-block path (dev/stream_probe.py),
#               then which of those tests; run_gemm now names a CUDA error pending before a launch;
# gemvsweep     W8A8 at 1-16 tokens (w8_gemv's new decode against the GEMMs) for fp8, int8, fp8-block;
# blocksweep    fp8-block at every M (session 12 skipped 2 and 4) with block_mm's config 3, "block-swap" (weights as
#               the 128-row side, 64-token tiles, split-K; written after session 12's last call, never run);
# w8table       the W8A8 protocol table; e2eall the 8B end to end for w4a16, fp8, w8a8-int8, fp8-block: new since
#               session 12's figures, --fuse (the default) also runs the quantized model's RMSNorms as F.rms_norm
#               (quantize/norms.py) and its gated MLPs with one SiLU-and-multiply kernel (quantize/mlp.py,
#               csrc/silu_mul.cu), aimed at the eager prefill's non-GEMM time; compare with session 12's rows.
cd "$(dirname "$0")/.."
LOG=session13.log
source dev/gpu_setup.sh

TESTS=(tests/test_w8a8_gpu.py tests/test_mixed_gpu.py tests/test_kernels_gpu.py tests/test_lowbit_gpu.py
       tests/test_mlp.py tests/test_fusion.py)

tests() {
  step "GPU tests"
  timeout 240 python3 -m pytest -q -m gpu "${TESTS[@]}" --tb=short -rf > "$OUT/tests.txt" 2>&1
  grep -E "^(FAILED|ERROR)" "$OUT/tests.txt" | sed -E 's/\[.*//' | sort | uniq -c
  grep -E "^E " "$OUT/tests.txt" | sort | uniq -c | sort -rn | head -12
  tail -1 "$OUT/tests.txt"
}

clusterbisect() {
  step "the first cluster GEMM of a process after each fp8-block path (session 12 ran one first: no failure)"
  for before in none gemv block cublas layers; do
    timeout 60 python3 dev/stream_probe.py --before "$before" 2>&1 | grep -E "cluster GEMM|Error" | head -3
  done
  step "which fp8-block layer test breaks the cluster launches"
  for sel in "match_reference and fp8-block and 4096" "match_reference and fp8-block and 576" \
             "match_reference and fp8-block and 2048" "match_reference and fp8 and not block"; do
    echo "-k '($sel) or clusters':"
    timeout 60 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py tests/test_mixed_gpu.py \
      -k "($sel) or clusters" 2>&1 | tail -1
  done
}

clusterprobe() {  # call 2: which part of a per-channel fp8 layer breaks the cluster launches
  step "the first cluster GEMM of a process after each part of a W8A8 layer"
  for before in actq rowwise sm90-skinny sm90-narrow sm90-split sm90-large gemv layers; do
    timeout 60 python3 dev/stream_probe.py --before "$before" 2>&1 | grep -E "cluster GEMM|Error" | head -3
  done
}

clusterprobe2() {  # call 3: the sm90 configurations with the library loaded, and the layers one m / K at a time
  step "the first cluster GEMM of a process after each sm90 configuration, one layer m, big block GEMMs"
  for before in sm90-skinny sm90-narrow sm90-split sm90-large; do
    timeout 60 python3 dev/stream_probe.py --before "$before" 2>&1 | grep -E "first cluster GEMM|Error" | head -2
  done
  for m in 1 16 17 300 2048; do
    echo "layers m=$m:"; timeout 60 python3 dev/stream_probe.py --before layers --m $m 2>&1 | grep -E "first cluster|Error" | head -2
  done
  echo "layers k=576:"; timeout 60 python3 dev/stream_probe.py --before layers --k 576 2>&1 | grep -E "first cluster|Error" | head -2
  for before in block cublas; do
    echo "$before m=6144:"; timeout 60 python3 dev/stream_probe.py --before $before --m 6144 2>&1 | grep -E "first cluster|Error" | head -2
  done
}

gemvab() {  # call 3: w8_gemv with / without the L2 prefetch and the 16-warp blocks (QTOOL_W8_GEMV), one build
  step "w8_gemv A/B: QTOOL_W8_GEMV=0 (both), 1 (no prefetch), 3 (session 12's kernel)"
  timeout 240 python3 dev/gemv_probe.py --switches 0,1,3 --tokens 1,8,16 --json "$OUT/gemv_ab.json" 2>&1 | tail -60
}

gemvtests() {  # call 2: w8_gemv's ring (session 13) against the reference, every format, ragged, blocked
  step "w8_gemv tests"
  timeout 200 python3 -m pytest -q -m gpu tests/test_w8a8_gpu.py --tb=short -rf > "$OUT/gemv_tests.txt" 2>&1
  grep -E "^(FAILED|ERROR)" "$OUT/gemv_tests.txt" | sed -E 's/\[.*//' | sort | uniq -c
  grep -E "^E " "$OUT/gemv_tests.txt" | sort | uniq -c | sort -rn | head -8
  tail -1 "$OUT/gemv_tests.txt"
}

gemvsweep() {
  step "W8A8 at 1-16 tokens: w8_gemv (new decode) vs the GEMMs"
  timeout 150 python3 dev/w8a8_sweep.py --tokens 1,2,4,8,16 --budget 120 --json "$OUT/gemv_sweep.json" 2>&1 | tail -40
  timeout 80 python3 dev/w8a8_sweep.py --kinds fp8-block --tokens 1,2,4,8,16 --budget 60 \
    --json "$OUT/gemv_block_sweep.json" 2>&1 | tail -15
  python3 dev/w8a8_sweep.py --emit "$OUT/gemv_sweep.json" "$OUT/gemv_block_sweep.json"
}

blocksweep() {
  step "fp8-block GEMMs at 1-8192 tokens: cuBLAS, block_mm's configurations (block-swap new), w8_gemv"
  timeout 220 python3 dev/w8a8_sweep.py --kinds fp8-block --tokens 1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192 \
    --budget 180 --json "$OUT/block_sweep.json" 2>&1 | tail -85
  python3 dev/w8a8_sweep.py --emit "$OUT/block_sweep.json"
}

w8table() {
  step "W8A8 protocol table"
  timeout 300 python3 benchmarks/bench_w8a8.py --json "$OUT/w8a8.json" 2>&1 | tail -25
}

e2e() {
  for s in "$@"; do
    step "8B decode / prefill, $s vs bf16"
    timeout 200 python3 -m quantize bench llama-8b --random-weights --scheme "$s" --decode-tokens 32 \
      --batch-sizes 1,16 --prefill-len 2048 --json "$OUT/e2e-$s.json" 2>&1 | tail -14
  done
}
e2eall() { e2e w8a8-int8 fp8 fp8-block w4a16; }
e2ew4() { e2e w4a16; }
e2efp8() { e2e fp8; }

e2enofuse() {  # the quantized layers alone: transformers' modules everywhere else (no q/k/v, gate/up or norm fusion)
  for s in fp8 w4a16; do
    step "8B decode / prefill, $s vs bf16, --no-fuse"
    timeout 200 python3 -m quantize bench llama-8b --random-weights --scheme "$s" --decode-tokens 32 \
      --batch-sizes 1,16 --prefill-len 2048 --no-fuse --json "$OUT/e2e-$s-nofuse.json" 2>&1 | tail -14
  done
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests clusterbisect gemvsweep blocksweep)
for s in "${stages[@]}"; do "$s"; done
step "done"
