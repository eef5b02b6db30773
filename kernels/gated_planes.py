"""A gated MLP's down projection on the int8 planes of silu(gate) * up (x_planes' gated form).

In a decode step the down projection's input is made by `silu_mul` (csrc/silu_mul.cu), and where the down layer runs
the planes pair (int8_planes.planes_route) `x_planes` reads that product back to write its planes: two small kernels,
each a dependent launch. `x_planes(gu, gated=1)` reads the gate/up output once and writes the planes of the product
it would have written (silu(gate) * up rounded once to the activation dtype, csrc/wo_planes.cu), so `silu_mul` is not
launched and the down GEMV gets its planes as if given: one token then takes the pair on every 4-bit shape, where the
planes-given GEMV measured 2.9-3.7x bf16 against the ring GEMV's 2.2-2.8x (session 38, `dev/planes_ab.py`'s g
columns; 8B down 14336 x 4096: 3.16x against 2.75x). 2- and 3-bit down weights keep the producer-paid rule
(lowbit_planes_route): W2 on 14336 x 4096 measured 2.70x given against the ring's 3.16x.

Written in session 38 without device time; measured in session 39 (H200, `qtool bench llama-8b --scheme w4a16`, one
process each) and left off: 437.8 tok/s (2.21x bf16) against 460.7 (2.32x) without at batch 1, 2.23x against 2.27x
at batch 4. One block per token reading [gate | up] and taking the row's max is a serial chain on one SM where
silu_mul spreads over the GPU, and the down GEMV's given planes do not pay for it. Off unless QTOOL_GATED_PLANES=1
(read once); 1-4 tokens. quantize/mlp.py (GatedMLP) calls it.
"""

from __future__ import annotations

import os

import torch

from .int8_planes import PLANES_MAX_M, given_planes_linear, lowbit_planes_route, planes_route
from .layout import LOW_BITS, PackedWeight

GATED_PLANES = os.environ.get("QTOOL_GATED_PLANES", "0") == "1"
MAX_K = 32768  # csrc/wo_kernels.h, kXPlanesMaxGatedK: the gated form holds a token in registers


def route(w: PackedWeight, m: int) -> int | None:
    """wo_planes_gemv's launch for m tokens into the down weight `w` with the planes from the gated x_planes, or
    None: switched off, act-order or row-major weights, K past MAX_K, or outside the planes' rules."""
    if not GATED_PLANES or w.rows is not None or w.perm is not None or w.k_padded > MAX_K or m > PLANES_MAX_M:
        return None
    if w.num_bits in LOW_BITS:
        return lowbit_planes_route(w, m)
    return planes_route(w, m, free=True)


def down_linear(gate_up: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, kernels,
                prefetch: torch.Tensor | None = None) -> torch.Tensor | None:
    """silu(gate) * up of gate_up [m, 2I] times the down weight W [N, I]^T, + bias -> [m, N]; None where the route
    does not take it (or I is not K_pad: the planes would have to be padded). `kernels`: torch.ops.qtool_cuda or
    layout.ReferenceOps."""
    m, width = gate_up.shape
    if (gate_up.dtype not in (torch.bfloat16, torch.float16) or width != 2 * w.k_padded
            or (variant := route(w, m)) is None):
        return None
    gate_up = gate_up.contiguous()
    if not torch.compiler.is_compiling() and gate_up.data_ptr() % 16:
        gate_up = gate_up.clone()
    planes, xscale = kernels.x_planes(gate_up, 1, 0, 1)
    return given_planes_linear(planes, xscale, w, bias, kernels, variant, gate_up.dtype, prefetch)
