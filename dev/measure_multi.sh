#!/usr/bin/env bash
# Several-GPU measurements for issue 20 in ONE device call (nvidia-h200-x2, <= 9 minutes): random-weight
# bf16 models written one block at a time (scripts/make_random_model.py), GPTQ W4 g128 with 128 x 2048
# calibration tokens on 1 GPU and on 2 (`qtool quantize --gpus 2`, torchrun + NCCL), each run recorded by
# dev/measure_run.py (wall time, per-block time, peak host RSS, peak GPU memory) into $OUT/*.json, and the
# speedups into $OUT/summary.json (median block time 1 GPU / 2 GPUs; wall time too when both runs finished).
#
#   bash dev/measure_multi.sh          # build8 gptq8_1 gptq8_2 buildmoe gptqmoe_1 gptqmoe_2 summary
#   bash dev/measure_multi.sh build8 awq8_1 awq8_2 summary       # AWQ (a second call)
#   bash dev/measure_multi.sh build8 gptq8ns_1 gptq8ns_2 summary # GPTQ without true-sequential groups
#   KEEP=1 GPTQ8_1_TIMEOUT=300 GPTQ8_2_TIMEOUT=200 bash dev/measure_multi.sh build8 gptq8_1 gptq8_2 compare8 summary
#       # whole runs, then both checkpoints compared: equal codes (dev/compare_checkpoints.py), perplexity
#   DEVICE=cpu CONFIG8=tiny CONFIGMOE=tiny-moe SAMPLES=8 SEQ=64 GROUP=32 bash dev/measure_multi.sh   # CPU smoke test (gloo)
#
# Needs nothing beyond the checkout and the machine's torch/transformers/accelerate/safetensors (no
# `datasets`, no internet); calibration text as in dev/measure_big.sh. Models go to $WORK (default
# /tmp/multi; ~15 GB for 8B, ~6 GB for the 4-block Qwen3-30B-A3B shape). Every stage has its own time limit
# (120 + 120 + 90 + 45 + 60 + 45 s); a run cut short still records the time of each block it finished
# (block_s), which is what the speedup compares. The Qwen3-MoE shape keeps ${LAYERSMOE:-4} of its 48 blocks.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/measure_out}
WORK=${WORK:-/tmp/multi}
LOG=measure_multi.log
source dev/measure_lib.sh  # step, run, data, quant, versions

build() {  # build DIR CONFIG TIMEOUT [make_random_model options]
  local dir=$1 config=$2 limit=$3; shift 3
  step "build $dir from $config $*"
  [ -f "$dir/config.json" ] || run timeout "$limit" "$PY" scripts/make_random_model.py "$config" "$dir" --text "$DATA" "$@"
  du -sm "$dir" | tee -a "$OUT/sizes.txt"
}
method() {  # method NAME MODEL TIMEOUT PROCESSES METHOD [options]: W4 g128 with calibration, on 1 or more GPUs
  local procs=(); [ "$4" -gt 1 ] && procs=(--gpus "$4")
  local name=$1 model=$2 limit=$3 m=$5; shift 5
  quant "$name" "$model" "$limit" --method "$m" --bits 4 --group-size "${GROUP:-128}" --dataset "$DATA" "${CAL[@]}" \
      "${procs[@]}" "$@"
}

