"""How far two checkpoints of one model agree: the fraction of equal weight codes over all quantized
layers (e.g. the 1-GPU and 2-GPU runs of dev/measure_multi.sh), as JSON.

    python dev/compare_checkpoints.py CHECKPOINT_A CHECKPOINT_B [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from quantize.loading import read_checkpoint
from quantize.primitives import unpack_int


def codes(tensors: dict[str, torch.Tensor], layer: str, bits: int, device: str) -> torch.Tensor:
    if f"{layer}.weight_packed" in tensors:
        k = int(tensors[f"{layer}.weight_shape"][1])
        return unpack_int(tensors[f"{layer}.weight_packed"].to(device), bits, k)
    return tensors[f"{layer}.weight"].to(device).view(torch.uint8)  # 8-bit integer or FP8 codes as bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config_a, tensors_a = read_checkpoint(args.a)
    config_b, tensors_b = read_checkpoint(args.b)
    schemes = config_a.module_schemes()
    if schemes.keys() != config_b.module_schemes().keys():
        raise SystemExit("the checkpoints quantize different layers")
    same = total = 0
    worst = (1.0, "")
    for layer, scheme in schemes.items():
        ca = codes(tensors_a, layer, scheme.weights.num_bits, args.device)
        cb = codes(tensors_b, layer, scheme.weights.num_bits, args.device)
        equal = int((ca == cb).sum())
        same, total = same + equal, total + ca.numel()
        worst = min(worst, (equal / ca.numel(), layer))
    result = {"a": str(args.a), "b": str(args.b), "layers": len(schemes), "codes_equal": same / total,
              "worst_layer": worst[1], "worst_layer_codes_equal": worst[0]}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
