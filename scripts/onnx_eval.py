"""Run a model written by `qtool export --format onnx` with onnxruntime and numpy only (no torch, no qtool).

    python scripts/onnx_eval.py OUT --ids ids.npy --logits logits.npy   # logits of int64 token ids [B, T]
    python scripts/onnx_eval.py OUT --windows windows.npy               # perplexity over windows [W, L]

Perplexity follows qtool eval's protocol (quantize/evaluate.py): each window is one forward pass and
predicts its L-1 next tokens; exp of the mean negative log-likelihood, float64 sums. Prints one JSON
line, which says that qtool was not imported (the tests check it).

onnxruntime rewrites DequantizeLinear + MatMul into MatMulNBits with int8 activations by default
(session option session.qdq_matmulnbits_accuracy_level = 4); this script sets 0, so every layer
computes with float32 activations as qtool does. --accuracy-level 4 measures the faster setting.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(model_dir: Path, accuracy_level: int, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    if threads > 0:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])


def window_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Summed next-token negative log-likelihood of one window: logits [L, V], ids [L]."""
    z = logits[:-1].astype(np.float64)
    z -= z.max(-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(-1))
    return float((log_norm - z[np.arange(len(ids) - 1), ids[1:]]).sum())


def perplexity(sess: ort.InferenceSession, windows: np.ndarray) -> dict:
    total = 0.0
    for window in windows:
        logits = sess.run(["logits"], {"input_ids": window[None].astype(np.int64)})[0][0]
        total += window_nll(logits, window)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    return {"perplexity": math.exp(total / tokens), "nll": total / tokens, "num_tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="the folder `qtool export --format onnx` wrote")
    parser.add_argument("--ids", type=Path, help="int64 token ids [B, T] (.npy); writes --logits")
    parser.add_argument("--logits", type=Path, help="where to write the logits [B, T, V] (.npy)")
    parser.add_argument("--windows", type=Path, help="int64 windows [W, L] (.npy); prints the perplexity")
    parser.add_argument("--accuracy-level", type=int, default=0, choices=(0, 1, 2, 3, 4))
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    args = parser.parse_args()
    if (args.ids is None) == (args.windows is None) or (args.ids is not None and args.logits is None):
        parser.error("give --ids with --logits, or --windows")
    sess = session(args.model_dir, args.accuracy_level, args.threads)
    start = time.perf_counter()
    if args.ids is not None:
        np.save(args.logits, sess.run(["logits"], {"input_ids": np.load(args.ids).astype(np.int64)})[0])
        result = {}
    else:
        result = perplexity(sess, np.load(args.windows))
    result.update(seconds=round(time.perf_counter() - start, 2), imported_qtool="quantize" in sys.modules)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
