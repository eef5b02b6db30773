"""Why the weight-only dispatcher ran 5-20% slower than its own Hopper kernel timed alone at 128-256 tokens.

Session 29's issue-19 table (BENCHMARKS.md) had, in one process, W4 g128 on 28672 x 8192 at 256 tokens:
`packed_linear` (route "k64 t256 v0 s0") 181.1 us, `mixed_linear` with the default schedule (the same tile: token
tile 0 means the batch's own) 157.6 us; W8 on 8192 x 28672 at 256 201.4 vs 171.0. The two columns differ in the
rotated copies (`layer=True` packs as a layer does) and in the call path. This times, in one process and each twice
in alternating order, on the same layer copies: packed_linear, mixed_linear with the measured route, mixed_linear
with the default schedule; and mixed_linear on copies packed without layer=True.

    python3 dev/dispatch_gap.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, copies_for, graph_ms, packed_copies  # noqa: E402

from qtool_kernels import build, mixed_mm  # noqa: E402
from qtool_kernels.weight_only import hopper_route, packed_linear  # noqa: E402

CASES = [(4, 128, 28672, 8192), (8, -1, 8192, 28672), (4, 128, 8192, 28672), (8, -1, 28672, 8192)]


def time_case(bits: int, group: int, k: int, n: int, tokens: list[int], kernels) -> list[dict]:
    """Each path at each token count, twice in alternating order, microseconds."""
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    layer = Rotation(packed_copies(bits, group, k, n, layer=True))
    plain = Rotation(packed_copies(bits, group, k, n))
    rows = []
    for m in tokens:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        route = hopper_route(layer.items[0], m, x.dtype)
        calls = {
            "bf16": lambda x=x: F.linear(x, dense()),
            "packed_linear": lambda x=x: packed_linear(x, layer(), None, kernels),
            "mixed_default": lambda x=x: mixed_mm.mixed_linear(x, layer().mixed),
            "mixed_default_plain_copies": lambda x=x: mixed_mm.mixed_linear(x, plain().mixed),
        }
        if isinstance(route, dict):
            calls["mixed_route"] = lambda x=x, r=route: mixed_mm.mixed_linear(x, layer().mixed, **r, checked=True)
        times = {name: [] for name in calls}
        for _ in range(2):  # alternate, so that clocks or placement drift shows as spread, not as a gap
            for name, call in calls.items():
                t = graph_ms(call)  # None where capture failed
                times[name].append(None if t is None else t * 1e3)
        rows.append({"bits": bits, "group": group, "K": k, "N": n, "M": m, "route": str(route), "us": times})
        print(f"W{bits} {k}x{n} M={m} route {route}: " + ", ".join(
            f"{name} {' / '.join('-' if t is None else f'{t:.1f}' for t in ts)}" for name, ts in times.items()),
            flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="128,256")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kernels = build.load_extension()
    tokens = [int(t) for t in args.tokens.split(",")]
    rows = []
    for bits, group, k, n in CASES:
        rows += time_case(bits, group, k, n, tokens, kernels)
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
