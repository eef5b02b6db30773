"""SmoothQuant (Xiao et al., 2023): migrate activation outliers into the weights before W8A8.

For each norm -> linears mapping (mappings.py), with per-input-channel maxima a_j = max|x_j| over
the calibration tokens and w_j = max over the balance linears of max_i |W_ij|, the smoothing
factor is s_j = a_j^alpha / w_j^(1 - alpha). Dividing the norm's output by s and multiplying the
linears' input columns by s leaves the float function unchanged while flattening the activation
channels that per-token INT8 quantization struggles with. Mappings whose `prev` is a linear
(v -> o, up -> down) are left alone, as in the paper. The smoothed weights are then quantized
with round-to-nearest, or with GPTQ (`weights="gptq"`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..mappings import applicable
from ..pipeline import BlockContext
from ..primitives import QTensor
from ..scheme import QuantScheme
from . import rtn
from .scaling import apply_scale


def smoothing_factors(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s [K] from activation maxima act_max [K] and the balance weights, each [N_i, K]."""
    w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0).float()
    s = act_max.float().clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp_min(1e-5)


def quantize_block(ctx: BlockContext, schemes: dict[str, QuantScheme], *, alpha: float = 0.5,
                   weights: str = "rtn", **weight_args) -> dict[str, QTensor]:
    """Smooth every norm-fed mapping of the block, then quantize the weights (rtn or gptq)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
    mappings = [m for m in ctx.arch.smooth
                if applicable(ctx.block, m) and all(b in schemes for b in m.balance)
                and not isinstance(ctx.block.get_submodule(m.prev), nn.Linear)]
    act_max: dict[str, torch.Tensor] = {}

    def observe(name, x, y):
        m = x.abs().amax(0).float()
        act_max[name] = torch.maximum(act_max[name], m) if name in act_max else m
    ctx.capture([m.balance[0] for m in mappings], observe)
    for m in mappings:
        lins = [ctx.block.get_submodule(b).weight.detach() for b in m.balance]
        s = smoothing_factors(act_max[m.balance[0]], lins, alpha)
        apply_scale(ctx.block, m, s, ctx.arch.norm_offset)
        for b in m.balance:
            ctx.record(b, "smooth_max", float(s.max()))
    if weights == "rtn":
        if weight_args:
            raise ValueError(f"unknown SmoothQuant setting(s) {sorted(weight_args)}")
        return rtn.quantize_block(ctx, schemes)
    if weights == "gptq":
        from . import gptq
        return gptq.quantize_block(ctx, schemes, **weight_args)
    raise ValueError(f"SmoothQuant weights must be quantized with 'rtn' or 'gptq', got {weights!r}")
