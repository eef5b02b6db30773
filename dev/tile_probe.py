"""Launches for Nsight Compute: wo_planes_gemv's tile kernel (variant 3) beside the stripes launches (variants 0-2)
on symmetric W4 g128 at a few shapes and token counts, each twice (ncu profiles every launch; caches flushed by ncu).

    ncu ... python3 dev/tile_probe.py [--shapes 8192x28672,4096x4096] [--tokens 16,32]
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8192x28672,4096x4096")
    ap.add_argument("--tokens", default="16,32")
    ap.add_argument("--variants", default="0,1,2,3")
    args = ap.parse_args()
    import torch

    import quantize  # noqa: F401  (registers the ops)
    from qtool_kernels import build
    from qtool_kernels.layout import pack_weight

    ops = build.load_extension()
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
        p = pack_weight(codes, torch.rand(n, -(-k // 128), device="cuda") / 100, None, None, 4, 128)
        for m in (int(t) for t in args.tokens.split(",")):
            planes, xs = ops.x_planes(torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16))
            for variant in (int(v) for v in args.variants.split(",")):
                if variant < 3 and m > 16:
                    continue
                for _ in range(2):
                    ops.wo_planes_gemv(planes, xs, p.qweight, p.scale, None, None, 128, n, torch.bfloat16, variant)
            torch.cuda.synchronize()
            print(f"{shape} m={m} done", flush=True)


if __name__ == "__main__":
    main()
