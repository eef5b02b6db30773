"""GPTQ's inverse-Hessian factor U (U^T U = H^-1, U upper) by several routes: time and error against float64.

Session 24's probe (dev/gptq_probe.py) put the chain of quantize/methods/gptq.py (Cholesky, cholesky_inverse,
Cholesky again: ~4n^3/3 flops in cuSOLVER) at 223 ms of down_proj's 296 ms on the 8B shape (K = 14336), and 13 ms
for each K = 4096 linear: more than half of a block's GPTQ arithmetic, and serial. The routes:
  chain      the current code, float32
  flip-trsm  U = P L^-1 P with L L^T = P H P (P reverses the order): one Cholesky and one triangular solve
             against the identity, float32
  flip-rec   the same, the triangular inverse by recursive halving (two matmuls per level, solves at 1024): what
             gptq.py runs since session 24 ("qtool" below, with the damping loop)
  chain64 / flip64  the chain and flip-trsm in float64 (the H200's float64 runs on tensor cores)
No extension needed:
    PYTHONPATH=. python3 dev/cholesky_probe.py --json $OUT/cholesky.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from quantize.methods import gptq


def chain(h: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def flip_trsm(h: torch.Tensor) -> torch.Tensor:
    lower = torch.linalg.cholesky(h.flip(0, 1))
    eye = torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
    return torch.linalg.solve_triangular(lower, eye, upper=False).flip(0, 1)


def flip_rec(h: torch.Tensor) -> torch.Tensor:
    return gptq._lower_triangular_inverse(torch.linalg.cholesky(h.flip(0, 1))).flip(0, 1)


ROUTES = {"chain": (chain, torch.float32), "flip-trsm": (flip_trsm, torch.float32), "flip-rec": (flip_rec, torch.float32),
          "chain64": (chain, torch.float64), "flip64": (flip_trsm, torch.float64),
          "qtool": (lambda h: gptq._upper_cholesky_of_inverse(h, 0.0)[0], torch.float32)}


def hessian(n: int, device: str) -> torch.Tensor:
    """X^T X / t for t = 2n tokens of features with spread scales (as real activations have), damped by 1%."""
    g = torch.Generator(device).manual_seed(n)
    x = torch.randn(2 * n, n, device=device, generator=g) * torch.logspace(-1, 1, n, device=device)
    h = x.T @ x / (2 * n)
    h.diagonal().add_(0.01 * h.diagonal().mean())
    return h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4096,14336")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    records = []
    for n in (int(s) for s in args.sizes.split(",")):
        h = hessian(n, args.device)
        ref = chain(h.double())
        for name, (fn, dtype) in ROUTES.items():
            hd = h.to(dtype)
            fn(hd)  # warm-up (cuSOLVER workspaces)
            times = []
            for _ in range(3):
                torch.cuda.synchronize() if args.device == "cuda" else None
                t = time.perf_counter()
                u = fn(hd)
                torch.cuda.synchronize() if args.device == "cuda" else None
                times.append(time.perf_counter() - t)
            err = ((u.double() - ref).norm() / ref.norm()).item()
            record = {"n": n, "route": name, "ms": round(1000 * sorted(times)[1], 2), "rel_err": err}
            print(json.dumps(record), flush=True)
            records.append(record)
    with open(args.json, "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
