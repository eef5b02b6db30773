"""Why one fp8-block layer reads differently in benchmarks/bench_w8a8.py and dev/w8a8_sweep.py (session 56, H100:
4096 x 4096 at 64 tokens 14.7 us through QuantLinear in the table, 11.6 us through the op in the sweep; at 256
tokens the other way round). For each cell, in one process with every graph replayed in turn (benchmarks/replay.py):
bf16 F.linear; the QuantLinear layer as the table builds it; the op on that layer's weight and scales; the op on
the sweep's weights (random codes and scales); and the layer's route as its two parts, act_quant then the block
GEMM, with and without the PDL launch of the GEMM.

    python3 dev/w8a8_gap.py [--cells 4096x4096:64,4096x4096:256,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

DEFAULT_CELLS = "4096x4096:32,4096x4096:64,4096x4096:128,4096x4096:256,14336x4096:64,8192x8192:64"


def route_parts(layers, x, route: str | None, names: tuple[str, str]) -> dict:
    """An fp8-block route's two parts as scaled_mm._blockwise runs them, act_quant then the block GEMM, launched
    plainly (names[0]) and with PDL (names[1]); empty where the route is not a block GEMM. layers: a Rotation of
    QuantLinear copies; x [m, k]."""
    from qtool_kernels import block_mm, scaled_mm, sm90

    if route not in block_mm.CONFIGS:
        return {}
    config = sm90.without_padded_order(block_mm.CONFIGS[route], x.shape[0], layers.items[0].out_features)

    def parts(pdl: bool):
        layer = layers()
        xq, xs = scaled_mm.quantize_activation_cuda(x, "e4m3", 128, None)
        return block_mm.block_linear(xq, xs, layer.weight, layer.weight_scale, config, pdl=pdl)

    return {names[0]: lambda: parts(False), names[1]: lambda: parts(True)}


def variants(k: int, n: int, m: int) -> tuple[str | None, dict]:
    """(the layer's route, name -> a call); each call reads the next rotated copy."""
    import torch
    import torch.nn.functional as F
    from bench_w8a8 import copies, qlayers
    from replay import Rotation

    from qtool_kernels import ops, scaled_mm

    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / math.sqrt(k)
    dense = Rotation([w] + [w.clone() for _ in range(copies(2 * n * k) - 1)])
    layers = Rotation(qlayers("fp8-block", w))
    codes = Rotation([(torch.randn(n, k, device="cuda") * 32).to(torch.float8_e4m3fn) for _ in range(copies(n * k))])
    random_scale = torch.rand(-(-n // 128), k // 128, device="cuda") / 100
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    route = scaled_mm.w8a8_route(m, n, k, "fp8-block")

    def op_on_layer():
        layer = layers()
        return ops.w8a8_linear(x, layer.weight, layer.weight_scale, None, None, "e4m3", 128, 128, 128)

    calls = {"bf16": lambda: F.linear(x, dense()), "layer": lambda: layers()(x), "op": op_on_layer,
             "op_random": lambda: ops.w8a8_linear(x, codes(), random_scale, None, None, "e4m3", 128, 128, 128)}
    calls.update(route_parts(layers, x, route, ("parts", "parts_pdl")))
    calls["layer_last"] = calls["layer"]  # the layer again, last in each round's order
    return route, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=DEFAULT_CELLS)
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch
    from replay import interleaved_graph_ms

    from qtool_kernels import build

    build.load_extension()
    out = []
    print(f"device: {torch.cuda.get_device_name()}")
    for cell in args.cells.split(","):
        shape, m = cell.split(":")
        (k, n), m = map(int, shape.split("x")), int(m)
        route, calls = variants(k, n, m)
        us = {name: 1e3 * t for name, t in interleaved_graph_ms(calls, reps=20, replays=12).items() if t}
        line = "  ".join(f"{name} {t:.1f} ({us['bf16'] / t:.2f}x)" for name, t in us.items())
        print(f"fp8-block {k}x{n} M={m} route={route}: {line}", flush=True)
        out.append({"K": k, "N": n, "M": m, "route": route, "us": us})
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "cells": out}, indent=1))


if __name__ == "__main__":
    main()
