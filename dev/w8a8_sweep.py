"""Every tile configuration of libqtool_sm90's W8A8 GEMM (kernels/scaled_mm.py SM90_CONFIGS) at each (int8 / FP8,
shape, M), on pre-quantized activations, beside bf16 F.linear, the W8A8 layer as dispatched (activation
quantization included), the w8_gemv and cuBLAS row-wise FP8 (`torch._scaled_mm`); for `fp8-block`, the block GEMM's
configurations (kernels/block_mm.py) beside cuBLAS's block-wise one: the data of kernels/tuning.py's W8A8 table.
Timing as benchmarks/bench_w8a8.py (rotating copies, CUDA-graph replay, every variant's graph replayed in turn).

    python3 dev/w8a8_sweep.py --tokens 16,32,64,128,256,512 --json w8a8_sweep.json [--budget 150] [--kinds fp8-block]
    python3 dev/w8a8_sweep.py --emit w8a8_sweep.json ... [--merge [--card H100]]  # tuning.W8A8 entries
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, interleaved_graph_ms  # noqa: E402
from bench_w8a8 import SHAPES, copies  # noqa: E402
from mixed_sweep import card_table, merge_entries, print_entries  # noqa: E402  (this folder is on sys.path when run as a script)

from qtool_kernels import block_mm, build, ops, scaled_mm, sm90  # noqa: E402

CODES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


SPLITS = [int(s) for s in os.environ.get("QTOOL_SWEEP_SPLITS", "").split(",") if s]


def weights(kind: str, k: int, n: int) -> Rotation:
    w = torch.randn(n, k, device="cuda")
    q = (w * 8).clamp(-127, 127).round().to(torch.int8) if kind == "int8" else (w * 32).to(torch.float8_e4m3fn)
    return Rotation([q.clone() for _ in range(copies(n * k))])


def skipped(name: str, m: int) -> bool:
    """Configurations session 43 measured losing: 2 x 2 clusters (to their 1 x 2 tiles at 1024-8192 tokens), and
    tile orders (sm90.ORDERS) below 2048 tokens (up to 2x slower at 1024)."""
    return "2x2" in name or (m < 2048 and name.endswith(("-s8", "-n8")))


def block_gemms(x: torch.Tensor, wq: Rotation, w_scale: torch.Tensor) -> dict:
    """fp8-block: cuBLAS's block-wise GEMM and each block_mm configuration on x's 1 x 128 codes, and w8_gemv;
    name -> a call to time."""
    xq, xs = scaled_mm.quantize_activation_cuda(x, "e4m3", 128, None)
    out = {"cublas": lambda: scaled_mm.block_mm(xq, xs, wq(), w_scale)}
    for name, config in block_mm.CONFIGS.items():
        if skipped(name, x.shape[0]):
            continue
        out[name] = lambda c=config: block_mm.block_linear(xq, xs, wq(), w_scale, c)
    if SPLITS:  # other k splits of the split-K configurations (the default fills the SMs, >= 4 k tiles each)
        for name in ("block-split", "block-swap"):
            for s in SPLITS:
                out[f"{name}/{s}"] = \
                    lambda c=block_mm.CONFIGS[name], s=s: block_mm.block_linear(xq, xs, wq(), w_scale, c, s)
    if x.shape[0] <= scaled_mm.W8_GEMV_KERNEL_MAX_M:
        out["w8_gemv (bf16 x)"] = lambda: torch.ops.qtool_cuda.w8_gemv(x, wq(), w_scale, None, 128, 128)
    return out


def channel_gemms(kind: str, x: torch.Tensor, wq: Rotation, w_scale: torch.Tensor) -> dict:
    """fp8 / int8 per channel: each libqtool_sm90 configuration on x's per-token codes, cuBLAS (FP8), w8_gemv;
    name -> a call to time."""
    m, fmt = x.shape[0], "int8" if kind == "int8" else "e4m3"
    xq, xs = scaled_mm.quantize_activation_cuda(x, fmt, 0, None)
    xs = xs.reshape(-1).contiguous()
    out = {}
    for name, config in scaled_mm.SM90_CONFIGS.items():
        # skip what cannot win: 64-row tiles on thousands of tokens, 128-row ones on a few
        if (name == "auto" or skipped(name, m) or (m >= 2048 and name in ("narrow", "skinny"))
                or (m <= 8 and name in ("large", "split")) or (m < 256 and name.startswith("pingpong"))):
            continue
        out[name] = lambda c=config: torch.ops.qtool_cuda.sm90_scaled_mm(
            xq, wq(), xs, w_scale, None, torch.bfloat16, c)
    if kind == "fp8":
        out["cublas"] = lambda: torch._scaled_mm(xq, wq().t(), xs.view(-1, 1), w_scale.view(1, -1),
                                                 out_dtype=torch.bfloat16)
    if m <= scaled_mm.W8_GEMV_KERNEL_MAX_M:
        out["w8_gemv (bf16 x)"] = lambda: torch.ops.qtool_cuda.w8_gemv(x, wq(), w_scale, None, 0, 0)
    return out


def time_cell(kind: str, m: int, dense: Rotation, wq: Rotation) -> dict:
    """One (kind, shape, M) cell: bf16, the activation quantization, the layer as dispatched, every GEMM."""
    n, k = dense.items[0].shape
    fmt, group = ("int8" if kind == "int8" else "e4m3"), (128 if kind == "fp8-block" else 0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    calls = {"bf16": lambda: F.linear(x, dense()),
             "act_quant": lambda: scaled_mm.quantize_activation_cuda(x, fmt, group, None)}
    if kind == "fp8-block":  # the layer as dispatched too, so that a sweep keeps its route unless beaten
        w_scale = torch.rand(-(-n // 128), k // 128, device="cuda") / 100
        calls["layer"] = lambda: ops.w8a8_linear(x, wq(), w_scale, None, None, fmt, 128, 128, 128)
        gemms = block_gemms(x, wq, w_scale)
    else:
        w_scale = torch.rand(n, device="cuda") / 100
        calls["layer"] = lambda: ops.w8a8_linear(x, wq(), w_scale, None, None, fmt, 0, 0, 0)
        gemms = channel_gemms(kind, x, wq, w_scale)
    # every graph replayed in turn: timed one after another, a GEMM inherited the clocks of the one before
    # (session 55, dev/layer_gap.py)
    times = interleaved_graph_ms({**calls, **{f"gemm:{key}": call for key, call in gemms.items()}},
                                 reps=10, replays=8)
    row = {"kind": kind, "K": k, "N": n, "M": m, **{key: times[key] for key in calls}}
    row["gemm"] = {key[5:]: t for key, t in times.items() if key.startswith("gemm:")}
    return row


def sweep_shape(kind: str, k: int, n: int, tokens: list[int], deadline: float) -> list[dict]:
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies(2 * n * k))])
    wq, rows = weights(kind, k, n), []
    for m in tokens:
        if time.monotonic() > deadline:
            print(f"{kind} {k}x{n}: time budget spent before M={m}")
            break
        rows.append(time_cell(kind, m, dense, wq))
        show_row(rows[-1])
    return rows


def show_row(row: dict) -> None:
    bf16, aq = row["bf16"], row["act_quant"] or 0.0
    gemm = {key: v for key, v in row["gemm"].items() if v}
    best = min(gemm, key=lambda key: gemm[key] + (0 if key.startswith("w8_gemv") else aq))
    layer = f"{bf16 / row['layer']:.2f}x" if row.get("layer") else "-"
    print(f"{row['kind']} {row['K']}x{row['N']} M={row['M']}: bf16 {bf16 * 1e3:.1f} us, layer {layer}, "
          f"act_quant {aq * 1e3:.1f} us; GEMM + act_quant: "
          + ", ".join(f"{key} {bf16 / (v + (0 if key.startswith('w8_gemv') else aq)):.2f}x" for key, v in gemm.items())
          + f" (best {best})", flush=True)


MARGIN = 0.03  # what a route must gain over the layer as dispatched to replace its route (noise below it)


def best_route(row: dict) -> str | None:
    """The fastest of a cell's GEMMs (each with the activation quantization it needs) as a tuning.W8A8 route, or
    None where the layer as dispatched is within MARGIN of it: the cell keeps its route. (fp8-block rows of
    sweeps before session 56 time no layer: their fastest GEMM wins.)"""
    aq = row["act_quant"] or 0.0
    gemm = {key: v + (0 if key.startswith("w8_gemv") else aq) for key, v in row["gemm"].items() if v and "/" not in key}
    best = min(gemm, key=gemm.get)  # (the "/split" probes are not routes)
    if row.get("layer") and gemm[best] > (1 - MARGIN) * row["layer"]:
        return None
    return "gemv" if best.startswith("w8_gemv") else best


def emit(paths: list[Path], merge: bool = False, card: str | None = None) -> None:
    table: dict = {}
    for path in paths:
        for row in json.loads(path.read_text()):
            route = best_route(row)
            if route is not None:
                table.setdefault((row["kind"], row["K"], row["N"]), {})[row["M"]] = route
    print_entries(table)
    if merge:  # so that one device call can sweep, route by the result and measure the layers routed so
        merge_entries(table, card_table("w8a8", card))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="16,32,64,128,256,512,1024")
    parser.add_argument("--kinds", default="fp8,int8")
    parser.add_argument("--shapes", help="comma-separated KxN, default bench_w8a8.SHAPES (e.g. 4096x6144,4096x28672)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--budget", type=float, default=150.0)
    parser.add_argument("--emit", type=Path, nargs="+", help="print tuning.W8A8 entries from saved sweeps and exit")
    parser.add_argument("--merge", action="store_true", help="with --emit: also write them into kernels/tuning.py")
    parser.add_argument("--card", help="with --merge: the card swept (H200, H100; default: this machine's GPU)")
    args = parser.parse_args()
    if args.emit:
        return emit(args.emit, args.merge, args.card)
    if build.load_extension() is None:
        sys.exit(f"the CUDA extension is not available: {build._loader.reason}")
    if not sm90.load():
        sys.exit(f"libqtool_sm90 is not available: {sm90.reason()}")
    tokens = [int(t) for t in args.tokens.split(",")]
    shapes = [tuple(int(d) for d in s.lower().split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    cases = [(kind, k, n) for kind in args.kinds.split(",") for k, n in shapes]
    start, rows = time.monotonic(), []
    for i, (kind, k, n) in enumerate(cases):
        left = args.budget - (time.monotonic() - start)
        rows += sweep_shape(kind, k, n, tokens, time.monotonic() + left / (len(cases) - i))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
