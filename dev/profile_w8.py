"""Launch the W8A8 layers' one-token GEMV (w8_gemv) as the 8B decode launches it, per-channel FP8 against FP8 block
scales, for Nsight Compute to compare (session 33: fp8-block's 128 w8_gemv launches per decode step take 2409.5 us
against fp8's 2323.1, +0.7 us per call, and the launches have the same registers and blocks per SM).

    ncu --set full --kernel-name regex:w8_gemv --launch-skip 1 --launch-count 1 ... \\
        python3 dev/profile_w8.py --scheme fp8-block --shape 4096x28672

Each call goes through QuantLinear (the route, the PDL choice and the scale layout the model uses), rotating over
copies whose weights together pass 300 MB, so no launch finds its weight in the 60 MB L2; REPS calls after a warm-up.
"""

from __future__ import annotations

import argparse
import copy

import torch

import quantize  # noqa: F401  (makes qtool_kernels importable)
from quantize.linear import QuantLinear
from quantize.primitives import quantize_weight
from quantize.scheme import preset

REPS = 3


def layers(scheme_name: str, k: int, n: int, device: str = "cuda") -> list[QuantLinear]:
    """Copies of one RTN-quantized [n, k] layer (quantized where it lives, as benchmarks/bench_w8a8.py does),
    together past 300 MB of 8-bit weights."""
    scheme = preset(scheme_name)
    dense = torch.randn(n, k, device=device) / k**0.5
    layer = QuantLinear.from_qtensor(quantize_weight(dense, scheme.weights), scheme)
    count = max(2, -(-(300 << 20) // (n * k)))
    return [layer] + [copy.deepcopy(layer) for _ in range(count - 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scheme", default="fp8-block", help="fp8, fp8-block or w8a8-int8")
    parser.add_argument("--shape", default="4096x28672", help="K x N")
    parser.add_argument("--tokens", type=int, default=1)
    args = parser.parse_args()
    k, n = (int(v) for v in args.shape.split("x"))
    copies = layers(args.scheme, k, n)
    x = torch.randn(args.tokens, k, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        for i in range(REPS + 1):
            copies[i % len(copies)](x)
    torch.cuda.synchronize()
    print(f"{args.scheme} {k}x{n} m={args.tokens}: {REPS + 1} calls over {len(copies)} copies")


if __name__ == "__main__":
    main()