build8() { build "$WORK/m8b" "${CONFIG8:-llama-8b}" "${BUILD8_TIMEOUT:-120}"; }
gptq8_1() { method gptq-8b-1gpu "$WORK/m8b" "${GPTQ8_1_TIMEOUT:-120}" 1 gptq; }
gptq8_2() { method gptq-8b-2gpu "$WORK/m8b" "${GPTQ8_2_TIMEOUT:-90}" 2 gptq; }
# Without true-sequential groups (llm-compressor's GPTQ: every linear's Hessian from one pass over the block):
# a block's four units are independent, so two GPUs run whole column loops side by side.
gptq8ns_1() { method gptq-8b-ns-1gpu "$WORK/m8b" "${GPTQ8_1_TIMEOUT:-120}" 1 gptq --no-true-sequential; }
gptq8ns_2() { method gptq-8b-ns-2gpu "$WORK/m8b" "${GPTQ8_2_TIMEOUT:-90}" 2 gptq --no-true-sequential; }
awq8_1() { method awq-8b-1gpu "$WORK/m8b" "${AWQ8_1_TIMEOUT:-150}" 1 awq; }
awq8_2() { method awq-8b-2gpu "$WORK/m8b" "${AWQ8_2_TIMEOUT:-100}" 2 awq; }
buildmoe() { build "$WORK/mmoe" "${CONFIGMOE:-qwen3-moe-30b-a3b}" "${BUILDMOE_TIMEOUT:-45}" --layers "${LAYERSMOE:-4}"; }
gptqmoe_1() { method gptq-moe-1gpu "$WORK/mmoe" "${GPTQMOE_1_TIMEOUT:-60}" 1 gptq; }
gptqmoe_2() { method gptq-moe-2gpu "$WORK/mmoe" "${GPTQMOE_2_TIMEOUT:-45}" 2 gptq; }

# The 70B shape with ${LAYERS70:-4} blocks: per-block work dominates there, as on a whole 70B model.
build70() { build "$WORK/m70b" "${CONFIG70:-llama-70b}" "${BUILD70_TIMEOUT:-120}" --layers "${LAYERS70:-4}"; }
gptq70_1() { method gptq-70b-1gpu "$WORK/m70b" "${GPTQ70_1_TIMEOUT:-80}" 1 gptq; }
gptq70_2() { method gptq-70b-2gpu "$WORK/m70b" "${GPTQ70_2_TIMEOUT:-60}" 2 gptq; }

compare8() {  # needs KEEP=1 and both 8B GPTQ runs finished
  step "compare the 1-GPU and 2-GPU GPTQ checkpoints"
  run "$PY" dev/compare_checkpoints.py "$WORK/q-gptq-8b-1gpu" "$WORK/q-gptq-8b-2gpu" --device "${DEVICE:-cuda}" \
      --json "$OUT/compare-gptq-8b.json"
  for n in 1gpu 2gpu; do
    run "${QTOOL[@]}" eval "$WORK/q-gptq-8b-$n" --dataset "$DATA" --seq-len "${SEQ:-2048}" --max-windows 8 \
        --device "${DEVICE:-cuda}" --dtype bfloat16 --json "$OUT/eval-gptq-8b-$n.json"
  done
}

summary() {
  step "summary"
  "$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for one in sorted(out.glob("*-1gpu.json")):
    two = out / one.name.replace("-1gpu", "-2gpu")
    if not two.is_file():
        continue
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    if "block_done_at_s" not in a:  # eval-*.json of compare8
        continue
    row = {"blocks_done": [len(a["block_done_at_s"]), len(b["block_done_at_s"])],
           "median_block_s": [a.get("median_block_s"), b.get("median_block_s")],
           "wall_s": [a["wall_s"], b["wall_s"]], "rc": [a["rc"], b["rc"]],
           "gpu_peak_mib": [a["gpu_peak_mib"], b["gpu_peak_mib"]], "rss_peak_gb": [a["rss_peak_gb"], b["rss_peak_gb"]]}
    if a.get("median_block_s") and b.get("median_block_s"):
        row["speedup_median_block"] = round(a["median_block_s"] / b["median_block_s"], 3)
    if a["rc"] == 0 and b["rc"] == 0:
        row["speedup_wall"] = round(a["wall_s"] / b["wall_s"], 3)
    rows[one.name.removesuffix("-1gpu.json")] = row
(out / "summary.json").write_text(json.dumps(rows, indent=2))
print(json.dumps(rows, indent=2))
PY
}

versions
data
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(build8 gptq8_1 gptq8_2 buildmoe gptqmoe_1 gptqmoe_2 summary)
for s in "${stages[@]}"; do "$s"; done
step "done"
