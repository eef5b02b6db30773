"""Folding per-channel scales between a layer and the linears that read its output (AWQ, SmoothQuant)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..mappings import Smooth


@torch.no_grad()
def apply_scale(block: nn.Module, smooth: Smooth, s: torch.Tensor, norm_offset: float = 0.0) -> None:
    """Multiply the balance linears' input columns by s and divide `prev`'s outputs by s.

    For a norm computing x_hat * (offset + weight) (offset 1 for Gemma), the new weight is
    (offset + weight) / s - offset.
    """
    prev = block.get_submodule(smooth.prev)
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s.to(prev.weight.dtype).unsqueeze(1))
        if prev.bias is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
    else:
        w = prev.weight.float()
        prev.weight.copy_(((norm_offset + w) / s - norm_offset).to(prev.weight.dtype))
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
    for name in smooth.balance:
        lin = block.get_submodule(name)
        lin.weight.mul_(s.to(lin.weight.dtype))
