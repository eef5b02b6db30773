"""W8A8 layers (INT8, FP8 per channel, FP8 block-128) against bf16 F.linear, measured in the same run.

    python benchmarks/bench_w8a8.py --json w8a8.json [--quick] [--tokens 1,16,4096]

Protocol (issue 18): for every (scheme, K x N, M), one QuantLinear per weight copy, copies rotated so
that together they exceed the L2 many times (weights stream from HBM); 20 calls captured in one CUDA
graph, the median of 20 replays, per call. bf16 F.linear is timed the same way in the same run, every
variant's graph replayed in turn (replay.interleaved_graph_ms: one after another, the GPU's clocks
favoured whichever ran first); speedup = bf16 time / qtool time. Anchors timed beside ours, with the same
protocol (torch's own building blocks, what a user could assemble without qtool):
  scaled_mm+compile  FP8 row-wise torch._scaled_mm with a torch.compile'd per-token quantization
  blockwise_gemm     F.scaled_mm block-wise (1x128 x 128x128) on pre-quantized activations (GEMM only)
  int_mm_gemm        torch._int_mm on pre-quantized activations (GEMM only, no scaling)
Also: the fused activation quantization's bandwidth on an 8192 x 8192 bf16 input against the
device-to-device copy bandwidth.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from replay import Rotation, graph_ms, interleaved_graph_ms  # on sys.path when run as a script

from qtool_kernels import build, scaled_mm, sm90
from qtool_kernels.scaled_mm import W8_GEMV_MAX_M
from quantize.linear import QuantLinear
from quantize.primitives import quantize_weight
from quantize.scheme import preset

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]  # (K, N)
TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8192]
SCHEMES = ["fp8", "w8a8-int8", "fp8-block"]
ROTATE_BYTES = 600 << 20  # 10x the H200's 60 MB L2
CALLS, REPLAYS = 20, 20


def graph_us(call) -> float | None:
    """Median microseconds per call: CALLS calls in one CUDA graph, REPLAYS replays (bench_kernels.graph_ms)."""
    ms = graph_ms(call, reps=CALLS, replays=REPLAYS)
    return None if ms is None else ms * 1e3


def copies(nbytes: int) -> int:
    return max(2, math.ceil(ROTATE_BYTES / nbytes))


def qlayer(scheme_name: str, dense: torch.Tensor) -> QuantLinear:
    """dense [N, K] quantized with the preset (RTN), a static activation scale of 0.05 where the preset has one."""
    scheme = preset(scheme_name)
    layer = QuantLinear.from_qtensor(quantize_weight(dense.float(), scheme.weights), scheme)
    if hasattr(layer, "input_scale"):
        layer.input_scale.fill_(0.05)
    return layer


def qlayers(scheme_name: str, dense: torch.Tensor) -> list[QuantLinear]:
    layer = qlayer(scheme_name, dense)
    return [layer] + [copy.deepcopy(layer) for _ in range(copies(dense.numel()) - 1)]


@torch.compile(dynamic=True)
def _fp8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = x.abs().amax(-1, keepdim=True).float().clamp(min=1e-12) / 448.0
    return (x.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn), s


def anchors(x: torch.Tensor, fp8: Rotation, fp8_scale: torch.Tensor, blocks: Rotation, block_scale: torch.Tensor,
            int8: Rotation, int8_scale: torch.Tensor) -> dict:
    """Torch's own building blocks on the same weights (see module docstring): name -> a call to time."""
    m, k = x.shape
    ws = fp8_scale.reshape(1, -1)

    def fp8_rowwise():
        xq, s = _fp8_per_token(x)
        return torch._scaled_mm(xq, fp8().t(), scale_a=s, scale_b=ws, out_dtype=torch.bfloat16)

    out = {"scaled_mm+compile": fp8_rowwise}
    if k % 512 == 0 and hasattr(F, "scaled_mm"):
        xq = x.to(torch.float8_e4m3fn)
        xs = torch.ones(m, k // 128, device=x.device)
        out["blockwise_gemm"] = lambda: scaled_mm.block_mm(xq, xs, blocks(), block_scale)
    # qtool's fused quantization feeding torch's GEMMs: where these beat the CUTLASS path, dispatch to them.
    fp8_scale_col, int8_scale_col = fp8_scale.reshape(-1, 1), int8_scale.reshape(-1, 1)
    out["fp8_act_quant+scaled_mm"] = lambda: scaled_mm.torch_scaled_mm(
        *torch.ops.qtool_cuda.act_quant(x, "e4m3", 0, None), fp8(), fp8_scale_col, None, x.dtype)
    out["int8_act_quant+int_mm"] = lambda: scaled_mm.torch_scaled_mm(
        *torch.ops.qtool_cuda.act_quant(x, "int8", 0, None), int8(), int8_scale_col, None, x.dtype)
    xi = torch.randint(-127, 128, (max(m, 17), k), device=x.device, dtype=torch.int8)
    out["int_mm_gemm"] = lambda: torch._int_mm(xi, int8().t())
    return out


def bench_shape(k: int, n: int, tokens: list[int], schemes: list[str]) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(k * 7 + n)
    w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) / math.sqrt(k)
    dense = Rotation([w] + [w.clone() for _ in range(copies(2 * n * k) - 1)])
    layers = {name: Rotation(qlayers(name, w)) for name in schemes}
    fp8_rows = Rotation([layers["fp8"].items[i].weight for i in range(len(layers["fp8"].items))]) \
        if "fp8" in layers else None
    int8_rows = Rotation([layers["w8a8-int8"].items[i].weight for i in range(len(layers["w8a8-int8"].items))]) \
        if "w8a8-int8" in layers else None
    block_items = layers["fp8-block"].items if "fp8-block" in layers else None
    rows = []
    for m in tokens:
        x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
        calls = {"bf16": lambda x=x: F.linear(x, dense())}
        calls.update({name: (lambda rot=rot, x=x: rot()(x)) for name, rot in layers.items()})
        if fp8_rows is not None and int8_rows is not None and block_items is not None:
            fp8_scale = layers["fp8"].items[0].weight_scale.reshape(-1).contiguous()
            bscale = block_items[0].weight_scale
            int8_scale = layers["w8a8-int8"].items[0].weight_scale.reshape(-1).contiguous()
            calls.update(anchors(x, fp8_rows, fp8_scale, Rotation([b.weight for b in block_items]), bscale,
                                 int8_rows, int8_scale))
        for rot in layers.values():  # an eager forward on every copy before capture, as a model's warm-up runs:
            for layer in rot.items:  # a first call may prepare a layout (the narrow tile's scales), which a graph
                layer(x)             # captured first would redo on every replay (session 57, dev/capture_probe.py)
        # every variant's graph replayed in turn, so all see the same clocks (replay.interleaved_graph_ms)
        times = interleaved_graph_ms(calls, reps=CALLS, replays=REPLAYS)
        row = {"K": k, "N": n, "M": m, **{f"{key}_us": None if ms is None else ms * 1e3 for key, ms in times.items()}}
        for key in list(row):
            if key.endswith("_us") and key != "bf16_us" and row[key] and row["bf16_us"]:
                row[key.replace("_us", "_x")] = row["bf16_us"] / row[key]
        rows.append(row)
        print(f"{k}x{n} M={m}: " + "  ".join(f"{key[:-2]} {v:.2f}x" for key, v in row.items() if key.endswith("_x")),
              flush=True)
    return rows


