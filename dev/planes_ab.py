"""wo_gemv's variants 4, 5 and 6 ("planes", csrc/wo_planes.cu: x as two int8 planes on the int8 tensor cores, one,
two or four 16-row stripes per block, each block quantizing x) and wo_planes_gemv (the planes given by x_planes: alone,
"g1/g2/g4", the tile kernel "gT", and with x_planes before it in the graph, "p1/p2/p4/pT") against the GEMV that ships at that token count
(weight_only.route: the ring or variant 3) and bf16 F.linear, symmetric W4 at 1-4 tokens on issue 19's shapes and the
fused 8B ones, in one process. Timing as bench_kernels.py (rotating copies past the L2, CUDA-graph replay, median); speedup against bf16 in
the same process, TB/s = code and scale bytes / time.

    python3 dev/planes_ab.py [--tokens 1,2,3,4] [--group 128] [--bits 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
sys.path.insert(0, str(HERE.parent))


def time_shape(ops, k: int, n: int, group: int, tokens: list[int], bits: int = 4) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from bench_kernels import Rotation, copies_for, graph_ms

    from qtool_kernels.int8_planes import takes_planes
    from qtool_kernels.layout import EPILOGUE, pack_weight
    from qtool_kernels.weight_only import PDL_STATIC_WEIGHT, gemv_kind, gemv_variant

    groups = 1 if group <= 0 else -(-k // group)
    top = 1 << (bits - 1)
    codes = torch.randint(-top, top, (n, k), device="cuda", dtype=torch.int8)
    p = pack_weight(codes, torch.rand(n, groups, device="cuda") / 100, None, None, bits, group)
    nbytes = p.qweight.numel() * 4 + p.scale.numel() * 4
    packed = Rotation([(p.qweight.clone(), p.scale.clone()) for _ in range(copies_for(nbytes))])
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])

    def gemv(x, variant):
        qweight, scale = packed()
        return ops.wo_gemv(x, qweight, scale, None, None, bits, p.group_size, n, EPILOGUE, None, variant)

    rows = []
    for m in tokens:
        x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
        xk = x[:, :k].contiguous()
        # QTOOL_GEMV_PLANES unset: what ships (the ring's launch, or variant 3 where the rule says "stream"); where no
        # GEMV serves m there is nothing here to time or diff against (bench_kernels.py times the routes there)
        kind = gemv_kind(p, m)
        ring_variant = None if kind is None else 3 if kind == "stream" else gemv_variant(p)
        bf16 = graph_ms(lambda: F.linear(xk, dense()))  # noqa: B023  (timed before the next iteration)
        row = {"K": k, "N": n, "M": m, "bf16_ms": bf16}
        line = f"{k:>5} x {n:<5} M={m:<2}  bf16 {bf16 * 1e3:7.2f} us"
        if ring_variant is not None:
            ring = graph_ms(lambda: gemv(x, ring_variant))  # noqa: B023
            row.update({"ring_ms": ring, "ring_speedup": bf16 / ring, "ring_TBps": nbytes / ring / 1e9})
            line += f"  v{ring_variant % 16} {bf16 / ring:5.2f}x"
        for variant in (4, 5, 6):
            if not takes_planes(p, m):
                continue
            ms = graph_ms(lambda: gemv(x, variant + PDL_STATIC_WEIGHT))  # noqa: B023
            a, b = gemv(x, ring_variant).double(), gemv(x, variant + PDL_STATIC_WEIGHT).double()
            diff = ((a - b).norm() / a.norm()).item()  # the rotated copies hold the same codes and scales
            row.update({f"v{variant}_ms": ms, f"v{variant}_speedup": bf16 / ms, f"v{variant}_TBps": nbytes / ms / 1e9,
                        f"v{variant}_rel_diff": diff})
            line += f"  v{variant} {bf16 / ms:5.2f}x"
            row["rel_diff"] = max(row.get("rel_diff", 0.0), diff)
        planes, xs = ops.x_planes(x)
        # 0-2: one, two or four stripes per block (1-16 tokens); 3: the tile kernel (4-bit, 1-32 tokens, sm_90)
        variants = [v for v in (0, 1, 2) if m <= 16] + ([3] if bits == 4 and m <= 32 else [])
        for variant in variants:
            def given(variant=variant, x=x, planes=planes, xs=xs):
                qweight, scale = packed()
                return ops.wo_planes_gemv(planes, xs, qweight, scale, None, None, p.group_size, n, x.dtype,
                                          variant + PDL_STATIC_WEIGHT, bits)

            def pair(variant=variant, x=x):
                xp, s = ops.x_planes(x, 1)
                qweight, scale = packed()
                return ops.wo_planes_gemv(xp, s, qweight, scale, None, None, p.group_size, n, x.dtype,
                                          variant + PDL_STATIC_WEIGHT, bits)

            g_ms, p_ms = graph_ms(given), graph_ms(pair)
            if ring_variant is not None:
                a, b = gemv(x, ring_variant).double(), given().double()
                row["rel_diff"] = max(row.get("rel_diff", 0.0), ((a - b).norm() / a.norm()).item())
            name = "T" if variant == 3 else str(1 << variant)
            row.update({f"g{name}_speedup": bf16 / g_ms, f"p{name}_speedup": bf16 / p_ms})
            line += f"  g{name} {bf16 / g_ms:5.2f}x p{name} {bf16 / p_ms:5.2f}x"
        line += f"  diff {row.get('rel_diff', float('nan')):.1e}"
        rows.append(row)
        print(line, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="1,2,3,4")
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--bits", type=int, default=4, help="4, or 3 / 2 (wo_planes_low.cu; no staged variants)")
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
        rows += time_shape(ops, k, n, args.group, tokens, args.bits)
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
