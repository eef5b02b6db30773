"""Where GPTQ's arithmetic goes on a GPU: `gptq_quantize` on each linear of a Llama-3-8B block as
qtool runs it (q/k/v and gate/up stacked), wall time per call and the kernels by GPU time.

    python3 benchmarks/bench_gptq.py --json gptq.json [--bits 4 --group-size 128 --tokens 8192]

On the H200 the block loop's "gptq quantize" phase took 0.92 s per 8B block (session 8, before stacking),
63% of the block: this says which part (the inverse, the column loop kernel, the trailing updates,
the final rounding) to shorten. H is built from random bf16 activations, so it is well conditioned
like a real one; the timing does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from quantize.methods.gptq import gptq_quantize
from quantize.scheme import QuantArgs, Strategy

SHAPES = {"q/k/v": (6144, 4096), "o": (4096, 4096), "gate/up": (28672, 4096), "down": (4096, 14336)}  # (N, K)


def timed(fn, reps: int) -> float:
    """Median wall seconds of fn() with the GPU synchronized around each call."""
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def upper_cholesky_of_inverse_flipped(h: torch.Tensor) -> torch.Tensor:
    """A candidate for gptq._upper_cholesky_of_inverse (damping aside): J H J = F F^T gives
    H = (J F J)(J F J)^T with J F J upper, so U = J F^-1 J: one Cholesky and one triangular inverse where
    the current code does Cholesky, cholesky_inverse (two triangular solves against I on CUDA) and a
    second Cholesky. On the CPU it gave the same U to 1e-7 but moved the 2-process CI test's 8-bit
    static codes (99.7% equal, bar 99.9%) by changing which float roundings flip; here it is timed only."""
    f = torch.linalg.cholesky(h.flip(0, 1))
    return torch.linalg.solve_triangular(f, torch.eye(h.shape[0], device=h.device), upper=False).flip(0, 1)


def compare_inverses(h: torch.Tensor, reps: int) -> dict:
    """Seconds of the current inverse factor and of the flipped candidate, and their relative difference."""
    from quantize.methods.gptq import _upper_cholesky_of_inverse

    hd = h.clone()
    torch.diagonal(hd).add_(0.01 * torch.diagonal(h).mean())
    current = _upper_cholesky_of_inverse(h, 0.01)[0]
    flipped = upper_cholesky_of_inverse_flipped(hd)
    return {"current_s": timed(lambda: _upper_cholesky_of_inverse(h, 0.01), reps),
            "flipped_s": timed(lambda: upper_cholesky_of_inverse_flipped(hd), reps),
            "relative_difference": float((current - flipped).norm() / current.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    qargs = QuantArgs(num_bits=args.bits, strategy=Strategy.GROUP, group_size=args.group_size)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "linears": {}}
    for name, (n, k) in SHAPES.items():
        x = torch.randn(args.tokens, k, device="cuda", dtype=torch.bfloat16)
        h = torch.addmm(torch.zeros(k, k, device="cuda"), x.t(), x, out_dtype=torch.float32) * (2 / args.tokens)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
        del x
        call = lambda w=w, h=h: gptq_quantize(w, h, qargs, act_order=True, static_groups=True)  # noqa: E731
        call()  # warm-up: Triton compiles, cuSOLVER loads
        seconds = timed(call, args.reps)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        events = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:8]
        gpu = {e.key[:70]: round(e.device_time_total / 1e3, 2) for e in events}
        inverse = compare_inverses(h, args.reps)
        result["linears"][name] = {"N": n, "K": k, "wall_s": seconds, "gpu_ms_by_kernel": gpu, "inverse": inverse}
        print(f"{name} [{n} x {k}]: {seconds * 1e3:.1f} ms wall; GPU ms: {gpu}; inverse: {inverse}", flush=True)
    total = sum(v["wall_s"] for v in result["linears"].values())
    print(f"one block: {total:.3f} s of gptq_quantize")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
