"""The gated MLP's SiLU-and-multiply, y [..., I] = silu(g) * u for x [..., 2I] = [g | u], on one kernel
(`qtool_cuda::silu_mul`, csrc/silu_mul.cu) or its PyTorch reference (the CPU path and the test oracle).

Both compute in float32 and round once; transformers rounds twice (silu to the activation dtype, then the
product), so the two differ by at most one unit in the last place. quantize/mlp.py calls it on a fused
gate/up projection's output.
"""

from __future__ import annotations

import torch

from . import build
from .layout import KERNEL_DTYPES
from .reference import silu_mul as reference_silu_mul  # x [..., 2I] -> [..., I]: silu(g) * u in float32

# Under torch.compile the reference runs and Inductor makes one kernel of it (nothing around it fuses: the GEMVs on
# either side are opaque ops). COMPILED_KERNEL runs the CUDA kernel there too, and PDL launches it as the twin that
# waits for the gate/up GEMV before reading and lets the down projection's GEMV launch at once (csrc/silu_mul.cu), so
# the three overlap their launches. Session 22 (H200, 8B W4A16 decode at batch 1, `dev/prefetch_sweep.py`): 368.0
# tok/s with the PDL twin, against 361.0 and 361.8 with Inductor's kernel in two other processes (sessions 22 and 21;
# batch 16, whose GEMMs take no PDL, 4013 vs 4008). Session 23, the same process (`--silu pdl,ref --skip-base`):
# 369.7 vs 362.3 tok/s at batch 1, 3996 vs 3974 at 16.
COMPILED_KERNEL = True
PDL = True


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> [..., I]: the CUDA kernel for fp16/bf16 CUDA tensors in eager mode (and under torch.compile
    with COMPILED_KERNEL), else the reference (which torch.compile fuses into one kernel by itself)."""
    if x.shape[-1] % 2:
        raise ValueError(f"silu_mul: the last dimension holds gate and up halves, so it must be even; got {x.shape[-1]}")
    if torch.compiler.is_compiling():
        if not (COMPILED_KERNEL and x.is_cuda and x.dtype in KERNEL_DTYPES and build.loaded()):
            return reference_silu_mul(x)
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (a no-op for a layer's output)
        return torch.ops.qtool_cuda.silu_mul(x2, int(PDL)).reshape(*x.shape[:-1], x.shape[-1] // 2)
    if not x.is_cuda or x.dtype not in KERNEL_DTYPES:
        return reference_silu_mul(x)
    ops = build.load_extension()
    if ops is None:
        return reference_silu_mul(x)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return ops.silu_mul(x2, int(PDL)).reshape(*x.shape[:-1], x.shape[-1] // 2)
