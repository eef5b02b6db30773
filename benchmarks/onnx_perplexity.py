"""Perplexity of a qtool checkpoint in qtool and of its ONNX export in onnxruntime, on the same windows.

    qtool export out/w4a16 --format onnx --output out/w4a16-onnx
    python benchmarks/onnx_perplexity.py out/w4a16 out/w4a16-onnx \
        --dataset ../shared/data/wikitext-2/test.jsonl --seq-len 512 --max-windows 40

The windows are `qtool eval`'s (quantize/data.py); onnxruntime runs in its own process through
scripts/onnx_eval.py, which imports only numpy and onnxruntime, at each of --accuracy-levels: 0
computes as qtool does; 4 (onnxruntime's default) lets it rewrite the QDQ layers (8-bit, 3-bit) into
MatMulNBits with int8 activations (the MatMulNBits nodes qtool writes keep their own accuracy_level 0).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from quantize import data, load_checkpoint
from quantize.evaluate import evaluate

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "onnx_eval.py"


def onnx_perplexity(onnx_dir: Path, windows: np.ndarray, accuracy_level: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "windows.npy", windows)
        done = subprocess.run([sys.executable, str(SCRIPT), str(onnx_dir), "--windows", str(Path(tmp) / "windows.npy"),
                               "--accuracy-level", str(accuracy_level)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("onnx_dir", type=Path)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=40)
    parser.add_argument("--accuracy-levels", default="0", help="comma-separated, e.g. 0,4")
    args = parser.parse_args()
    model, _ = load_checkpoint(args.checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    windows = data.evaluation_windows(tokenizer, data.load_texts(args.dataset), seq_len=args.seq_len,
                                      max_windows=args.max_windows)
    start = time.perf_counter()
    qtool = evaluate(model, windows, progress=False)
    result = {"windows": list(windows.shape), "qtool": {"perplexity": qtool.perplexity,
                                                        "seconds": round(time.perf_counter() - start, 2)}}
    for level in (int(v) for v in args.accuracy_levels.split(",")):
        result[f"onnxruntime_accuracy_level_{level}"] = onnx_perplexity(args.onnx_dir, windows.numpy(), level)
        result[f"relative_difference_level_{level}"] = (
            result[f"onnxruntime_accuracy_level_{level}"]["perplexity"] / qtool.perplexity - 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
