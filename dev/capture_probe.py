"""Does a W8A8 layer's time depend on which CUDA graph captured it? (session 57; session 56's dev/w8a8_gap.py read
fp8-block 4096 x 4096 at 64 tokens 14.7 us in the graph captured right after bf16 and 11.4 us in an identical one
captured last.) Per cell, in one process: bf16, the same layer call captured three times (l1-l3), the route's two
parts with / without PDL (fp8-block), the layer again (l4) and with its own copy of x (lx); all replayed in turn
(benchmarks/replay.py), then replayed a second time without recapture, then a second set captured in reverse order.

    python3 dev/capture_probe.py [--cells fp8-block:4096x4096:64,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

DEFAULT_CELLS = ("fp8-block:4096x4096:64,fp8-block:4096x4096:128,fp8-block:4096x4096:256,fp8-block:8192x8192:256,"
                 "fp8-block:14336x4096:256,fp8-block:4096x14336:256,fp8:4096x4096:64,w8a8-int8:4096x4096:64")


def variants(scheme: str, k: int, n: int, m: int) -> tuple[str | None, dict]:
    """(the layer's route, name -> a call); each call reads the next rotated copy."""
    import torch
    import torch.nn.functional as F
    from bench_w8a8 import copies, qlayers
    from replay import Rotation
    from w8a8_gap import route_parts

    from qtool_kernels import scaled_mm

    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / math.sqrt(k)
    dense = Rotation([w] + [w.clone() for _ in range(copies(2 * n * k) - 1)])
    layers = Rotation(qlayers(scheme, w))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x2 = x.clone()
    calls = {"bf16": lambda: F.linear(x, dense())}
    for name in ("l1", "l2", "l3"):
        calls[name] = lambda: layers()(x)
    route = scaled_mm.w8a8_route(m, n, k, scheme)
    if scheme == "fp8-block":
        calls.update(route_parts(layers, x, route, ("p0", "p1")))
    calls["l4"] = calls["l1"]
    calls["lx"] = lambda: layers()(x2)
    return route, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=DEFAULT_CELLS)
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch
    from replay import capture, replay_graphs

    from qtool_kernels import build

    build.load_extension()

    def replay(graphs: dict) -> dict:  # name -> median us per call
        return {name: 1e3 * ms for name, ms in replay_graphs(graphs, reps=20, replays=12).items()}

    out = []
    print(f"device: {torch.cuda.get_device_name()}")
    for cell in args.cells.split(","):
        scheme, shape, m = cell.split(":")
        (k, n), m = map(int, shape.split("x")), int(m)
        route, calls = variants(scheme, k, n, m)
        graphs = {name: capture(call, 20) for name, call in calls.items()}
        first, again = replay(graphs), replay(graphs)
        rev = {name + "'": capture(calls[name], 20) for name in reversed(list(calls))}
        second = replay(rev)
        for tag, us in (("first", first), ("again", again), ("reversed", second)):
            print(f"{scheme} {k}x{n} M={m} {route} {tag}: " + "  ".join(f"{a} {t:.1f}" for a, t in us.items()),
                  flush=True)
        out.append({"scheme": scheme, "K": k, "N": n, "M": m, "route": route, "first": first, "again": again,
                    "reversed": second})
        del graphs, rev
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "cells": out}, indent=1))


if __name__ == "__main__":
    main()
