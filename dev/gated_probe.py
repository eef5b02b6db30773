"""A gated MLP's three kernels against two, at one token (session 32's gated x, qtool_kernels/mlp.py GATED_X): the
W4 g128 gate/up GEMV, then either silu_mul's PDL twin and the down GEMV (the default) or the down GEMV staging
silu(gate) * up itself (wo_gemv variant + 32). Each layer pair rotates over copies past the L2, as a decode step's
blocks do; CUDA-graph replay of 20 MLPs, median, microseconds per MLP. Alternates the two paths `--rounds` times.

    python3 dev/gated_probe.py --shapes 4096x14336 --rounds 3 [--json out.json]     (8B: hidden 4096, inner 14336)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, graph_ms, packed_copies  # noqa: E402

from qtool_kernels import build, mlp  # noqa: E402
from qtool_kernels.layout import EPILOGUE  # noqa: E402
from qtool_kernels.weight_only import gemv_variant  # noqa: E402


def time_shape(hidden: int, inner: int, rounds: int) -> dict:
    ops = build.load_extension()
    ups, downs = packed_copies(4, 128, hidden, 2 * inner), packed_copies(4, 128, inner, hidden)
    count = min(len(ups), len(downs))
    pairs = Rotation(list(zip(ups[:count], downs[:count], strict=True)))
    x = torch.randn(1, hidden, device="cuda", dtype=torch.bfloat16)

    def gemv(inp, w, gated=False):
        return ops.wo_gemv(inp, w.qweight, w.scale, w.zero, None, 4, w.group_size, w.out_features, EPILOGUE, None,
                           gemv_variant(w) + (mlp.GATED_X_FLAG if gated else 0))

    def three():
        up, down = pairs()
        return gemv(ops.silu_mul(gemv(x, up), 1), down)

    def two():
        up, down = pairs()
        return gemv(gemv(x, up), down, gated=True)

    up, down = ups[0], downs[0]
    assert torch.equal(gemv(gemv(x, up), down, gated=True), gemv(ops.silu_mul(gemv(x, up), 1), down))
    times = {"three_kernels": [], "gated": []}
    for _ in range(rounds):
        times["three_kernels"].append(graph_ms(three, reps=count) * 1e3)
        times["gated"].append(graph_ms(two, reps=count) * 1e3)
    return {"hidden": hidden, "inner": inner, "copies": count, **{k: [round(t, 2) for t in v] for k, v in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="4096x14336,8192x28672", help="hidden x inner, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for shape in args.shapes.split(","):
        hidden, inner = (int(v) for v in shape.split("x"))
        row = time_shape(hidden, inner, args.rounds)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
