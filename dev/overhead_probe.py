"""Host (CPU) time per eager QuantLinear call, beside bf16 F.linear: what an eager prefill pays per layer when the
GPU work is short enough for the host to be the limit (session 12 found the 8B fp8-block prefill host-bound).

  python3 dev/overhead_probe.py [--shape 4096x4096] [--tokens 1,2048] [--profile fp8-block]

For each scheme: microseconds of host time per call (time.perf_counter over 30 calls queued after a
synchronization: too few to fill the launch queue, so the host never waits on the GPU), and with --profile the top Python functions of one scheme's calls (cProfile).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_w8a8 import qlayer  # noqa: E402

SCHEMES = ("fp8", "fp8-block", "w8a8-int8", "w4a16", "w8a16")


def host_us(call, calls: int = 30) -> float:
    """Host microseconds per call over `calls` calls queued after a sync (few enough that the launch queue never
    fills, so the host never waits for the GPU)."""
    for _ in range(20):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="4096x4096")
    parser.add_argument("--tokens", default="1,2048")
    parser.add_argument("--profile", default="fp8-block")
    args = parser.parse_args()
    k, n = map(int, args.shape.split("x"))
    dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    layers = {s: qlayer(s, dense) for s in SCHEMES}
    for m in map(int, args.tokens.split(",")):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            cells = [f"bf16 {host_us(lambda x=x: F.linear(x, dense)):.1f}"]
            cells += [f"{s} {host_us(lambda s=s, x=x: layers[s](x)):.1f}" for s in SCHEMES]
        print(f"{args.shape} M={m}: host us per call: " + ", ".join(cells))
    if args.profile:
        x = torch.randn(2048, k, device="cuda", dtype=torch.bfloat16)
        layer = layers[args.profile]
        with torch.inference_mode():
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(200):
                layer(x)
            prof.disable()
        torch.cuda.synchronize()
        print(f"\ncProfile of 200 {args.profile} calls at M=2048 (tottime order):")
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
