"""The gated MLP's SiLU-and-multiply, y [..., I] = silu(g) * u for x [..., 2I] = [g | u], on one kernel
(`qtool_cuda::silu_mul`, csrc/silu_mul.cu) or its PyTorch reference (the CPU path and the test oracle).

Both compute in float32 and round once; transformers rounds twice (silu to the activation dtype, then the
product), so the two differ by at most one unit in the last place. quantize/mlp.py calls it on a fused
gate/up projection's output.
"""

from __future__ import annotations

import os

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
# A weight-only gated MLP's gate/up rows interleaved by 8 (quantize/mlp.py), so that the int8-planes GEMV (1-8 tokens
# of 4-bit weights on the 8B) writes silu(gate) * up from its epilogue (csrc/planes.cuh, store_stripes): no silu_mul
# launch between gate/up and down; other routes run silu_mul on the interleaved output. Session 51 (H100, 8B W4A16
# decode steps, dev/step_ab.py, two processes with bf16 at 158.1-158.2 tok/s in both): batch 1 394.1 -> 407.8 tok/s,
# 4 1449 -> 1507, 8 2769 -> 2795. QTOOL_GATED_EPILOGUE=0 (read when the MLPs are fused): halves, as before.
GATED_EPILOGUE = os.environ.get("QTOOL_GATED_EPILOGUE", "1") != "0"


def silu_mul(x: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """x [..., 2I] -> [..., I]: the CUDA kernel for fp16/bf16 CUDA tensors in eager mode (and under torch.compile
    with COMPILED_KERNEL), else the reference (which torch.compile fuses into one kernel by itself). interleaved:
    x's gate and up alternate by 8 columns (GATED_EPILOGUE's layout), so the last dimension is a multiple of 16."""
    if x.shape[-1] % (16 if interleaved else 2):
        need = "a multiple of 16 (gate and up by 8 columns)" if interleaved else "even (gate and up halves)"
        raise ValueError(f"silu_mul: the last dimension must be {need}; got {x.shape[-1]}")
    flags = int(PDL) | (2 if interleaved else 0)  # the op's pdl argument: bit 1, the interleaved layout
    if torch.compiler.is_compiling():
        if not (COMPILED_KERNEL and x.is_cuda and x.dtype in KERNEL_DTYPES and build.loaded()):
            return reference_silu_mul(x, interleaved)
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (a no-op for a layer's output)
        return torch.ops.qtool_cuda.silu_mul(x2, flags).reshape(*x.shape[:-1], x.shape[-1] // 2)
    if not x.is_cuda or x.dtype not in KERNEL_DTYPES:
        return reference_silu_mul(x, interleaved)
    ops = build.load_extension()
    if ops is None:
        return reference_silu_mul(x, interleaved)
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1 or (interleaved and (x2.stride(0) % 8 or x2.data_ptr() % 16)):
        x2 = x2.contiguous()
    return ops.silu_mul(x2, flags).reshape(*x.shape[:-1], x.shape[-1] // 2)
