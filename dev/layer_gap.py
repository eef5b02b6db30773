"""Why a weight-only layer can run slower than its own Hopper schedule timed alone (session 48, H200: W4 4096 x 4096
at 4096 tokens, the layer 204.7 us where the mixed GEMM's default schedule took 189.6 us; session 55, H100: W4
28672 x 8192 at 256 tokens 194.2 us against 155.6 us). For each cell, alternated over rounds in one process (graph
replay, weights rotated past the L2, as benchmarks/bench_kernels.py): bf16 F.linear, the layer (packed_linear), the
mixed GEMM with the layer's measured route, with the default schedule, and a few other schedules. Prints median us
per variant and its speedup over bf16; --json keeps every round.

    python3 dev/layer_gap.py [--cells w4:4096x4096:4096,w8:28672x8192:256,...] [--rounds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

DEFAULT_CELLS = ("w4:4096x4096:4096,w4:28672x8192:256,w4:8192x8192:256,w4:4096x4096:256,w4:8192x28672:256,"
                 "w8:28672x8192:256,w8:4096x4096:4096,w8:4096x4096:128")
OTHERS = {"t128": {"token_tile": 128}, "streamk": {"split": -1}, "cluster": {"variant": 2}, "nosplit": {"split": 1}}


def variants(k: int, n: int, m: int, bits: int, packed, dense, kernels) -> tuple:
    """(the layer's route, name -> a call of that variant); each call reads the next rotated copy."""
    import torch
    import torch.nn.functional as F
    from bench_kernels import packed_linear

    from qtool_kernels import mixed_mm, tuning

    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    route = tuning.mixed_schedule(bits, packed.items[0].k_padded, n, m, packed.items[0].mixed.group)
    calls = {"bf16": lambda: F.linear(x, dense()),
             "layer": lambda: packed_linear(x, packed(), None, kernels),
             "default": lambda: mixed_mm.mixed_linear(x, packed().mixed)}
    if isinstance(route, dict):
        calls["route"] = lambda: mixed_mm.mixed_linear(x, packed().mixed, **route)
    for name, extra in OTHERS.items():
        try:
            mixed_mm.check_schedule(m, packed.items[0].mixed.group, k, 0, extra.get("ktile", 64),
                                    extra.get("variant", 0), extra.get("token_tile", 0))
        except ValueError:
            continue
        calls[name] = lambda extra=extra: mixed_mm.mixed_linear(x, packed().mixed, **extra)
    # the layer again, last: the first one runs right after cuBLAS's bf16 GEMM, whose power draw may leave the
    # clocks lower (a bias of the protocol's order rather than of the layer)
    calls["layer_last"] = calls["layer"]
    return route, calls


def cell_weights(cell: str) -> tuple:
    """"w4:KxN:M" -> (format, K, N, M, bits, bf16 copies, packed copies), each rotated past the L2."""
    import torch
    from bench_kernels import Rotation, copies_for, packed_copies

    fmt, shape, m = cell.split(":")
    k, n, m = *map(int, shape.split("x")), int(m)
    bits, group = (4, 128) if fmt == "w4" else (8, -1)
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    return fmt, k, n, m, bits, dense, Rotation(packed_copies(bits, group, k, n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=DEFAULT_CELLS)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch
    from bench_kernels import graph_ms

    from qtool_kernels import build

    kernels = build.load_extension()
    out = []
    print(f"device: {torch.cuda.get_device_name()}")
    for cell in args.cells.split(","):
        fmt, k, n, m, bits, dense, packed = cell_weights(cell)
        route, calls = variants(k, n, m, bits, packed, dense, kernels)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for r in range(args.rounds):
            names = list(calls) if r % 2 == 0 else list(reversed(calls))  # odd rounds in reverse order
            for name in names:
                call = calls[name]
                ms = graph_ms(call)
                if ms is not None:
                    times[name].append(1e3 * ms)
        med = {name: statistics.median(t) for name, t in times.items() if t}
        line = "  ".join(f"{name} {us:.1f} ({med['bf16'] / us:.2f}x)" for name, us in med.items())
        print(f"{fmt} {k}x{n} M={m} route={route}: {line}", flush=True)
        out.append({"format": fmt, "K": k, "N": n, "M": m, "route": route, "us": times, "median_us": med})
        del dense, packed
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "cells": out}, indent=1))


if __name__ == "__main__":
    main()
