"""wo_gemv's variant 3 ("stream", csrc/wo_stream.cu) in each launch shape against the GEMV that ships and bf16, in
one build: QTOOL_WO_STREAM (0 = shape by row count, 1 = one stripe of 16 warps, 2 = one stripe of 8, 3 = two
stripes of 8 at <= 8 tokens) is read once per process, so each setting runs in its own child process. Timing as
bench_kernels.py (rotating copies past the L2, CUDA-graph replay); speedup against bf16 F.linear in the same process,
TB/s = code and scale bytes / time.

    python3 dev/stream_ab.py [--shapes 0,1,2,3] [--tokens 1,4,8,16,32] [--formats w4a16-g128,...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gemv_probe import FUSED_8B, run_settings  # this folder is on sys.path when run as a script

HERE = Path(__file__).resolve()


def time_format(ops, k: int, n: int, fmt: str, tokens: list[int], dense) -> list[dict]:
    """Variant 3 and the shipped GEMV on a random asymmetric weight of `fmt` (the dearer zero-point mode)."""
    import torch
    import torch.nn.functional as F
    from bench_kernels import FORMATS, Rotation, copies_for, graph_ms

    from qtool_kernels.layout import EPILOGUE, pack_weight
    from qtool_kernels.weight_only import gemv_variant

    bits, group = FORMATS[fmt]
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    groups = 1 if group <= 0 else -(-k // group)
    codes = torch.randint(lo, hi + 1, (n, k), device="cuda", dtype=torch.int8)
    zero = torch.randint(lo, hi + 1, (n, groups), device="cuda", dtype=torch.int8)
    p = pack_weight(codes, torch.rand(n, groups, device="cuda") / 100, zero, None, bits, group)
    nbytes = p.qweight.numel() * 4 + p.scale.numel() * 4 + p.zero.numel() * 4
    packed = Rotation([(p.qweight.clone(), p.scale.clone(), p.zero.clone()) for _ in range(copies_for(nbytes))])
    shipped = gemv_variant(p)

    def gemv(x, variant):
        return ops.wo_gemv(x, *packed(), None, bits, p.group_size, n, EPILOGUE, None, variant)

    rows = []
    for m in tokens:
        x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
        xk = x[:, :k].contiguous()
        bf16 = graph_ms(lambda: F.linear(xk, dense()))  # noqa: B023  (timed before the next iteration)
        stream = graph_ms(lambda: gemv(x, 3))  # noqa: B023
        ships = graph_ms(lambda: gemv(x, shipped)) if m <= 8 else None  # noqa: B023
        rows.append({"format": fmt, "K": k, "N": n, "M": m, "bf16_ms": bf16, "stream_ms": stream, "gemv_ms": ships,
                     "stream_speedup": bf16 / stream, "stream_TBps": nbytes / stream / 1e9,
                     "gemv_speedup": bf16 / ships if ships else None})
    return rows


def child(tokens: list[int], formats: list[str]) -> list[dict]:
    import torch

    sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
    from bench_kernels import SHAPES, Rotation, copies_for

    from qtool_kernels import build

    ops = build.load_extension()
    rows = []
    for k, n in SHAPES + FUSED_8B:
        dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
        for fmt in formats:
            rows += time_format(ops, k, n, fmt, tokens, dense)
            torch.cuda.empty_cache()
        del dense
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="0,1,2,3", help="QTOOL_WO_STREAM settings, one child process each")
    parser.add_argument("--tokens", default="1,4,8,16,32")
    parser.add_argument("--formats", default="w4a16-g128,w8a16-channel,w3a16-g128,w2a16-g64")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    tokens, formats = [int(t) for t in args.tokens.split(",")], args.formats.split(",")
    if args.child:
        print(json.dumps(child(tokens, formats)))
        return
    results = run_settings(HERE, "QTOOL_WO_STREAM", args.shapes, ["--tokens", args.tokens, "--formats", args.formats])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    keys = sorted({(r["format"], r["K"], r["N"], r["M"]) for rows in results.values() for r in rows})
    print("format K x N M: shipped GEMV | " + " | ".join(f"stream, QTOOL_WO_STREAM={s}" for s in results))
    for key in keys:
        found = [next((r for r in rows if (r["format"], r["K"], r["N"], r["M"]) == key), None)
                 for rows in results.values()]
        first = next((r for r in found if r), None)
        ships = f"{first['gemv_speedup']:.2f}x" if first and first["gemv_speedup"] else "-"
        cells = [f"{r['stream_speedup']:.2f}x {r['stream_TBps']:.1f} TB/s" if r else "-" for r in found]
        print(f"{key[0]} {key[1]}x{key[2]} M={key[3]}: {ships} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
