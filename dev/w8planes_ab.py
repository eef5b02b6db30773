"""w8_planes_gemv (csrc/w8_planes.cu: int8 rows straight into the int8 mma, x as x_planes' two int8 planes in k order)
against w8_gemv (what W8A8 int8 and W8A16 run at 1-4 tokens) and bf16 F.linear, per-channel int8 weights at 1-4 tokens
on issue 18's shapes and the fused 8B ones, in one process. g1 / g2 / g4: the GEMV alone with the planes given (one,
two, four stripes per block); p1 / p2 / p4: x_planes then the GEMV in the graph, both with PDL. Timing as
bench_kernels.py (rotating copies past the L2, CUDA-graph replay, median); speedup against bf16 in the same process.

    python3 dev/w8planes_ab.py [--tokens 1,2,3,4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
sys.path.insert(0, str(HERE.parent))


def time_shape(ops, k: int, n: int, tokens: list[int]) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from bench_kernels import Rotation, copies_for, graph_ms

    w = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
    wscale = torch.rand(n, device="cuda") / 100
    packed = Rotation([(w.clone(), wscale.clone()) for _ in range(copies_for(n * k))])
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    rows = []
    for m in tokens:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        planes, xs = ops.x_planes(x, 0, 1)

        def gemv(x=x):
            ww, ss = packed()
            return ops.w8_gemv(x, ww, ss, None, 0, 0, 1)

        bf16 = graph_ms(lambda x=x: F.linear(x, dense()))
        base = graph_ms(gemv)
        row = {"K": k, "N": n, "M": m, "bf16_ms": bf16, "w8_gemv_speedup": bf16 / base}
        line = f"{k:>5} x {n:<5} M={m}  bf16 {bf16 * 1e3:7.2f} us  w8_gemv {bf16 / base:5.2f}x"
        for variant in (0, 1, 2):
            def given(variant=variant, planes=planes, xs=xs):
                ww, ss = packed()
                return ops.w8_planes_gemv(planes, xs, ww, ss, None, torch.bfloat16, variant + 16)

            def pair(variant=variant, x=x):
                p, s = ops.x_planes(x, 1, 1)
                ww, ss = packed()
                return ops.w8_planes_gemv(p, s, ww, ss, None, torch.bfloat16, variant + 16)

            g_ms, p_ms = graph_ms(given), graph_ms(pair)
            diff = ((gemv().double() - given().double()).norm() / gemv().double().norm()).item()
            row.update({f"g{1 << variant}_speedup": bf16 / g_ms, f"p{1 << variant}_speedup": bf16 / p_ms,
                        f"g{1 << variant}_rel_diff": diff})
            line += f"  g{1 << variant} {bf16 / g_ms:5.2f}x p{1 << variant} {bf16 / p_ms:5.2f}x"
        rows.append(row)
        print(line + f"  diff {row['g1_rel_diff']:.1e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1,2,3,4")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch
    from bench_kernels import SHAPES
    from gemv_probe import FUSED_8B

    import quantize  # noqa: F401  (makes qtool_kernels importable)
    from qtool_kernels import build

    ops = build.load_extension()
    tokens = [int(t) for t in args.tokens.split(",")]
    rows = []
    for k, n in FUSED_8B + SHAPES:
        rows += time_shape(ops, k, n, tokens)
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
