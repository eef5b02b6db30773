"""wo_gemv's split variant (csrc/wo_split.cu) against the route that ships and bf16 F.linear, W4 g128 at 5-32 tokens
on issue 19's shapes and the 8B's fused ones, every variant's graph replayed in turn (benchmarks/replay.py) in one
process: the plan's splits and every forced count (1-8). A correctness check against the dequantized weight in float64
runs before any timing. Speedup against bf16 in the same process.

    python3 dev/split_ab.py [--tokens 5,8,9,12,16,24,32] [--asym] [--shapes 4096x4096,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
sys.path.insert(0, str(HERE.parents[1]))

FORCED = (1, 2, 3, 4, 5, 6, 7, 8)  # every cluster size: the plan's choice (session 59) is one of them
SHAPES = "4096x4096,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192,4096x6144,4096x28672"


def check(ops, p, n: int, m: int, splits: int = 0) -> float:
    """Relative error of the split variant (the plan's splits, or `splits` forced) against float64 on the
    dequantized weight: the first launch, which `ncu --launch-count 1` profiles (dev/session58.sh ncusplit)."""
    import torch

    from qtool_kernels.int8_planes import SPLIT_VARIANT, SPLITS_UNIT
    from qtool_kernels.layout import EPILOGUE, dequantize_packed

    x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
    y = ops.wo_gemv(x, p.qweight, p.scale, p.zero, None, 4, p.group_size, n, EPILOGUE, None,
                    SPLIT_VARIANT + SPLITS_UNIT * splits)
    ref = x.double() @ dequantize_packed(p.qweight, p.scale, p.zero, 4, p.group_size, n).double().T
    return ((y.double() - ref).norm() / ref.norm()).item()


def time_shape(ops, k: int, n: int, tokens: list[int], asym: bool, check_splits: int = 0,
               check_tokens: int = 16) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from bench_kernels import Rotation, copies_for, packed_copies
    from replay import interleaved_graph_ms

    from qtool_kernels.int8_planes import SPLIT_VARIANT, SPLITS_UNIT
    from qtool_kernels.layout import EPILOGUE, PDL_STATIC_WEIGHT
    from qtool_kernels.weight_only import packed_linear, route

    packed = Rotation(packed_copies(4, 128, k, n, layer=True, asym=asym))
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    p0 = packed.items[0]
    err = check(ops, p0, n, check_tokens, check_splits)
    rows = []
    for m in tokens:
        if asym and m > 16:
            continue
        x = torch.randn(m, p0.k_padded, device="cuda", dtype=torch.bfloat16)
        xk = x[:, :k].contiguous()
        r = route(p0, m, x.dtype)
        calls = {"bf16": lambda: F.linear(xk, dense()),  # noqa: B023
                 "route": lambda: packed_linear(x, packed(), None, ops)}  # noqa: B023

        def split(extra):
            def call():
                p = packed()
                return ops.wo_gemv(x, p.qweight, p.scale, p.zero, None, 4, p.group_size, n, EPILOGUE, None,  # noqa: B023
                                   SPLIT_VARIANT + PDL_STATIC_WEIGHT + extra)
            return call

        def planes():  # x_planes + the one-stripe planes GEMV (two / four n-tiles), as QTOOL_PLANES_TILE=16 routes it
            p = packed()
            xp, xs = ops.x_planes(x, 1)  # noqa: B023
            return ops.wo_planes_gemv(xp, xs, p.qweight, p.scale, p.zero, None, p.group_size, n, x.dtype,  # noqa: B023
                                      PDL_STATIC_WEIGHT)

        if m <= 16:
            calls["planes"] = planes
        calls["split"] = split(0)
        for s in FORCED:
            calls[f"s{s}"] = split(SPLITS_UNIT * s)
        ms = interleaved_graph_ms(calls)
        bf16 = ms["bf16"]
        row = {"K": k, "N": n, "M": m, "asym": asym, "route": r if isinstance(r, str) else "hopper " + str(r),
               "err16": err, "us": {name: None if t is None else t * 1e3 for name, t in ms.items()},
               "speedup": {name: None if not t else bf16 / t for name, t in ms.items() if name != "bf16"}}
        rows.append(row)
        cells = "  ".join(f"{name} {v:5.2f}x" for name, v in row["speedup"].items() if v)
        print(f"{k:>5} x {n:<5} M={m:<2} {'asym' if asym else 'sym '} bf16 {bf16 * 1e3:6.1f} us  {cells}"
              f"  [{row['route']}] err {err:.1e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="5,8,9,12,16,24,32")
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--asym", action="store_true", help="zero points too (to 16 tokens)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--check-splits", type=int, default=0, help="the check's launch forced to this many splits")
    parser.add_argument("--check-tokens", type=int, default=16,
                        help="the check's tokens (its launch is the first: `ncu --launch-skip 0` profiles the plan's)")
    args = parser.parse_args()
    import torch

    from qtool_kernels import build

    ops = build.load_extension()
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
    tokens = [int(t) for t in args.tokens.split(",")]
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        for asym in (False, True) if args.asym else (False,):
            rows += time_shape(ops, k, n, tokens, asym, args.check_splits, args.check_tokens)
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
