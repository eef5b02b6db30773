"""The Python cost of an eager weight-only QuantLinear call on the CUDA path, on any machine (no GPU): finding the
prepared kernel layout (quantize.linear.prepare_for_cuda, cached), the route choice (weight_only.route) and
packed_linear with a stand-in kernel. A W4 g128 weight with a stand-in Hopper copy, so the measured-table path runs
as on an H200; the library is stood in for, so only Python is timed (the op's own dispatch comes on top).

    python3 dev/route_cost.py [--shape 8192x8192] [--tokens 1,16,32,64,256]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from qtool_kernels import build, mixed_mm, weight_only
from qtool_kernels.layout import pack_weight
from quantize.linear import QuantLinear, prepare_for_cuda
from quantize.primitives import quantize_weight
from quantize.scheme import preset


def per_call_us(fn, calls: int = 2000) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


class StandIn:
    """torch.ops.qtool_cuda's weight-only entry points, returning a preallocated output."""

    def __init__(self, n: int) -> None:
        self.n = n

    def wo_gemv(self, x, *args):
        return torch.empty(x.shape[0], self.n, dtype=x.dtype)

    wo_gemm = wo_gemm_v3 = wo_gemv


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="8192x8192", help="K x N")
    parser.add_argument("--tokens", default="1,16,32,64,256")
    args = parser.parse_args()
    k, n = (int(v) for v in args.shape.split("x"))
    w = pack_weight(torch.randint(-8, 8, (n, k), dtype=torch.int8), torch.rand(n, -(-k // 128)), None, None, 4, 128)
    stand_in = torch.empty(1)
    w = dataclasses.replace(w, mixed=mixed_mm.MixedWeight(stand_in, stand_in, stand_in, 128))
    build.load_extension = lambda: object()  # the layout is CPU code; no library is called
    scheme = preset("w4a16")
    layer = QuantLinear.from_qtensor(quantize_weight(torch.randn(n, k), scheme.weights), scheme)
    prepare_for_cuda(layer)
    print(f"prepare_for_cuda (prepared): {per_call_us(lambda: prepare_for_cuda(layer)):.1f} us")
    ops = StandIn(n)
    weight_only.mixed_linear = lambda x2, mixed, **schedule: torch.empty(x2.shape[0], n, dtype=x2.dtype)
    for m in (int(t) for t in args.tokens.split(",")):
        x = torch.randn(m, k, dtype=torch.bfloat16)
        route_us = per_call_us(lambda m=m: weight_only.route(w, m, torch.bfloat16))
        input_us = per_call_us(lambda x=x: weight_only._kernel_input(x, w))
        linear_us = per_call_us(lambda x=x: weight_only.packed_linear(x, w, None, ops))
        print(f"M={m}: route {route_us:.1f} us ({weight_only.route(w, m, torch.bfloat16)}), _kernel_input "
              f"{input_us:.1f} us, packed_linear {linear_us:.1f} us")


if __name__ == "__main__":
    main()
