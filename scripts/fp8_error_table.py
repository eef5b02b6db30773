"""Seed 003's FP8 error table on real data: mean and max absolute error of E4M3 quantization at
per-tensor, per-channel and block-128 granularity, for a real SmolLM2 weight matrix and the real
activations that feed it (WikiText-2 validation text), plus the error of the layer's output.

    python scripts/fp8_error_table.py --model models/smollm2 --layer model.layers.14.mlp.down_proj --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quantize.data import calibration_batches, load_texts  # noqa: E402
from quantize.primitives import fake_quantize  # noqa: E402
from quantize.quantizer import load_model  # noqa: E402
from quantize.scheme import QuantArgs  # noqa: E402

E4M3 = dict(num_bits=8, type="float", fp_format="e4m3")
WEIGHT_GRANULARITIES = {
    "per-tensor": QuantArgs(**E4M3, strategy="tensor"),
    "per-channel": QuantArgs(**E4M3, strategy="channel"),
    "block 128x128": QuantArgs(**E4M3, strategy="block", block_structure=(128, 128)),
}
ACT_GRANULARITIES = {
    "per-tensor": QuantArgs(**E4M3, strategy="tensor"),
    "per-token": QuantArgs(**E4M3, strategy="token"),
    "group 1x128": QuantArgs(**E4M3, strategy="group", group_size=128),
}


def errors(x: torch.Tensor, args: QuantArgs) -> tuple[float, float, float]:
    """Mean abs error, max abs error, and relative Frobenius error of fake-quantizing x [rows, cols]."""
    d = (fake_quantize(x.double(), args) - x.double()).abs()
    return float(d.mean()), float(d.max()), float(d.norm() / x.double().norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "smollm2"))
    parser.add_argument("--layer", default="model.layers.14.mlp.down_proj")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "wikitext-2")
    parser.add_argument("--tokens", type=int, default=8 * 512)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    layer = model.get_submodule(args.layer)
    calib = calibration_batches(tokenizer, load_texts(str(args.data / "wiki.valid.tokens")),
                                num_samples=args.tokens // 512, seq_len=512, seed=0)
    captured = []
    handle = layer.register_forward_hook(lambda m, inp, out: captured.append(inp[0].reshape(-1, inp[0].shape[-1])))
    with torch.no_grad():
        for batch in calib.batches(4):
            model(batch)
    handle.remove()
    x = torch.cat(captured).double()
    w = layer.weight.detach().double()
    y = x @ w.T

    rows = []
    for name, wargs in WEIGHT_GRANULARITIES.items():
        rows.append(("weight", name, *errors(w, wargs)))
    for name, aargs in ACT_GRANULARITIES.items():
        rows.append(("activation", name, *errors(x, aargs)))
    pairs = [("per-tensor", "per-tensor"), ("per-channel", "per-token"), ("block 128x128", "group 1x128")]
    for wname, aname in pairs:
        yq = fake_quantize(x, ACT_GRANULARITIES[aname]) @ fake_quantize(w, WEIGHT_GRANULARITIES[wname]).T
        d = (yq - y).abs()
        rows.append(("output", f"W {wname} x A {aname}", float(d.mean()), float(d.max()), float(d.norm() / y.norm())))

    table = Table(title=f"E4M3 error on {args.layer} ({tuple(w.shape)}) and {x.shape[0]} real input tokens")
    for col in ("tensor", "granularity", "mean |err|", "max |err|", "rel. Frobenius"):
        table.add_column(col)
    for kind, name, mean, mx, rel in rows:
        table.add_row(kind, name, f"{mean:.3e}", f"{mx:.3e}", f"{rel:.3e}")
    Console().print(table)
    print(f"weight |w| mean {float(w.abs().mean()):.3e} max {float(w.abs().max()):.3e}; "
          f"activation |x| mean {float(x.abs().mean()):.3e} max {float(x.abs().max()):.3e}")
    if args.json:
        args.json.write_text(json.dumps({"layer": args.layer, "shape": list(w.shape), "tokens": x.shape[0],
                                         "rows": [dict(zip(("tensor", "granularity", "mean_abs", "max_abs", "rel_fro"),
                                                           r, strict=True)) for r in rows]}, indent=2))


if __name__ == "__main__":
    main()
