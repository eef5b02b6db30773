#!/usr/bin/env bash
# Issue 17's last goal in ONE device call: qtool GPTQ against llm-compressor 0.14 GPTQ on the same
# Llama-3-8B-shaped model (random bf16 weights, $LAYERS blocks), same 128 x 2048 tokens, same machine,
# each run recorded by dev/measure_run.py (wall, per-block time, peak host RSS, peak GPU memory).
#
#   carry [".gpu/whl", ".gpu/lcwhl"]: bash dev/llmc_session.sh      (.gpu/ is made by dev/gpu_payload.sh)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/measure_out}
WORK=${WORK:-/tmp/big}
LOG=llmc_session.log
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl \
  .gpu/lcwhl/*.whl || exit
export PYTHONPATH=/tmp/site
source dev/measure_lib.sh  # step, run, data, quant, versions
versions
data
LAYERS=${LAYERS:-4}
step "build the Llama-3-8B-shaped model with $LAYERS blocks (bf16)"
run timeout 90 "$PY" scripts/make_random_model.py llama-8b "$WORK/m8b" --layers "$LAYERS" --text "$DATA"
quant "gptq-8b-${LAYERS}l" "$WORK/m8b" "${GPTQ_TIMEOUT:-90}" --method gptq --bits 4 --group-size 128 --dataset "$DATA" "${CAL[@]}"
step "llm-compressor GPTQ W4A16 g128 on the same model"
run "$PY" dev/measure_run.py --name "llmc-gptq-8b-${LAYERS}l" --json "$OUT/llmc-gptq-8b-${LAYERS}l.json" \
  --timeout "${LLMC_TIMEOUT:-150}" -- "$PY" benchmarks/llmcompressor_speed.py --model "$WORK/m8b" \
  --samples "${SAMPLES:-128}" --seq-len "${SEQ:-2048}" --json "$OUT/llmc-oneshot.json" 2>&1 | grep -v "^\s*$" | tail -25
step "done"; cat "$OUT"/*.json
