#!/usr/bin/env bash
# Quality table on SmolLM2-135M: quantize with each method/scheme, then perplexity, KL and top-1
# agreement against the float model on the WikiText-2 raw test split (512-token windows).
# Calibration: 128 x 512 tokens of the WikiText-2 *validation* split (never the test split).
#   bash benchmarks/smollm2_quality.sh [CONFIG ...]      (WINDOWS=40 by default; all configs if none given)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/wikitext-2}
WINDOWS=${WINDOWS:-40}
DEVICE=${DEVICE:-cpu}
OUT=${OUT_DIR:-runs/quality}
MODEL=${MODEL:-models/smollm2}
mkdir -p "$OUT"
[ -f "$MODEL/config.json" ] || python scripts/prepare_smollm2.py --output "$MODEL"
CALIB=(--dataset "$DATA/wiki.valid.tokens" --num-samples 128 --seq-len 512 --batch-size 8)

declare -A CONFIGS=(
  [rtn-w4g128]="--method rtn --bits 4 --group-size 128"
  [gptq-w4g128]="--method gptq --bits 4 --group-size 128 ${CALIB[*]}"
  [awq-w4g128]="--method awq --bits 4 --group-size 128 ${CALIB[*]}"
  [rtn-w4g64]="--method rtn --bits 4 --group-size 64"
  [gptq-w4g64]="--method gptq --bits 4 --group-size 64 ${CALIB[*]}"
  [awq-w4g64]="--method awq --bits 4 --group-size 64 ${CALIB[*]}"
  [awq-w4g64-duo]="--method awq --bits 4 --group-size 64 --duo-scaling ${CALIB[*]}"
  [rtn-w3g128]="--method rtn --bits 3 --group-size 128"
  [gptq-w3g128]="--method gptq --bits 3 --group-size 128 ${CALIB[*]}"
  [awq-w3g128]="--method awq --bits 3 --group-size 128 ${CALIB[*]}"
  [gptq-w4g128-plain-order]="--method gptq --bits 4 --group-size 128 --no-act-order ${CALIB[*]}"
  [gptq-w4g128-dynamic-actorder]="--method gptq --bits 4 --group-size 128 --dynamic-groups ${CALIB[*]}"
  [gptq-w3g128-plain-order]="--method gptq --bits 3 --group-size 128 --no-act-order ${CALIB[*]}"
  [gptq-w3g128-dynamic-actorder]="--method gptq --bits 3 --group-size 128 --dynamic-groups ${CALIB[*]}"
  [gptq-w4g64-static-actorder]="--method gptq --bits 4 --group-size 64 --act-order --static-groups ${CALIB[*]}"
  [gptq-w4g128-static-actorder]="--method gptq --bits 4 --group-size 128 --act-order --static-groups ${CALIB[*]}"
  [rtn-w8a16]="--method rtn --bits 8"
  [rtn-fp8-weight-only]="--scheme fp8-weight-only"
  [gptq-fp8-weight-only]="--method gptq --scheme fp8-weight-only ${CALIB[*]}"
  [gptq-fp8-block]="--method gptq --scheme fp8-block ${CALIB[*]}"
  [fp8-dynamic]="--method fp8"
  [gptq-fp8-dynamic]="--method gptq --scheme fp8-dynamic ${CALIB[*]}"
  [fp8-block]="--scheme fp8-block"
  [int8-w8a8]="--method int8"
  [smoothquant-w8a8]="--method smoothquant --alpha 0.5 ${CALIB[*]}"
  [smoothquant-auto-w8a8]="--method smoothquant --alpha auto ${CALIB[*]}"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${!CONFIGS[@]}")
for name in "${names[@]}"; do
  args=${CONFIGS[$name]:?unknown config $name}
  start=$(date +%s)
  # shellcheck disable=SC2086
  qtool quantize "$MODEL" $args --device "$DEVICE" --output "$OUT/$name" --overwrite > "$OUT/$name.quantize.log" 2>&1
  echo "{\"seconds\": $(( $(date +%s) - start )), \"args\": \"$args\"}" > "$OUT/$name.time.json"
  qtool eval "$OUT/$name" --base "$MODEL" --dataset "$DATA/test.jsonl" --seq-len 512 --max-windows "$WINDOWS" --batch-size 8 \
    --device "$DEVICE" --json "$OUT/$name.eval.json" > "$OUT/$name.eval.log" 2>&1
  echo "$name done"
done
