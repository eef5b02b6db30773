"""wo_gemm's forms (QTOOL_WO_GEMM 0-3: one-ahead / deep pipeline x atomics + finishing kernel / one-kernel split-K)
beside bf16 F.linear and the dispatcher, in one process, timed like benchmarks/bench_kernels.py (rotating weight
copies past the L2, CUDA-graph replay, median of replays): whether the new forms should take more routes.

    python3 dev/wo_gemm_ab.py --formats w4a16-g128,w8a16-channel --tokens 8,16,32,64,128 --json ab.json
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
from bench_kernels import FORMATS, SHAPES, Rotation, copies_for, graph_ms, packed_copies  # noqa: E402

from qtool_kernels import build  # noqa: E402
from qtool_kernels.layout import EPILOGUE  # noqa: E402
from qtool_kernels.weight_only import packed_linear  # noqa: E402

MODES = (0, 1, 2, 3)


def time_cell(fmt: str, m: int, dense: Rotation, packed: Rotation, kernels) -> dict:
    """bf16, the dispatcher (default form) and wo_gemm in each form at m tokens, milliseconds per call."""
    bits, _ = FORMATS[fmt]
    p0 = packed.items[0]
    n, k = p0.out_features, p0.in_features
    x = torch.randn(m, p0.k_padded, device="cuda", dtype=torch.bfloat16)
    row = {"format": fmt, "K": k, "N": n, "M": m, "bf16": graph_ms(lambda: F.linear(x, dense())),
           "auto": graph_ms(lambda: packed_linear(x, packed(), None, kernels))}
    for mode in MODES:
        os.environ["QTOOL_WO_GEMM"] = str(mode)  # read by the op at each call, so at capture
        row[f"wo_gemm{mode}"] = graph_ms(lambda: kernels.wo_gemm(
            x, packed().qweight, p0.scale, p0.zero, None, bits, p0.group_size, n, EPILOGUE))
    os.environ.pop("QTOOL_WO_GEMM")
    return row


def show(row: dict) -> None:
    bf16 = row["bf16"]
    forms = " ".join(f"{bf16 / row[f'wo_gemm{mode}']:.2f}" if row[f"wo_gemm{mode}"] else "-" for mode in MODES)
    print(f"{row['format']} {row['K']}x{row['N']} M={row['M']}: bf16 {bf16 * 1e3:.1f} us; dispatcher "
          f"{bf16 / row['auto']:.2f}x; wo_gemm forms 0-3 {forms} (form 3 {row['wo_gemm3'] * 1e3:.1f} us)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="w4a16-g128,w8a16-channel")
    parser.add_argument("--tokens", default="8,16,32,64,128")
    parser.add_argument("--shapes", help="comma-separated KxN, default bench_kernels.SHAPES")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--budget", type=float, default=200.0, help="seconds for the whole run")
    args = parser.parse_args()
    kernels = build.load_extension(verbose=True)
    if kernels is None:
        sys.exit(f"no CUDA extension: {build._loader.reason}")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    tokens = [int(t) for t in args.tokens.split(",")]
    deadline, rows = time.monotonic() + args.budget, []
    for fmt in args.formats.split(","):
        bits, group_size = FORMATS[fmt]
        for k, n in shapes:
            if time.monotonic() > deadline:
                print(f"budget spent before {fmt} {k}x{n}")
                break
            dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
                              for _ in range(copies_for(2 * n * k))])
            packed = Rotation(packed_copies(bits, group_size, k, n))
            for m in tokens:
                rows.append(time_cell(fmt, m, dense, packed, kernels))
                show(rows[-1])
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
            del dense, packed
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
