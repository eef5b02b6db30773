#!/usr/bin/env bash
# Issue 21 on the H200: `qtool finetune` on SmolLM2-135M with the full recipe (GPTQ init, block-wise
# output MSE, end-to-end KL on the logits; bf16 compute, float32 masters), evaluated with the README's
# WikiText-2 protocol next to GPTQ in the same run. Every stage has a time limit (evaluation included),
# so each of these calls ends within 9 minutes:
#
#   bash dev/measure_qat.sh                      # the W3 goal: model gptq3 qat3 (60 + 145 + 245 s at most)
#   bash dev/measure_qat.sh gptq2 qat2 qat1      # W2 and W1 (145 + 245 + 245 s at most; 465 s measured)
#   STEPS=300 E2E=400 bash dev/measure_qat.sh model qat3   # a longer recipe (default STEPS=200 E2E=200)
#   DEVICE=cpu SAMPLES=4 SEQ=64 STEPS=2 E2E=1 WINDOWS=2 bash dev/measure_qat.sh qat3   # smoke test here
#
# The device machine has torch and transformers but no gguf or datasets and no network, so a call carries
# (prepare once here: bash dev/gpu_payload.sh && split -b 50M .gpu/smollm2.gguf .gpu/smollm2.gguf.part-):
#   .gpu/whl (gguf, datasets wheels), .gpu/data (wiki.valid.tokens, test.jsonl) and SmolLM2's GGUF (98 MB,
#   above one call's 64 MiB carry): call 1 `mkdir -p /tmp/keep && cp .gpu/smollm2.gguf.part-aa /tmp/keep/`
#   with carry [".gpu/smollm2.gguf.part-aa"] (a carried path absent from the next call's carry is removed
#   from the checkout there, so the half waits in /tmp), then while the machine is warm call 2
#   `cp /tmp/keep/smollm2.gguf.part-aa .gpu/ && bash dev/measure_qat.sh` with carry
#   [".gpu/whl", ".gpu/data", ".gpu/smollm2.gguf.part-ab"]. Results: $OUT/measure_qat.log and $OUT/*.eval.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/measure_out}
mkdir -p "$OUT" runs build/pythonpath
ln -sfn ../../kernels build/pythonpath/qtool_kernels  # import the kernels package without installing
if ls .gpu/whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
fi
export PYTHONPATH=$PWD:$PWD/build/pythonpath:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
exec > >(tee -a "$OUT/measure_qat.log") 2>&1
QTOOL=(python3 -c "from quantize.cli import app; app()")
DEVICE=${DEVICE:-cuda}
DATA=${DATA:-.gpu/data}
[ -f "$DATA/wiki.valid.tokens" ] || DATA=../shared/data/wikitext-2
MODEL=${MODEL:-models/smollm2}
# The README's protocol: 128 x 512 training windows of WikiText-2 validation; test: first 40 x 512.
TRAIN=(--dataset "$DATA/wiki.valid.tokens" --num-samples "${SAMPLES:-128}" --seq-len "${SEQ:-512}" --batch-size 4)
RECIPE=(--steps "${STEPS:-200}" --e2e-steps "${E2E:-200}")

step() { echo; echo "=== $* [$(date -u +%H:%M:%S)]"; }

evaluate() {  # evaluate NAME: the README's WikiText-2 protocol, the float model as base
  timeout 45 "${QTOOL[@]}" eval "runs/$1" --base "$MODEL" --dataset "$DATA/test.jsonl" --seq-len 512 \
    --max-windows "${WINDOWS:-40}" --batch-size 8 --device "$DEVICE" --json "$OUT/$1.eval.json" | tail -9
}

timed() {  # timed NAME LIMIT COMMAND...: run with a time limit, print the wall time, then evaluate
  local name=$1 limit=$2; shift 2
  step "$name: $*"
  local t0=$SECONDS
  if timeout "$limit" "$@" --output "runs/$name" --overwrite --device "$DEVICE"; then
    echo "$name: $((SECONDS - t0)) s"
    evaluate "$name"
  else
    echo "FAILED or timed out after $((SECONDS - t0)) s: $name"
  fi
}

model() {
  step "model"
  [ -f "$MODEL/config.json" ] && return
  if [ ! -f .gpu/smollm2.gguf ] && ls .gpu/smollm2.gguf.part-* > /dev/null 2>&1; then
    cat .gpu/smollm2.gguf.part-* > .gpu/smollm2.gguf
  fi
  timeout 60 python3 scripts/prepare_smollm2.py --gguf .gpu/smollm2.gguf --output "$MODEL" 2>&1 | tail -1
}

gptq3() { timed gptq-w3g128-dyn 100 "${QTOOL[@]}" quantize "$MODEL" --method gptq --bits 3 --group-size 128 \
  --dynamic-groups "${TRAIN[@]}"; }
gptq2() { timed gptq-w2g64 100 "${QTOOL[@]}" quantize "$MODEL" --method gptq --bits 2 --group-size 64 "${TRAIN[@]}"; }
qat3() { timed qat-w3g128 200 "${QTOOL[@]}" finetune "$MODEL" --scheme w3a16 --group-size 128 --init gptq \
  --dynamic-groups "${TRAIN[@]}" "${RECIPE[@]}"; }
qat2() { timed qat-w2g64 200 "${QTOOL[@]}" finetune "$MODEL" --scheme w2a16 --group-size 64 --init gptq \
  "${TRAIN[@]}" "${RECIPE[@]}"; }
qat1() { timed qat-w1g64 200 "${QTOOL[@]}" finetune "$MODEL" --scheme w1a16 --group-size 64 --init gptq \
  "${TRAIN[@]}" "${RECIPE[@]}"; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
for stage in "${@:-model gptq3 qat3}"; do
  for s in $stage; do "$s"; done
done
