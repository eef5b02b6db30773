"""Row-major W4A16 (`qtool_cuda::w4_gemv`, csrc/w4_gemv.cu) against the weight-only dispatcher on the same shapes
and bf16 `F.linear`, at 1-16 tokens, in one process: rotating copies past the L2, CUDA-graph replay (the
protocol of benchmarks/bench_kernels.py, whose helpers it uses). W4 g128 symmetric.

    python3 dev/w4_probe.py [--tokens 1,2,4,8,16] [--json out.json]

Written in session 18 (unmeasured kernel): if w4_gemv wins a (shape, batch) class, route it there (a layer then
needs this layout beside, or instead of, the wo layout) and measure again end to end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
SHAPES = [(4096, 4096), (4096, 6144), (4096, 14336), (14336, 4096), (8192, 8192), (4096, 28672), (8192, 28672),
          (28672, 8192)]


def measure(tokens: list[int]) -> list[dict]:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
    from bench_kernels import Rotation, copies_for, graph_ms, packed_copies

    from qtool_kernels import build
    from qtool_kernels.w4_rows import pack_w4_rows
    from qtool_kernels.weight_only import packed_linear

    ops = build.load_extension()
    rows = []
    for k, n in SHAPES:
        codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
        scale = torch.rand(n, k // 128, device="cuda") / 100
        w = pack_w4_rows(codes, scale, None, 128)
        count = copies_for(w.rows.numel() + w.scale.numel() * 4)
        rot = Rotation([(w.rows.clone(), w.scale.clone()) for _ in range(count)])
        wo = Rotation(packed_copies(4, 128, k, n, layer=True))
        dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
        for m in tokens:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            times = {name: graph_ms(call) for name, call in (
                ("bf16", lambda x=x, dense=dense: F.linear(x, dense())),
                ("w4_gemv", lambda x=x, rot=rot: ops.w4_gemv(x, *rot(), None, None, 128)),
                ("dispatcher", lambda x=x, wo=wo: packed_linear(x, wo(), None, ops)))}
            rows.append({"K": k, "N": n, "M": m, **{f"{name}_ms": t for name, t in times.items()}})
            cells = [f"{name} {1e3 * t:.1f} us ({times['bf16'] / t:.2f}x)" if t and times["bf16"] else f"{name} -"
                     for name, t in times.items()]
            print(f"{k}x{n} M={m}: " + " | ".join(cells), flush=True)
        del rot, wo, dense
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1,2,4,8,16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = measure([int(t) for t in args.tokens.split(",")])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
