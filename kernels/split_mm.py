"""W8A16 on the int8 tensor cores: 16-bit activations as two int8 planes.

x [m, K] (bf16 or fp16) becomes hi and lo, int8 [m, K] each, with per-token scales s and s / 255 (act_quant's
"int8x2", reference.split_activation): x = s * hi + (s / 255) * lo + e, |e| <= s / 510, about 2^-16 of the row's
max|x|, below bf16's own rounding of all but a row's smallest entries. One int8 GEMM over the 2m rows [hi; lo]
against the 8-bit weights (per-channel scales, the row-major layout of layout.pack_rows) gives y's two parts,
summed in the activation dtype: exact integer products, so the error is the planes' e and the output roundings.

Why: on small weights at 33-256 tokens the mixed-input GEMM (int8 -> bf16 in registers before each wgmma) runs
0.65-0.78x bf16, bound by its own instruction stream (kernels/NOTES.md, session 16), while the int8 GEMMs stream the
same codes at W8A8's speed; twice the rows cost a bandwidth-bound int8 GEMM little. Measured (session 23, H200): 4096
x 4096 at 64-128 tokens 0.65-0.70x -> 0.79x, 4096 x 6144 at 64 0.78x -> 0.88x; slower on larger weights, where the
mixed-input GEMM already runs 1.0-1.5x, and at 512 tokens (compute-bound: 2m int8 rows take as long as m bf16 rows).
weight_only.SPLIT routed it there from session 23; since session 48 it is off by default (the mixed-input GEMM under
PDL with ordered split adds now wins those cells: 4096 x 4096 at 64 tokens 12.7 against 16.9 us in the H100 A/B)
and kept for A/Bs.
"""

from __future__ import annotations

import torch

from . import build, reference, scaled_mm
from .layout import KERNEL_DTYPES

SPLIT_MAX_K = 32768  # csrc/w8a8.h, kMaxSplitK: act_quant's held rows


def split_activation(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [m, K] -> codes [2m, K] int8, scales [2m, 1] float32: act_quant "int8x2" where it fits, else the reference."""
    kernels = build.load_extension() if x2.is_cuda else None
    aligned = torch.compiler.is_compiling() or x2.data_ptr() % 16 == 0  # traced: the op checks it
    fits = (x2.dtype in KERNEL_DTYPES and x2.is_contiguous() and x2.shape[1] % 8 == 0
            and x2.shape[1] <= SPLIT_MAX_K and aligned)
    if kernels is None or not fits:
        return reference.split_activation(x2)
    return kernels.act_quant(x2, "int8x2", 0, None)


def split_linear(x2: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 measured: bool = True) -> torch.Tensor | None:
    """x2 [m, K] @ (rows [N, K] int8 * scale)^T + bias -> [m, N] in x2's dtype, through the two planes.

    scale: per output channel, [N] or [1, N] float32. bias: [N] or None.
    measured: only where tuning.W8A8 has an int8 route for 2m tokens (Hopper: libqtool_sm90 or cuBLAS); None
    otherwise (the CPU included), and where no GEMM takes the shapes, so the caller runs its other routes. Without
    it, any GEMM that fits, or on the CPU the reference (tests).
    """
    m, (n, k) = x2.shape[0], rows.shape
    route = scaled_mm.w8a8_route(2 * m, n, k, "int8") if x2.is_cuda else None
    if measured and route is None:
        return None
    codes, scales = split_activation(x2)
    if x2.is_cuda:
        y2 = scaled_mm.scaled_mm(codes, scales, rows, scale.reshape(-1), None, 0, 0, 0, x2.dtype, route)
    else:
        y2 = reference.scaled_linear(codes, scales, rows, scale.reshape(-1, 1), None, 0, 0, 0, torch.float32)
    if y2 is None:
        return None
    y = (y2[:m] + y2[m:]).to(x2.dtype)
    return y if bias is None else y + bias.to(y.dtype)
