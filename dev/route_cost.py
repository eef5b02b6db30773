"""The Python cost of the weight-only dispatcher's route choice per eager call (weight_only.route, _kernel_input), on
any machine: a W4 g128 weight with a stand-in Hopper copy, so the measured-table path runs as on an H200.

    python3 dev/route_cost.py [--shape 8192x8192] [--tokens 16,32,64,256]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from qtool_kernels import mixed_mm, weight_only
from qtool_kernels.layout import pack_weight


def per_call_us(fn, calls: int = 2000) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="8192x8192", help="K x N")
    parser.add_argument("--tokens", default="16,32,64,256")
    args = parser.parse_args()
    k, n = (int(v) for v in args.shape.split("x"))
    w = pack_weight(torch.randint(-8, 8, (n, k), dtype=torch.int8), torch.rand(n, -(-k // 128)), None, None, 4, 128)
    stand_in = torch.empty(1)
    w = dataclasses.replace(w, mixed=mixed_mm.MixedWeight(stand_in, stand_in, stand_in, 128))
    for m in (int(t) for t in args.tokens.split(",")):
        x = torch.randn(m, k, dtype=torch.bfloat16)
        route_us = per_call_us(lambda m=m: weight_only.route(w, m, torch.bfloat16))
        input_us = per_call_us(lambda x=x: weight_only._kernel_input(x, w))
        print(f"M={m}: route {route_us:.1f} us ({weight_only.route(w, m, torch.bfloat16)}), _kernel_input "
              f"{input_us:.1f} us")


if __name__ == "__main__":
    main()
