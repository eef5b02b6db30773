"""Differentiable fake quantization for quantization-aware training (`qtool finetune`).

The forward pass computes exactly what a QuantLinear of the same scheme computes (codes from
`primitives.quantize`, weight (q - z) * s in float32), so a trained layer exports without changing its
output. The backward pass follows:
  - the straight-through estimator (Bengio et al. 2013): rounding passes gradients unchanged; clamping
    to the code range stops them, as in LSQ;
  - LSQ (Esser et al., "Learned Step Size Quantization", 2020): the scale is a parameter whose gradient,
    through the STE, is round(w/s) - w/s inside the range and qmin/qmax - z outside; it is multiplied by
    g = 1 / sqrt(elements per scale * Qp) so that scales and weights learn at comparable rates;
  - LSQ+ (Bhalgat et al. 2020): asymmetric schemes learn a float zero point, rounded (STE) in the forward;
  - 1-bit weights (BinaryConnect, Courbariaux et al. 2015): sign in the forward, the clipped identity
    (gradient where |w/s| <= 1) in the backward; the scale learns like LSQ's.
Nothing here depends on the autograd of the qtool ops: training never calls them.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .primitives import QTensor, binarize, choose_qparams, expand, int_range, quantize
from .scheme import QuantArgs, Strategy

MIN_SCALE = 1e-8  # scales are clamped to this after each step: a step below it would give inf codes


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward. Written as value + (t - t.detach()) so the forward is the value
    bit for bit (x + (round(x) - x) can be an ulp off an integer): the export must reproduce it exactly."""
    return torch.round(x).detach() + (x - x.detach())


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (sign(0) = +1) forward; gradient passed where |x| <= 1 (BinaryConnect's clipped identity)."""
    clipped = x.clamp(-1, 1)
    return binarize(x).detach() + (clipped - clipped.detach())


def grad_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x forward (exactly), gradient multiplied by `factor` (LSQ's step-size gradient scale)."""
    scaled = x * factor
    return x.detach() + (scaled - scaled.detach())


def lsq_factor(args: QuantArgs, shape: tuple[int, int]) -> float:
    """LSQ's g = 1 / sqrt(elements per scale * Qp), Qp the largest positive code (1 for 1-bit)."""
    n, k = shape
    per_scale = {Strategy.GROUP: min(args.group_size or k, k), Strategy.CHANNEL: k, Strategy.TENSOR: n * k}
    if args.strategy not in per_scale:
        raise ValueError(f"finetune trains group, channel or tensor scales, not {args.strategy.value}")
    return 1.0 / math.sqrt(per_scale[args.strategy] * max(int_range(args.num_bits)[1], 1))


def fake_quantize_weight(weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                         args: QuantArgs, g_idx: torch.Tensor | None = None, factor: float = 1.0) -> torch.Tensor:
    """The dequantized weight [N, K] (float32) of `weight` under trainable `scale` and float `zero_point`,
    differentiable in all three; equal to primitives.dequantize(primitives.quantize(...)) with the zero
    point rounded."""
    s = expand(grad_scale(scale, factor), weight.shape, args, g_idx)
    u = weight.float() / s
    if args.binary:
        return sign_ste(u) * s
    qmin, qmax = int_range(args.num_bits)
    if zero_point is None:
        return torch.clamp(round_ste(u), qmin, qmax) * s
    z = expand(round_ste(grad_scale(zero_point, factor)).clamp(qmin, qmax), weight.shape, args, g_idx)
    return (torch.clamp(round_ste(u) + z, qmin, qmax) - z) * s


class FakeQuantLinear(nn.Module):
    """A linear layer trained under fake quantization: float32 master weight, scale and zero point.

    weight [N, K], scale like primitives.scale_shape, zero_point (asymmetric) like scale but float;
    g_idx [K] (act-order from GPTQ) is a fixed buffer. `export()` gives the QTensor a QuantLinear stores.
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, args: QuantArgs,
                 bias: torch.Tensor | None = None, g_idx: torch.Tensor | None = None) -> None:
        super().__init__()
        self.args = args
        self.out_features, self.in_features = weight.shape
        self.weight = nn.Parameter(weight.detach().float().clone())
        self.scale = nn.Parameter(scale.detach().float().clone())
        self.zero_point = None if zero_point is None else nn.Parameter(zero_point.detach().float().clone())
        self.register_buffer("g_idx", None if g_idx is None else g_idx.clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.factor = lsq_factor(args, tuple(weight.shape))

    @classmethod
    def from_linear(cls, linear: nn.Linear, args: QuantArgs, init: QTensor | None = None) -> FakeQuantLinear:
        """From a float linear and, optionally, a quantized weight to start from (GPTQ's, a checkpoint's):
        the master weight is then the dequantized init, whose codes it reproduces; else RTN's scales."""
        if init is None:
            scale, zp = choose_qparams(linear.weight.detach().float(), args)
            return cls(linear.weight, scale, zp, args, linear.bias)
        weight = init.dequantize(torch.float32)
        if args.binary:
            # +-s sits on the edge of the clipped identity's window |w/s| <= 1, where the gradient may
            # stop; the middle of the code's cell (0, 1] keeps the sign and lets the weight move.
            weight = weight / 2
        return cls(weight, init.scale, init.zero_point, args, linear.bias, init.g_idx)

    def quantized_weight(self) -> torch.Tensor:
        return fake_quantize_weight(self.weight, self.scale, self.zero_point, self.args, self.g_idx, self.factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.quantized_weight()
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        return F.linear(x.to(dtype), w.to(dtype), bias)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Keep scales positive (and zero points in range) after an optimizer step."""
        self.scale.clamp_(min=MIN_SCALE)
        if self.zero_point is not None:
            self.zero_point.clamp_(*int_range(self.args.num_bits))

    @torch.no_grad()
    def export(self) -> QTensor:
        """Codes, scale and int8 zero point that QuantLinear stores: its output equals this layer's."""
        scale = self.scale.detach().float().clamp(min=MIN_SCALE)
        zp = None
        if self.zero_point is not None:
            zp = torch.round(self.zero_point.detach()).clamp(*int_range(self.args.num_bits)).to(torch.int8)
        codes = quantize(self.weight.detach().float(), scale, zp, self.args, self.g_idx)
        return QTensor(codes, scale.clone(), zp, self.args, None if self.g_idx is None else self.g_idx.clone())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.args.describe()} (fake)"


def fake_layers(module: nn.Module) -> dict[str, FakeQuantLinear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, FakeQuantLinear)}


def trainable(module: nn.Module, step_lr: float | None, scale_lr: float) -> list[dict]:
    """Optimizer parameter groups of the fake-quant layers in `module`, with learning rates in the units of
    each layer's own quantization step (its mean scale): weights move `step_lr` steps per Adam step, scales
    change by `scale_lr` of themselves, zero points (already in steps) by `step_lr`. One absolute rate would
    not fit: scales differ by more than 10x between layers, and Adam's updates do not scale with gradients.
    step_lr None: weights and zero points stay frozen (only scales learn)."""
    groups = []
    for m in fake_layers(module).values():
        unit = float(m.scale.detach().abs().mean())
        groups.append({"params": [m.scale], "lr": scale_lr * unit})
        if step_lr is not None:
            groups.append({"params": [m.weight], "lr": step_lr * unit})
            if m.zero_point is not None:
                groups.append({"params": [m.zero_point], "lr": step_lr})
    return groups
