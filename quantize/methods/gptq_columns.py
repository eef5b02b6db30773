"""GPTQ's column loop over one lazy block of columns (`ColumnLoop`): a GPU kernel, or torch ops.

The loop in `gptq.gptq_quantize` rounds one column at a time and feeds its error into the columns
after it. Written with torch ops, every column costs about a dozen kernel launches, so on a GPU the
loop is bound by the host issuing them: on an 8B-shaped block (~39k columns over its seven linears)
that was ~2-3 s of the ~9 s per block. The rows of W are independent in this loop (only columns
interact), so one Triton program can own a tile of rows for the whole block of columns, keeping
the tile in registers: a block of 128 columns becomes one launch instead of ~1500.

The arithmetic is the torch loop's, step for step (round half to even, IEEE division), so codes
agree with it except where float contraction (a fused multiply-add in the update) moves a value
across a rounding boundary; tests/test_gptq_gpu.py bounds that.

Integer formats of 2-8 bits only; FP8 columns (a cast, not a rounding) and 1-bit ones (sign) stay
on the torch loop.
"""

from __future__ import annotations

import torch

from ..primitives import binarize, cast_fp8, int_range, row_qparams
from ..scheme import QuantArgs

try:  # Triton ships with CUDA builds of torch; CPU-only installs run the torch loop.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None

# Session 24 (H200, dev/gptq_probe.py, the kernel alone over a K / 128-pass column loop of half of each 8B linear's
# rows): 8 rows x 8 warps the fastest or within 11% of it on all four (q/k/v 2.5 ms, o 2.3, gate/up 6.2, down 7.8),
# against 16 x 4 before (3.3, 3.1, 7.3, 10.8).
ROWS_PER_PROGRAM = 8
NUM_WARPS = 8  # per program
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
                       BLOCK_N=ROWS_PER_PROGRAM, BLOCK_C=triton.next_power_of_2(C), num_warps=NUM_WARPS)
    return err


class ColumnLoop:
    """Rounds one lazy block of columns of W [N, K] (processing order, updated in place) and returns
    its scaled errors; group scales chosen in the loop (`dynamic_group`) are written into scale and
    zero_point [N, G]. On a GPU, integer formats run one Triton launch per block (the kernel above);
    elsewhere the torch loop below, whose cost on a GPU is a dozen launches per column."""

    def __init__(self, W, Hinv, args, scale, zero_point, column_scale, column_zero, dynamic_group):
        self.W, self.Hinv, self.args, self.group = W, Hinv, args, dynamic_group
        self.scale, self.zero_point, self.column_scale, self.column_zero = scale, zero_point, column_scale, column_zero
        self.kernel = available(W, args.is_float or args.binary) and (dynamic_group or 0) <= MAX_COLUMNS
        self.s = self.z = None  # the torch loop's current group scale: a group may span blocks

    def block_end(self, start: int, block_size: int) -> int:
        K = self.W.shape[1]
        if not self.kernel:
            return _block_end(start, K, block_size, self.group)
        # The kernel takes a block's scales up front, so a block is exactly one dynamic group.
        return min(start + (self.group or min(block_size, MAX_COLUMNS)), K)

    def run_block(self, i1: int, i2: int) -> torch.Tensor:
        if self.kernel:
            return self._run_kernel(i1, i2)
        return self._run_torch(i1, i2)

    def _run_kernel(self, i1: int, i2: int) -> torch.Tensor:
        W1 = self.W[:, i1:i2].contiguous()
        if self.group is not None:
            s, z = row_qparams(W1, self.args)
            self.scale[:, i1 // self.group] = s
            if self.zero_point is not None:
                self.zero_point[:, i1 // self.group] = z
            S1 = s.float()[:, None].expand_as(W1).contiguous()
            Z1 = None if z is None else z.float()[:, None].expand_as(W1).contiguous()
        else:
            S1 = self.column_scale[:, i1:i2].float().contiguous()
            Z1 = None if self.column_zero is None else self.column_zero[:, i1:i2].float().contiguous()
        qmin, qmax = int_range(self.args.num_bits)
        Err1 = run_block(W1, S1, Z1, self.Hinv[i1:i2, i1:i2].contiguous(), qmin, qmax)
        self.W[:, i1:i2] = W1
        return Err1

    def _run_torch(self, i1: int, i2: int) -> torch.Tensor:
        W, args, group = self.W, self.args, self.group
        # A contiguous copy of the block, written back below: the rank-1 updates on a strided view
        # of W run at half speed on the CPU.
        W1 = W[:, i1:i2].clone()
        Err1 = torch.empty_like(W1)
        Hinv1 = self.Hinv[i1:i2, i1:i2]
        s, z = self.s, self.z
        for i in range(i2 - i1):
            j = i1 + i
            if group is not None and j % group == 0:
                # Current values: a group starts its block (W is then current, and a group longer
                # than the block reads on past it) or ends inside it (_block_end).
                cols = W[:, j:j + group] if i == 0 else W1[:, i:i + group]
                s, z = row_qparams(cols, args)
                self.scale[:, j // group] = s
                if self.zero_point is not None:
                    self.zero_point[:, j // group] = z
            elif group is None:
                s = self.column_scale[:, j]
                z = None if self.column_zero is None else self.column_zero[:, j]
            err = (W1[:, i] - _round_column(W1[:, i], s, z, args)) / Hinv1[i, i]
            # Column i is updated too: it becomes its rounded value (up to float rounding, far below
            # half a step), so the codes are read off W once at the end, not stored per column.
            W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)
            Err1[:, i] = err
        W[:, i1:i2] = W1
        self.s, self.z = s, z
        return Err1


def _round_column(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, args: QuantArgs) -> torch.Tensor:
    """Column w [N] rounded to its grid (scale s [N], zero point z [N] or None), dequantized: the
    arithmetic of primitives.quantize + dequantize in four to six in-place steps, since GPTQ's
    column loop runs once per input feature and its cost on a GPU is the number of launches."""
    if args.is_float:
        return cast_fp8(w / s, args).float().mul_(s)
    if args.binary:
        return binarize(w / s).mul_(s)
    qmin, qmax = int_range(args.num_bits)
    q = torch.round(w / s)
    if z is None:
        return q.clamp_(qmin, qmax).mul_(s)
    zf = z.float()
    return q.add_(zf).clamp_(qmin, qmax).sub_(zf).mul_(s)


def _block_end(start: int, K: int, block_size: int, group: int | None) -> int:
    """End of the lazy block from `start`: cut before a group that would cross the block's end."""
    end = min(start + block_size, K)
    if group is not None:
        last_group_start = (end - 1) // group * group
        if start < last_group_start and min(last_group_start + group, K) > end:
            end = last_group_start
    return end
