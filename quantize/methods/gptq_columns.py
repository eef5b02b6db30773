"""GPTQ's column loop as one GPU kernel per lazy block.

The loop in `gptq.gptq_quantize` rounds one column at a time and feeds its error into the columns
after it. Written with torch ops, every column costs about a dozen kernel launches, so on a GPU the
loop is bound by the host issuing them: on an 8B-shaped block (~39k columns over its seven linears)
that was ~2-3 s of the ~9 s per block. The rows of W are independent in this loop (only columns
interact), so one Triton program can own a tile of rows for the whole block of columns, keeping
the tile in registers: a block of 128 columns becomes one launch instead of ~1500.

The arithmetic is the torch loop's, step for step (round half to even, IEEE division), so codes
agree with it except where float contraction (a fused multiply-add in the update) moves a value
across a rounding boundary; tests/test_gptq_gpu.py bounds that.

Integer formats only; FP8 columns (a cast, not a rounding) stay on the torch loop.
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the torch loop.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

ROWS_PER_PROGRAM = 16
MAX_COLUMNS = 256  # the widest block a program holds in registers (a group of 256 in one block)


def available(weight: torch.Tensor, is_float: bool) -> bool:
    """Whether the kernel can run GPTQ's column loop for weight [N, K] of this format."""
    return triton is not None and weight.is_cuda and not is_float


if triton is not None:

    @triton.jit
    def _round_half_even(x):
        # torch.round's rule, exactly: x - floor(x) is exact in floating point. (libdevice's rint
        # would do, but the CPU interpreter the tests can use has no libdevice.)
        r = tl.floor(x)
        f = x - r
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        return tl.where((f > 0.5) | ((f == 0.5) & odd), r + 1.0, r)

    @triton.jit
    def _column_loop(w_ptr, s_ptr, z_ptr, hinv_ptr, err_ptr, n_rows, qmin, qmax, n_cols: tl.constexpr,
                     HAS_ZERO: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        row_ok = rows < n_rows
        tile = rows[:, None] * n_cols + cols[None, :]
        in_tile = row_ok[:, None] & (cols[None, :] < n_cols)
        w = tl.load(w_ptr + tile, mask=in_tile, other=0.0)
        err = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
        for i in range(n_cols):  # a compile-time width: one specialization per block width (few)
            pick = cols[None, :] == i
            wi = tl.sum(tl.where(pick, w, 0.0), axis=1)
            si = tl.load(s_ptr + rows * n_cols + i, mask=row_ok, other=1.0)
            q = _round_half_even(tl.div_rn(wi, si))
            if HAS_ZERO:
                zi = tl.load(z_ptr + rows * n_cols + i, mask=row_ok, other=0.0)
                q = tl.minimum(tl.maximum(q + zi, qmin), qmax) - zi
            else:
                q = tl.minimum(tl.maximum(q, qmin), qmax)
            e = tl.div_rn(wi - q * si, tl.load(hinv_ptr + i * n_cols + i))
            # Hinv is upper triangular: columns before i get e * 0 and keep their values.
            h = tl.load(hinv_ptr + i * n_cols + cols, mask=cols < n_cols, other=0.0)
            w = w - e[:, None] * h[None, :]
            err = tl.where(pick, e[:, None], err)
        tl.store(w_ptr + tile, w, mask=in_tile)
        tl.store(err_ptr + tile, err, mask=in_tile)


def run_block(W1: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, Hinv1: torch.Tensor,
              qmin: int, qmax: int) -> torch.Tensor:
    """Round the columns of W1 [N, C] (float32, contiguous, updated in place to their rounded values
    plus the fed-forward errors, as the torch loop leaves them) with per-element scale [N, C] and
    zero point [N, C] (float32, or None when symmetric); Hinv1 [C, C] is the block's diagonal block
    of the upper Cholesky factor of H^-1. Returns the scaled errors Err1 [N, C]."""
    N, C = W1.shape
    if C > MAX_COLUMNS:
        raise ValueError(f"a GPTQ block of {C} columns is wider than the kernel's {MAX_COLUMNS}")
    err = torch.empty_like(W1)
    z = scale if zero is None else zero  # never read when symmetric
    grid = (triton.cdiv(N, ROWS_PER_PROGRAM),)
    _column_loop[grid](W1, scale, z, Hinv1, err, N, float(qmin), float(qmax), n_cols=C, HAS_ZERO=zero is not None,
                       BLOCK_N=ROWS_PER_PROGRAM, BLOCK_C=triton.next_power_of_2(C), num_warps=4)
    return err
