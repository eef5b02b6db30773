"""Where a quantization method spends its time: cProfile of one `quantize_model` run on a model with
random weights and random calibration tokens (no download, no dataset), e.g. on the H100:

    python3 benchmarks/profile_method.py --method gptq --config smollm2-135m --device cuda --json $OUT/prof-gptq.json

On a GPU, GPTQ's column loop is bound by the host issuing small kernels, so host-side time per
function is the useful view; time spent waiting on the GPU shows up in the functions that synchronize.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

import torch

from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import preset
from quantize.shapes import random_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="gptq")
    parser.add_argument("--scheme", default="w4a16", help="a preset name (scheme.PRESETS)")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--config", default="smollm2-135m", help="a bench config name, model dir or config.json")
    parser.add_argument("--layers", type=int, default=None, help="keep only the first N decoder blocks")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    model = random_model(args.config, dtype=torch.float32, device="cpu")
    if args.layers is not None:
        model.model.layers = model.model.layers[: args.layers]
        model.config.num_hidden_layers = args.layers
    scheme = preset(args.scheme)
    if scheme.weights.group_size is not None and args.group_size:
        scheme = scheme.with_weights(group_size=args.group_size)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    batches = [torch.randint(0, vocab, (args.batch_size, args.seq_len), generator=gen)
               for _ in range(args.samples // args.batch_size)]

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    result = quantize_model(model, Recipe.single(scheme, args.method), calibration=batches, device=args.device,
                            progress=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    profiler.disable()
    seconds = time.perf_counter() - start

    stats = pstats.Stats(profiler)
    rows = []
    for (file, line, name), (calls, _, tottime, cumtime, _) in stats.stats.items():
        rows.append({"function": f"{Path(file).name}:{line}({name})", "calls": calls, "tottime_s": tottime,
                     "cumtime_s": cumtime})
    rows.sort(key=lambda r: -r["tottime_s"])
    print(f"{args.method} {args.scheme} g{args.group_size} on {args.config} ({args.device}): {seconds:.1f} s "
          f"(report.seconds {result.report.seconds:.1f})")
    for r in rows[: args.top]:
        print(f"{r['tottime_s']:9.2f} s {r['cumtime_s']:9.2f} s {r['calls']:9d}  {r['function']}")
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "args": vars(args) | {"json": str(args.json)},
                                         "top": rows[: args.top]}, indent=2))


if __name__ == "__main__":
    main()
