"""Where GPTQ's arithmetic goes on one GPU, per linear of an 8B block (issue 20: two GPUs halve the capture passes
but not this): the Cholesky chain (quantize/methods/gptq.py, _upper_cholesky_of_inverse), the column loop
(gptq_columns: one Triton launch per 128 columns) and the lazy updates (addmm), for the whole linear and for half its
rows (what each of two ranks gets); then the column kernel alone under other launch shapes (rows per program, warps).

    python3 dev/gptq_probe.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from quantize.methods import gptq, gptq_columns
from quantize.scheme import QuantArgs, Strategy

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
DEVICE = "cuda"
ARGS = QuantArgs(num_bits=4, strategy=Strategy.GROUP, group_size=128, symmetric=True)


def timed(fn) -> tuple[float, object]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def phases(n: int, k: int, hessian: torch.Tensor) -> dict:
    """Seconds of each phase of gptq_quantize's loop for a random [n, k] weight (the loop of gptq.py, timed)."""
    W = torch.randn(n, k, device=DEVICE)
    t_chol, (Hinv, _, _) = timed(lambda: gptq._upper_cholesky_of_inverse(hessian.clone(), 0.01))
    scale, zero, cs, cz = gptq._initial_qparams(W, ARGS, 128)
    loop = gptq_columns.ColumnLoop(W, Hinv, ARGS, scale, zero, cs, cz, 128)
    t_cols = t_upd = 0.0
    i1 = 0
    while i1 < k:
        i2 = loop.block_end(i1, 128)
        dt, err = timed(lambda a=i1, b=i2: loop.run_block(a, b))
        t_cols += dt
        dt, _ = timed(lambda a=i1, b=i2, e=err: W[:, b:].addmm_(e, Hinv[a:b, b:], alpha=-1))
        t_upd += dt
        i1 = i2
    t_all, _ = timed(lambda: gptq.gptq_quantize(torch.randn(n, k, device=DEVICE), hessian, ARGS))
    return {"cholesky_s": t_chol, "columns_s": t_cols, "updates_s": t_upd, "gptq_quantize_s": t_all}


def column_shapes(n: int, k: int) -> dict:
    """The column kernel alone over k / 128 blocks of [n, 128], per (rows per program, warps)."""
    out = {}
    w = torch.randn(n, 128, device=DEVICE)
    s = torch.rand(n, 128, device=DEVICE) + 0.1
    hinv = torch.triu(torch.rand(128, 128, device=DEVICE)) + torch.eye(128, device=DEVICE)
    for rows in (8, 16, 32):
        for warps in (1, 2, 4, 8):
            gptq_columns.ROWS_PER_PROGRAM, gptq_columns.NUM_WARPS = rows, warps
            gptq_columns.run_block(w.clone(), s, None, hinv, -8, 7)  # compile
            dt, _ = timed(lambda: [gptq_columns.run_block(w.clone(), s, None, hinv, -8, 7) for _ in range(k // 128)])
            out[f"r{rows}w{warps}"] = dt
    gptq_columns.ROWS_PER_PROGRAM, gptq_columns.NUM_WARPS = 16, 4
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    results = []
    for name, (n, k) in SHAPES.items():
        x = torch.randn(2048, k, device=DEVICE)
        hessian = x.T @ x / 2048
        gptq.gptq_quantize(torch.randn(n, k, device=DEVICE), hessian, ARGS)  # warm: Triton compile, cuSOLVER
        for rows in (n, n // 2):
            r = {"linear": name, "rows": rows, "k": k, **phases(rows, k, hessian)}
            print(json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in r.items()}), flush=True)
            results.append(r)
        shapes = column_shapes(n // 2, k)
        print(json.dumps({"linear": name, "rows": n // 2, "column_kernel_s": {a: round(b, 4) for a, b in shapes.items()}}),
              flush=True)
        results.append({"linear": name, "rows": n // 2, "column_kernel_s": shapes})
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
