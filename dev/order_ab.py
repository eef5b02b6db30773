"""The Hopper GEMMs at 1024-8192 tokens: the persistent schedulers' tile order (csrc/sm90/sm90_common.cuh, swizzle
and raster) and the tiles in 2 x 2 clusters, timed in one process against bf16 F.linear.

For each scheme, shape and M: bf16 F.linear, then under each tile order (interleaved over --rounds) the layer as
dispatched (QuantLinear: the issues' protocol, activation quantization included) and, for W8A8, the large-m GEMMs by
name on pre-quantized activations (libqtool_sm90 large / pingpong and both in 2 x 2 clusters; libqtool_sm90_block
block-large, in 2 x 2 clusters, and both with the promotion overlapped). An order is <raster><swizzle>: h1 (CUTLASS's
default: its heuristic raster, no swizzle), h8, m8, n8, ... Timing as benchmarks/bench_w8a8.py (rotating copies past
the L2, calls in a CUDA graph, median of replays), with fewer calls per graph: these sizes are compute-bound and long.

    python3 dev/order_ab.py [--schemes fp8-block,fp8,w8a8-int8,w4a16] [--tokens 1024,4096,8192] [--orders h1,h8,m8,n8]
        [--shapes 4096x4096,...] [--rounds 2] [--json order_ab.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, graph_ms  # noqa: E402
from bench_w8a8 import SHAPES, copies, qlayers  # noqa: E402

from qtool_kernels import block_mm, build, scaled_mm, sm90  # noqa: E402

RASTER = {"h": "heuristic", "m": "m", "n": "n"}
# the large-m GEMMs timed by name, per scheme: (library, configuration names)
PROBES = {"fp8": ("sm90", ("large", "pingpong", "large-2x2", "pingpong-2x2")),
          "w8a8-int8": ("sm90", ("large", "pingpong", "large-2x2", "pingpong-2x2")),
          "fp8-block": ("block", ("block-large", "block-large-2x2", "block-large-overlap", "block-large-2x2-overlap"))}


def parse_order(text: str) -> tuple[int, str]:
    if len(text) < 2 or text[0] not in RASTER or not text[1:].isdigit():
        raise SystemExit(f"--orders: {text!r} is not <h|m|n><swizzle>, e.g. h1 or m8")
    return int(text[1:]), RASTER[text[0]]


def us(call) -> float | None:
    ms = graph_ms(call, reps=8, replays=5)
    return None if ms is None else ms * 1e3


def gemm_probes(scheme: str, x: torch.Tensor, n: int) -> dict:
    """name -> call of each large-m GEMM of `scheme` on x's codes (random weight codes of the layer's shape)."""
    if scheme not in PROBES:
        return {}
    k = x.shape[1]
    lib, names = PROBES[scheme]
    w = torch.randn(n, k, device="cuda")
    q = (w * 8).clamp(-127, 127).round().to(torch.int8) if scheme == "w8a8-int8" else (w * 32).to(torch.float8_e4m3fn)
    wq = Rotation([q] + [q.clone() for _ in range(copies(n * k) - 1)])
    if lib == "block":
        xq, xs = scaled_mm.quantize_activation_cuda(x, "e4m3", 128, None)
        ws = torch.rand(-(-n // 128), k // 128, device="cuda") / 100
        return {name: (lambda c=block_mm.CONFIGS[name]: block_mm.block_linear(xq, xs, wq(), ws, c)) for name in names}
    xq, xs = scaled_mm.quantize_activation_cuda(x, "int8" if scheme == "w8a8-int8" else "e4m3", 0, None)
    xs, ws = xs.reshape(-1).contiguous(), torch.rand(n, device="cuda") / 100
    return {name: (lambda c=scaled_mm.SM90_CONFIGS[name]: torch.ops.qtool_cuda.sm90_scaled_mm(
        xq, wq(), xs, ws, None, torch.bfloat16, c)) for name in names}


def time_cell(scheme: str, m: int, dense: Rotation, layers: Rotation, orders: list, rounds: int) -> dict:
    n, k = dense.items[0].shape
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    probes = {"layer": lambda: layers()(x), **gemm_probes(scheme, x, n)}
    times: dict[str, dict[str, list]] = {name: {order: [] for order in orders} for name in probes}
    bf16 = []
    for _ in range(rounds):
        bf16.append(us(lambda: F.linear(x, dense())))
        for order in orders:
            sm90.set_tile_order(*parse_order(order))
            for name, call in probes.items():
                times[name][order].append(us(call))
    sm90.set_tile_order()
    row = {"scheme": scheme, "K": k, "N": n, "M": m, "bf16_us": statistics.median(bf16), "us": {}}
    for name, by_order in times.items():
        row["us"][name] = {order: statistics.median(t) if all(v is not None for v in t) else None
                           for order, t in by_order.items()}
    return row


def show(row: dict) -> None:
    bf16 = row["bf16_us"]
    cells = []
    for name, by_order in row["us"].items():
        best = min((o for o in by_order if by_order[o]), key=lambda o: by_order[o], default=None)
        text = " ".join(f"{o} {bf16 / t:.2f}x" if t else f"{o} -" for o, t in by_order.items())
        cells.append(f"{name}: {text} (best {best})")
    print(f"{row['scheme']} {row['K']}x{row['N']} M={row['M']}: bf16 {bf16:.1f} us; " + "; ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemes", default="fp8-block,fp8,w8a8-int8,w4a16")  # the widest gap first
    parser.add_argument("--tokens", default="1024,4096,8192")
    parser.add_argument("--orders", default="h1,h8,m8,n8")
    parser.add_argument("--shapes", help="comma-separated KxN, default bench_w8a8.SHAPES")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if build.load_extension() is None:
        sys.exit(f"the CUDA extension is not available: {build._loader.reason}")
    for lib in sm90.ALL:  # the order is set per loaded library
        if not lib.load():
            sys.exit(f"{lib.stem} is not available: {lib.reason}")
    orders = args.orders.split(",")
    for order in orders:
        parse_order(order)
    shapes = [tuple(int(d) for d in s.lower().split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    rows = []
    for scheme in args.schemes.split(","):
        for k, n in shapes:
            dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies(2 * n * k))])
            layers = Rotation(qlayers(scheme, dense.items[0]))
            warm = torch.randn(1024, k, device="cuda", dtype=torch.bfloat16)
            for layer in layers.items:  # each copy makes its kernel layouts now, not inside a graph capture
                layer(warm)
            torch.cuda.synchronize()
            for m in (int(t) for t in args.tokens.split(",")):
                rows.append(time_cell(scheme, m, dense, layers, orders, args.rounds))
                show(rows[-1])
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
            del dense, layers
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
