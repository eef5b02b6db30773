"""The wgmma kernel on 8-bit rows (warpgroup_mm.w8_mm) against the routes that ship and bf16 F.linear at 9-128 tokens:
a W8A16 per-channel layer (packed_linear: w8_gemv / the Hopper copy's route), W8A8 int8 and FP8 per-channel layers
and fp8-block (scaled_mm.w8a8_linear_cuda: w8_gemv, or the activations' quantization + the W8A8 GEMM), and w8_mm's
plan (and forced schedules) on the same int8 / E4M3 codes and block scales. Every call's graph replayed in turn in
one process (benchmarks/replay.py); each w8_mm schedule checked against float64 first. Speedup against bf16 in the
same process.

    python3 dev/wgmma8_ab.py [--tokens 16,32,64,128] [--shapes 4096x4096,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
sys.path.insert(0, str(HERE.parents[1]))

SHAPES = "4096x4096,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192"
FORCED = ((2, 1), (2, 4), (1, 4), (4, 2), (1, 2), (2, 2), (4, 4))  # (warpgroups, split)


def codes(n: int, k: int, fp8: bool, count: int, blocks: bool = False):
    import torch

    out = []
    for _ in range(count):
        if blocks:
            w = (torch.randn(n, k, device="cuda") * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
            out.append((w, torch.rand(-(-n // 128), -(-k // 128), device="cuda") / 100 + 1e-4))
            continue
        if fp8:
            w = (torch.randn(n, k, device="cuda") * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
        else:
            w = torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8)
        out.append((w, torch.rand(n, 1, device="cuda") / 100 + 1e-4))
    return out


def rel_err(w, scale, m: int, schedule) -> float:
    import torch

    from qtool_kernels import warpgroup_mm

    x = torch.randn(m, w.shape[1], device="cuda", dtype=torch.bfloat16)
    y = warpgroup_mm.rows_linear(x, w, scale, None, schedule)
    ref = x.double() @ (w.double() * scale.double()).T
    return ((y.double() - ref).norm() / ref.norm()).item()


def time_shape(ops, k: int, n: int, tokens: list[int], forced: bool) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from bench_kernels import copies_for, packed_copies
    from replay import Rotation, interleaved_graph_ms

    from qtool_kernels import scaled_mm, warpgroup_mm
    from qtool_kernels.weight_only import packed_linear

    count = copies_for(n * k)
    i8, f8 = Rotation(codes(n, k, False, count)), Rotation(codes(n, k, True, count))
    f8b = Rotation(codes(n, k, True, count, blocks=True))
    w8a16 = Rotation(packed_copies(8, -1, k, n, layer=True))
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for m in tokens:
        tile = next(t for t in warpgroup_mm.TILES if t >= m)
        schedules = {"wg8": warpgroup_mm.plan(m, -(-n // 16) * 16, -(-k // 64) * 64, sms,
                                              warpgroup_mm.device_capacity(0, 1))}
        if forced:
            schedules.update({f"w{wg}s{s}": warpgroup_mm.Plan(tile, wg, s) for wg, s in FORCED if (tile, wg) != (128, 4)})
        errs = {f"{name} {kind}": rel_err(*pair.items[0], m, s)
                for name, s in schedules.items() for kind, pair in (("int8", i8), ("e4m3", f8))}
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        calls = {"bf16": lambda: F.linear(x, dense()),  # noqa: B023
                 "w8a16 route": lambda: packed_linear(x, w8a16(), None, ops),  # noqa: B023
                 "int8 route": lambda: scaled_mm.w8a8_linear_cuda(x, *i8(), None, None, "int8", 0, 0, 0, 1),  # noqa: B023
                 "fp8 route": lambda: scaled_mm.w8a8_linear_cuda(x, *f8(), None, None, "e4m3", 0, 0, 0, 1),  # noqa: B023
                 "fp8-block route": lambda: scaled_mm.w8a8_linear_cuda(  # noqa: B023
                     x, *f8b(), None, None, "e4m3", 128, 128, 128, 1)}  # noqa: B023

        def wg8(pair, schedule):
            return lambda: warpgroup_mm.rows_linear(x, *pair(), None, schedule)  # noqa: B023

        for name, s in schedules.items():
            calls[f"{name} int8"] = wg8(i8, s)
        calls["wg8 e4m3"] = wg8(f8, schedules["wg8"])
        calls["wg8 blocks"] = lambda: warpgroup_mm.rows_linear(x, *f8b(), None, blocks=True)  # noqa: B023
        ms = interleaved_graph_ms(calls)
        bf16 = ms["bf16"]
        row = {"K": k, "N": n, "M": m, "plan": vars(schedules["wg8"]), "err": errs,
               "us": {name: None if t is None else t * 1e3 for name, t in ms.items()},
               "speedup": {name: None if not t else bf16 / t for name, t in ms.items() if name != "bf16"}}
        rows.append(row)
        cells = "  ".join(f"{name} {v:5.2f}x" for name, v in row["speedup"].items() if v)
        print(f"{k:>5} x {n:<5} M={m:<3} bf16 {bf16 * 1e3:6.1f} us  {cells}  [plan {schedules['wg8']}] "
              f"err max {max(errs.values()):.1e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="16,32,64,128")
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--no-forced", action="store_true", help="the plan's schedule only")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    from qtool_kernels import build, warpgroup_mm

    ops = build.load_extension()
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    assert warpgroup_mm.available(), f"libqtool_sm90_wgmma: {warpgroup_mm.sm90.wgmma.reason}"
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        rows += time_shape(ops, k, n, [int(t) for t in args.tokens.split(",")], not args.no_forced)
        torch.cuda.empty_cache()
        if args.json:  # after every shape: a call cut off by its time limit keeps what it measured
            Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
