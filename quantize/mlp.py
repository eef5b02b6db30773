"""Gated MLPs as two quantized layers and one SiLU-and-multiply kernel, for inference speed.

transformers' gated MLP computes down(act(gate(x)) * up(x)): with gate and up fused into one layer
(quantize/fusion.py) that is still a SiLU kernel over the strided gate half, writing a temporary, and a
product reading it back with the up half. `GatedMLP` runs down(silu_mul(gate_up(x))): gate and up stacked as
one layer (fusion.fuse_layers: a QuantLinear, or an nn.Linear in a float model) and `qtool_kernels.mlp.silu_mul`,
one pass that reads the fused output once and writes the product (csrc/silu_mul.cu; float32 arithmetic rounded
once, where transformers rounds twice: at most one unit in the last place apart). Under torch.compile the same
kernel runs, launched as its PDL twin (`qtool_kernels.mlp.COMPILED_KERNEL`, `PDL`). A W8A8 gate/up layer computes
the product itself (`QuantLinear.forward_gated`): in its GEMV's epilogue at up to `scaled_mm.SWIGLU_GEMV_MAX_M`
tokens (per-channel int8 and E4M3 codes, `scaled_mm.SWIGLU_CODES`), so a batch-1 decode step has one kernel fewer
per block. With QTOOL_GATED_PLANES=1 (unmeasured, off) a weight-only down layer that runs the int8 planes pair takes
the planes of the product straight from the gate/up output (qtool_kernels/gated_planes.py), without `silu_mul`.
By default (qtool_kernels/mlp.py GATED_EPILOGUE, measured in session 51; QTOOL_GATED_EPILOGUE=0: off) a weight-only
gate/up layer's rows are interleaved by 8 when fused (`interleave_gate_up`), so the int8-planes GEMV writes
silu(gate) * up from its epilogue (1-8 tokens of 4-bit weights on the 8B) and other kernels' outputs go through
`silu_mul`'s interleaved form. The two opt-in A/B knobs that read the halves (QTOOL_GATED_PLANES,
QTOOL_FUSED_PLANES) keep the halves when set.

Which modules: the classes of `GATED_MLPS` (architecture knowledge as data: their projection names) whose
activation is SiLU and whose gate and up projections can run as one layer (`fusion.incompatibility`). Like
the projection fusion, it is an inference-time transform: the state dict of a replaced MLP is refused.
`qtool bench --fuse` (the default) applies it to the quantized model before `fuse_projections`, and
`--fuse-baseline` to the float baseline too.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from qtool_kernels import gated_planes, int8_planes
from qtool_kernels.layout import PackedWeight
from qtool_kernels.mlp import GATED_EPILOGUE, silu_mul
from qtool_kernels.reference import silu_mul as reference_silu_mul  # [..., 2I] -> [..., I], rounded once

from .fusion import fuse_layers, incompatibility, refuse_state_dict
from .linear import (
    QuantLinear,
    cuda_linear,
    fuses_planes,
    kernel_args,
    prepare_for_cuda,
    prepared_weight,
    set_submodule,
)
from .scheme import Strategy

# transformers class name -> (gate, up, down) attribute names; each computes down(act_fn(gate(x)) * up(x)).
GATED_MLPS: dict[str, tuple[str, str, str]] = {
    "LlamaMLP": ("gate_proj", "up_proj", "down_proj"),
    "MistralMLP": ("gate_proj", "up_proj", "down_proj"),
    "Qwen2MLP": ("gate_proj", "up_proj", "down_proj"),
    "Qwen3MLP": ("gate_proj", "up_proj", "down_proj"),
    "Qwen3MoeMLP": ("gate_proj", "up_proj", "down_proj"),
    "Olmo2MLP": ("gate_proj", "up_proj", "down_proj"),
}


class GatedMLP(nn.Module):
    """y [..., H] = down(silu_mul(gate_up(x [..., H]))), gate_up [..., 2I] the gate rows then the up rows, or
    (interleaved, interleave_gate_up) 8 gate rows then their 8 up rows per 16."""

    def __init__(self, gate_up: QuantLinear | nn.Linear, down: nn.Module, interleaved: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = gate_up
        self.down_proj = down
        self.interleaved = interleaved
        self.register_state_dict_pre_hook(refuse_state_dict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.interleaved:
            return self.down_proj(_interleaved_product(self.gate_up_proj, x))
        m = x.numel() // x.shape[-1]
        if fuses_planes(self.down_proj, m):  # Inductor: the product and down's int8 planes
            return self.down_proj(reference_silu_mul(self.gate_up_proj(x)))
        if (down := _planes_down(self.down_proj, x, m)) is not None:  # QTOOL_GATED_PLANES
            gate_up = self.gate_up_proj(x)
            y = gated_planes.down_linear(gate_up.reshape(m, -1), down, self.down_proj.cuda_bias, torch.ops.qtool_cuda,
                                         self.down_proj.cuda_prefetch)
            return self.down_proj(silu_mul(gate_up)) if y is None else y.reshape(*x.shape[:-1], -1)
        gated = getattr(self.gate_up_proj, "forward_gated", None)  # a QuantLinear: W8A8 fuses the product
        return self.down_proj(gated(x) if gated is not None else silu_mul(self.gate_up_proj(x)))


def _planes_down(layer: nn.Module, x: torch.Tensor, m: int) -> PackedWeight | None:
    """The down layer's packed weight where m tokens of x take the planes of silu(gate) * up straight from the gate/up
    output (qtool_kernels/gated_planes.py, QTOOL_GATED_PLANES), else None: a weight-only QuantLinear on CUDA, no
    gradient."""
    if (not gated_planes.GATED_PLANES or not isinstance(layer, QuantLinear) or not x.is_cuda
            or x.dtype not in (torch.bfloat16, torch.float16) or layer.scheme.input_activations is not None
            or layer.scheme.weights.binary or (x.requires_grad and torch.is_grad_enabled())):
        return None
    packed = prepared_weight(layer) if torch.compiler.is_compiling() else prepare_for_cuda(layer)
    return packed if packed is not None and gated_planes.route(packed, m) is not None else None


def interleave_gate_up(layer: QuantLinear) -> bool:
    """Reorder a fused [gate; up] layer's rows in place as 8 gate rows, then those 8 rows' up rows, per 16
    (GATED_EPILOGUE: a planes GEMV lane holds rows g and g + 8, so its epilogue can write silu(gate) * up). False, and
    the layer unchanged, unless it is a weight-only integer layer with scales per row or group and 16 | N."""
    n, weights = layer.out_features, layer.scheme.weights
    if (layer.scheme.input_activations is not None or weights.binary or n % 16 or kernel_args(layer.scheme) is None
            or weights.strategy not in (Strategy.CHANNEL, Strategy.GROUP)):
        return False
    order = torch.arange(n).view(2, n // 16, 8).transpose(0, 1).reshape(-1)  # new row r is old row order[r]
    for name in ("weight_packed", "weight", "weight_scale", "weight_zero_point", "bias"):
        t = getattr(layer, name, None)
        if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == n:
            t.data = t.data[order.to(t.device)]
    return True


def _interleaved_product(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up [..., I] of an interleaved gate / up layer: the CUDA kernels (the planes GEMV's epilogue where
    the planes run) or the layer's forward and the reference."""
    needs_grad = x.requires_grad and torch.is_grad_enabled()  # (the CUDA kernels have no backward)
    if x.is_cuda and not needs_grad and (y := cuda_linear(layer, x, gated=True)) is not None:
        return y
    return silu_mul(layer(x), interleaved=True)


def _is_silu(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def fuse_mlps(model: nn.Module) -> int:
    """Replace each gated SiLU MLP of a GATED_MLPS class whose gate and up projections fuse by a GatedMLP;
    returns how many. In place; inference only (module docstring)."""
    count = 0
    for name, module in list(model.named_modules()):
        names = GATED_MLPS.get(type(module).__name__)
        if names is None or not _is_silu(module):
            continue
        gate, up, down = (getattr(module, n, None) for n in names)
        if gate is None or up is None or down is None or incompatibility([gate, up]) is not None:
            continue
        gate_up = fuse_layers([gate, up])
        for layer in (gate_up, down):  # inputs from an RMSNorm and from the product: kernels Inductor generates
            if isinstance(layer, QuantLinear):
                layer.planes_fuse = True
        if isinstance(gate_up, QuantLinear):
            gate_up.norm_input = True
        halves = gated_planes.GATED_PLANES or int8_planes.FUSED_PLANES  # their paths read [gate | up]
        interleaved = GATED_EPILOGUE and not halves and isinstance(gate_up, QuantLinear) and interleave_gate_up(gate_up)
        set_submodule(model, name, GatedMLP(gate_up, down, interleaved))
        count += 1
    return count
