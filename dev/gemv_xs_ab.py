"""A/B of the ring GEMV's build-time knob, one process per setting (it is read once per process): x staged in
shared memory (the default) against x read through L1 (QTOOL_GEMV_XS_MAX=0). The dispatcher's route for each format
against bf16 F.linear in the same process, timed like benchmarks/bench_kernels.py (rotating copies past the L2,
CUDA-graph replay, median of replays), on the fused 8B decode shapes at 1-4 tokens by default. (Session 27 used it
with QTOOL_GEMV_XP, a knob since removed, for the fragment-order staging: kernels/NOTES.md.)

    python3 dev/gemv_xs_ab.py --json xs.json && QTOOL_GEMV_XS_MAX=0 python3 dev/gemv_xs_ab.py --json xs_l1.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, copies_for, graph_ms, packed_copies  # noqa: E402

from qtool_kernels import build  # noqa: E402
from qtool_kernels.weight_only import packed_linear  # noqa: E402

SHAPES = [(4096, 6144), (4096, 4096), (4096, 28672), (14336, 4096)]  # q/k/v, o, gate/up, down


KNOBS = ("QTOOL_GEMV_XS_MAX",)


def time_shape(k: int, n: int, tokens: list[int], formats: list[tuple[int, int]], kernels) -> list[dict]:
    """bf16 and the dispatcher of each (bits, group) at each token count, milliseconds."""
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    knobs = {name: os.environ.get(name, "default") for name in KNOBS}
    rows = []
    for bits, group in formats:
        layer = Rotation(packed_copies(bits, group, k, n, layer=True))
        for m in tokens:
            x = torch.randn(m, layer.items[0].k_padded, device="cuda", dtype=torch.bfloat16)
            row = {"K": k, "N": n, "M": m, "bits": bits, "group": group, **knobs,
                   "bf16": graph_ms(lambda x=x: F.linear(x[:, :k], dense())),
                   "qtool": graph_ms(lambda x=x, layer=layer: packed_linear(x, layer(), None, kernels))}
            rows.append(row)
            print(f"{k}x{n} M={m} W{bits} g{group} ({knobs}): bf16 {row['bf16'] * 1e3:.1f} us, "
                  f"qtool {row['qtool'] * 1e3:.1f} us, {row['bf16'] / row['qtool']:.2f}x", flush=True)
        del layer
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1,2,4")
    parser.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in SHAPES), help="KxN,...")
    parser.add_argument("--formats", default="4:128", help="bits:group,... (group -1: per channel)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kernels = build.load_extension()
    if kernels is None:
        sys.exit(f"no CUDA extension: {build._loader.reason}")
    rows = []
    formats = [tuple(int(v) for v in f.split(":")) for f in args.formats.split(",")]
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        rows += time_shape(k, n, [int(t) for t in args.tokens.split(",")], formats, kernels)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
