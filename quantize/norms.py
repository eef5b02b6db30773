"""RMSNorm as one kernel: transformers' RMSNorm modules replaced by `F.rms_norm`, for eager prefill speed.

transformers computes RMSNorm as five or six eager kernels with float32 intermediates (cast, square, mean,
rsqrt, multiply, cast back, multiply by the weight): at 2048 tokens of an 8B model about 300 MB of traffic per
norm where the input and output are 32 MB. `F.rms_norm` is one fused kernel on CUDA (torch's
`_fused_rms_norm`). Session 12 found the non-GEMM kernels of the eager 8B prefill, the norms most of them,
taking as much GPU time as the W8A8 GEMMs themselves (BENCHMARKS.md), so they bound the prefill speedup.

Numerics: the same formula, rounded once (weight * x * rsqrt(mean(x^2) + eps) in float32, then to the input's
dtype) where Llama's code rounds twice (the normalized x to bf16, then its product with the weight): outputs
differ by at most one unit in the last place, and are closer to the exact value. Under torch.compile both
forms fuse anyway; the gain is eager.

Which modules: the classes named in `RMS_NORMS` (architecture knowledge as data), each with its epsilon
attribute. Gemma's RMSNorm scales by (1 + weight) and is not one of them. The replacement keeps the weight
Parameter under the same name, so state dicts are unchanged. `qtool bench` applies it with --fuse (the
default) to the quantized model, like the projection fusion, and with --fuse-baseline to the bf16 baseline too.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .linear import set_submodule

# transformers class name -> the attribute holding epsilon; each computes weight * x * rsqrt(mean(x^2) + eps)
# over the last dimension.
RMS_NORMS: dict[str, str] = {
    "LlamaRMSNorm": "variance_epsilon",
    "MistralRMSNorm": "variance_epsilon",
    "MixtralRMSNorm": "variance_epsilon",
    "Qwen2RMSNorm": "variance_epsilon",
    "Qwen3RMSNorm": "variance_epsilon",
    "Qwen3MoeRMSNorm": "variance_epsilon",
    "Phi3RMSNorm": "variance_epsilon",
    "Olmo2RMSNorm": "variance_epsilon",
}


class FusedRMSNorm(nn.Module):
    """y [..., D] = F.rms_norm(x [..., D]) with the replaced module's weight [D] and epsilon."""

    def __init__(self, weight: nn.Parameter, eps: float) -> None:
        super().__init__()
        self.weight = weight
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight.to(x.dtype), self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


def fuse_norms(model: nn.Module) -> int:
    """Replace every module of a class in RMS_NORMS by a FusedRMSNorm sharing its weight; returns how many."""
    names = [name for name, module in model.named_modules() if type(module).__name__ in RMS_NORMS]
    for name in names:
        module = model.get_submodule(name)
        eps = getattr(module, RMS_NORMS[type(module).__name__])
        set_submodule(model, name, FusedRMSNorm(module.weight, float(eps)))
    return len(names)
