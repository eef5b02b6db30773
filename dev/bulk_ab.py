"""wo_gemv variant 4 ("bulk": weights staged by bulk copies into a shared-memory ring, csrc/wo_bulk.cu) against the
ring GEMV launch the dispatcher uses (gemv_variant, with PDL) on the same packed copies, and bf16 F.linear, timed like
benchmarks/bench_kernels.py (rotating copies past the L2, CUDA-graph replay, median of replays).

    python3 dev/bulk_ab.py --tokens 1,2 --json bulk.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import EPILOGUE, Rotation, copies_for, graph_ms, packed_copies  # noqa: E402

from qtool_kernels import build  # noqa: E402
from qtool_kernels.weight_only import PDL_STATIC_WEIGHT, gemv_variant  # noqa: E402

SHAPES = "4096x6144,4096x4096,4096x28672,14336x4096,8192x8192,8192x28672"


def time_shape(k: int, n: int, formats: list[tuple[int, int]], tokens: list[int], kernels) -> list[dict]:
    """bf16, the ring GEMV's dispatched launch and the bulk variant at each (format, M), milliseconds."""
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    rows = []
    for bits, group in formats:
        packed = Rotation(packed_copies(bits, group, k, n))
        p0 = packed.items[0]

        def call(x, variant, packed=packed, bits=bits, p=None):
            p = p or packed()
            return kernels.wo_gemv(x, p.qweight, p.scale, None, None, bits, p.group_size, n, EPILOGUE, None, variant)

        for m in tokens:
            x = torch.randn(m, p0.k_padded, device="cuda", dtype=torch.bfloat16)
            ring, bulk = call(x, gemv_variant(p0), p=p0).float(), call(x, 4, p=p0).float()  # the same copy
            diff = ((bulk - ring).norm() / ring.norm()).item()
            row = {"rel_diff_to_ring": diff, "K": k, "N": n, "M": m, "bits": bits, "group": group,
                   "bf16": graph_ms(lambda x=x: F.linear(x[:, :k], dense())),
                   "ring": graph_ms(lambda x=x, v=gemv_variant(p0): call(x, v)),
                   "bulk": graph_ms(lambda x=x: call(x, 4 + PDL_STATIC_WEIGHT))}
            rows.append(row)
            print(f"{k}x{n} W{bits} g{group} M={m} (bulk vs ring {diff:.1e}): bf16 {row['bf16'] * 1e3:.1f} us; ring "
                  f"{row['bf16'] / row['ring']:.2f}x ({row['ring'] * 1e3:.1f} us), bulk "
                  f"{row['bf16'] / row['bulk']:.2f}x ({row['bulk'] * 1e3:.1f} us)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1,2")
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--formats", default="4:128,3:128,2:64", help="bits:group,...")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kernels = build.load_extension()
    if kernels is None:
        sys.exit(f"no CUDA extension: {build._loader.reason}")
    formats = [tuple(int(v) for v in f.split(":")) for f in args.formats.split(",")]
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        rows += time_shape(k, n, formats, [int(t) for t in args.tokens.split(",")], kernels)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