def act_quant_bandwidth() -> dict:
    """Fused activation quantization on an 8192 x 8192 bf16 input: GB/s (bytes read + written) vs copy."""
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_us = graph_us(lambda: dst.copy_(src))
    result = {"copy_GBps": 2 * src.numel() / copy_us / 1e3}
    ops = torch.ops.qtool_cuda
    for name, fmt, group in (("int8_token", "int8", 0), ("e4m3_token", "e4m3", 0), ("e4m3_group128", "e4m3", 128)):
        us = graph_us(lambda fmt=fmt, group=group: ops.act_quant(x, fmt, group, None))
        scales = x.shape[0] * (1 if group == 0 else x.shape[1] // group) * 4
        result[name] = {"us": us, "GBps": (x.numel() * 3 + scales) / us / 1e3}
        result[name]["pct_copy"] = 100 * result[name]["GBps"] / result["copy_GBps"]
    for m in (1, 16):
        xs = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        result[f"e4m3_token_m{m}_us"] = graph_us(lambda xs=xs: ops.act_quant(xs, "e4m3", 0, None))
    return result


def show(rows: list[dict], schemes: list[str]) -> None:
    keys = [*schemes, "scaled_mm+compile", "blockwise_gemm", "int_mm_gemm", "fp8_act_quant+scaled_mm",
            "int8_act_quant+int_mm"]
    tokens = sorted({r["M"] for r in rows})
    print("\nspeedup over bf16 F.linear (graph replay); columns M")
    print(f"{'variant':20s} {'K x N':12s} " + " ".join(f"{m:>6d}" for m in tokens))
    for key in keys:
        for k, n in dict.fromkeys((r["K"], r["N"]) for r in rows):
            cells = []
            for m in tokens:
                r = next((r for r in rows if (r["K"], r["N"], r["M"]) == (k, n, m)), None)
                v = None if r is None else r.get(f"{key}_x")
                cells.append(f"{v:6.2f}" if v else "     -")
            print(f"{key:20s} {f'{k}x{n}':12s} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="two shapes, M in 1, 16, 256, 4096")
    parser.add_argument("--tokens", help="comma-separated M values")
    args = parser.parse_args()
    if not torch.cuda.is_available() or build.load_extension() is None:
        sys.exit("bench_w8a8.py needs a CUDA device and the qtool extension")
    shapes, tokens = (SHAPES[:2], [1, 16, 256, 4096]) if args.quick else (SHAPES, TOKENS)
    if args.tokens:
        tokens = [int(t) for t in args.tokens.split(",")]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "switches": build.switches(),
              "sm90_gemm": sm90.load(), "sm90_reason": sm90.reason(), "w8_gemv_max_m": W8_GEMV_MAX_M,
              "protocol": f"{CALLS} calls per CUDA graph, median of {REPLAYS} replays, copies > {ROTATE_BYTES >> 20} MB",
              "act_quant": act_quant_bandwidth(), "rows": []}
    print(json.dumps(result["act_quant"], indent=1), flush=True)
    for k, n in shapes:
        result["rows"] += bench_shape(k, n, tokens, SCHEMES)
        torch.cuda.empty_cache()
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    show(result["rows"], SCHEMES)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
