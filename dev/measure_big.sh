#!/usr/bin/env bash
# Big-model measurements for issue 17 in ONE device call (H200, <= 9 minutes): random-weight bf16 models
# written one block at a time (scripts/make_random_model.py), quantized with lazy loading and streaming
# writes, each run recorded by dev/measure_run.py (wall time, per-block time, peak host RSS, peak GPU
# memory) into $OUT/*.json, and the checkpoint sizes into $OUT/sizes.txt.
#
#   bash dev/measure_big.sh                    # all stages
#   bash dev/measure_big.sh build8 rtn8 gptq8  # some of them: build8 rtn8 gptq8 awq8 build70 gptq70
#   COMPUTE=float32 bash dev/measure_big.sh build8 gptq8   # blocks in float32 (default here: bfloat16)
#   DEVICE=cpu CONFIG8=tiny CONFIG70=tiny SAMPLES=4 SEQ=64 GROUP=32 bash dev/measure_big.sh   # a smoke test on a CPU
#
# Needs nothing beyond the checkout and the machine's torch/transformers/accelerate/safetensors
# (no `datasets`, no internet): calibration text is $DATA if it exists (WikiText-2 validation, e.g.
# carried shared/data/wikitext-2/wiki.valid.tokens), else a generated text file. Models go to $WORK
# (default /tmp/big; ~15 GB for 8B, ~11 GB for the 4-block 70B shape, plus the checkpoints).
# Every stage has its own time limit (150 + 75 + 160 + 80 + 75 s = 9 minutes at most); a stage that fails
# or times out is logged and the next runs, and a quantization cut short still records the time of each
# block it finished (block_s in its JSON). With more time, raise GPTQ8_TIMEOUT/GPTQ70_TIMEOUT, or split:
#   call 1: bash dev/measure_big.sh build8 rtn8 gptq8      call 2: LAYERS70=8 bash dev/measure_big.sh build70 gptq70
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/measure_out}
WORK=${WORK:-/tmp/big}
LOG=measure_big.log
source dev/measure_lib.sh  # step, run, data, quant, versions

build8() {
  step "build the Llama-3-8B-shaped model (32 blocks, bf16)"
  [ -f "$WORK/m8b/config.json" ] || run timeout 150 "$PY" scripts/make_random_model.py "${CONFIG8:-llama-8b}" "$WORK/m8b" --text "$DATA"
  du -sm "$WORK/m8b" | tee -a "$OUT/sizes.txt"
}
rtn8() { quant rtn-8b "$WORK/m8b" 75 --method rtn --bits 4 --group-size "${GROUP:-128}"; }
gptq8() { quant "gptq-8b-${COMPUTE:-bfloat16}" "$WORK/m8b" "${GPTQ8_TIMEOUT:-160}" --method gptq --bits 4 --group-size "${GROUP:-128}" --dataset "$DATA" "${CAL[@]}"; }
awq8() { quant "awq-8b-${COMPUTE:-bfloat16}" "$WORK/m8b" "${AWQ8_TIMEOUT:-160}" --method awq --bits 4 --group-size "${GROUP:-128}" --dataset "$DATA" "${CAL[@]}"; }

build70() {
  rm -rf "$WORK/m8b"  # disk
  step "build the Llama-3-70B-shaped model with ${LAYERS70:-4} blocks (bf16)"
  [ -f "$WORK/m70b/config.json" ] || run timeout 80 "$PY" scripts/make_random_model.py "${CONFIG70:-llama-70b}" "$WORK/m70b" \
      --layers "${LAYERS70:-4}" --text "$DATA"
  du -sm "$WORK/m70b" | tee -a "$OUT/sizes.txt"
}
gptq70() { quant "gptq-70b-${LAYERS70:-4}l" "$WORK/m70b" "${GPTQ70_TIMEOUT:-75}" --method gptq --bits 4 --group-size "${GROUP:-128}" --dataset "$DATA" "${CAL[@]}"; }

versions
data
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build8 rtn8 gptq8 build70 gptq70)
for s in "${stages[@]}"; do "$s"; done
step "done"; cat "$OUT"/*.json 2>/dev/null | "$PY" -c "import sys; print(sys.stdin.read()[-4000:])"
