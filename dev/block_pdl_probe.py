"""fp8-block layers with and without programmatic dependent launch of the block GEMM after act_quant, one process.

The layer as it runs at 16-256 tokens (activation quantization into 1 x 128 groups, then libqtool_sm90_block's
measured configuration), chained in one CUDA graph with the GEMM launched plainly or with PDL (block_mm.PDL), beside
bf16 F.linear; timing as bench_w8a8.py (rotating copies, graph replay). What `scaled_mm.BLOCK_PDL_MAX_M` needs.

    python3 dev/block_pdl_probe.py [--tokens 16,32,64,128,256] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, graph_ms  # noqa: E402
from bench_w8a8 import copies  # noqa: E402

from qtool_kernels import block_mm, build, scaled_mm, tuning  # noqa: E402

SHAPES = [(4096, 4096), (4096, 6144), (14336, 4096), (4096, 14336), (8192, 8192), (8192, 28672), (28672, 8192)]


def measure_shape(k: int, n: int, tokens: list[int]) -> list[dict]:
    """The fp8-block layer of a K x N weight at each of `tokens`, where its route is a block_mm configuration."""
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies(2 * n * k))])
    wq = Rotation([(torch.randn(n, k, device="cuda") * 32).to(torch.float8_e4m3fn) for _ in range(copies(n * k))])
    ws = torch.rand(-(-n // 128), k // 128, device="cuda") / 100
    rows = []
    for m in tokens:
        route = tuning.lookup("w8a8", "fp8-block", k, n, m)
        if route not in block_mm.CONFIGS:
            continue  # cuBLAS or the GEMV there: no block_mm launch to compare
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

        def layer(pdl: bool, x=x, config=block_mm.CONFIGS[route]):
            xq, xs = scaled_mm.quantize_activation_cuda(x, "e4m3", 128, None)
            return block_mm.block_linear(xq, xs, wq(), ws, config, pdl=pdl)

        bf16 = graph_ms(lambda x=x: F.linear(x, dense()))
        plain, pdl = graph_ms(lambda layer=layer: layer(False)), graph_ms(lambda layer=layer: layer(True))
        if None in (bf16, plain, pdl):
            continue
        rows.append({"K": k, "N": n, "M": m, "route": route, "bf16_us": bf16 * 1e3, "plain_us": plain * 1e3,
                     "pdl_us": pdl * 1e3})
        print(f"{k}x{n} M={m} {route}: bf16 {bf16 * 1e3:.1f} us, plain {bf16 / plain:.2f}x, PDL {bf16 / pdl:.2f}x",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", default="16,32,64,128,256")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    build.load_extension()
    rows = []
    for k, n in SHAPES:
        rows += measure_shape(k, n, [int(t) for t in args.tokens.split(",")])
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
