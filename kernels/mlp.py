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
from .layout import EPILOGUE, GATED_X_FLAG, KERNEL_DTYPES
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


# The down projection of a gated MLP with the SiLU-and-multiply in the ring GEMV's x staging (csrc/wo_xstage.cuh, the
# op's variant + GATED_X_FLAG): the fused gate/up output h goes to the GEMV as it is, every block stages silu(gate) *
# up (float32, rounded once: silu_mul's output bit for bit) and multiplies, so a batch-1 decode step has no
# SiLU-and-multiply kernel between its gate/up and down GEMVs (session 32's profile: the fifth qtool kernel of each
# W4A16 block). Written in session 32 without a GPU, unmeasured: off until measured (`dev/session33.sh`);
# QTOOL_GATED_X=1 turns it on for a process.
GATED_X = os.environ.get("QTOOL_GATED_X", "0") == "1"
GATED_STAGE_MAX_BYTES = 96 << 10  # csrc/wo_kernels.h, kXsMaxBytes: the staged x of m tokens must fit


def gated_down_linear(h: torch.Tensor, w, bias: torch.Tensor | None, kernels,
                      prefetch: torch.Tensor | None = None) -> torch.Tensor | None:
    """down(silu_mul(h)) for h [..., 2K] = [gate | up] and the down projection's packed weight w (K -> N; bias [N]
    float32 or None) on the ring GEMV with the product in its x staging -> [..., N]; `kernels` is
    torch.ops.qtool_cuda or layout.ReferenceOps. None where that GEMV does not serve these tokens (more than
    weight_only.gemv_kind's ring GEMV takes, a padded or permuted K, codes other than 4-bit in groups of >= 64 k
    or per channel, x too large to stage): the caller runs silu_mul and the layer."""
    from .weight_only import gemv_kind, gemv_variant  # (a module-level import would be circular)

    m, k = h.numel() // max(h.shape[-1], 1), w.in_features
    if not GATED_X or h.shape[-1] != 2 * k or w.k_padded != k or w.perm is not None or w.rows is not None:
        return None
    if w.num_bits != 4 or 0 < w.group_size < 64:  # the instantiated launches: one group per 64-k chunk
        return None
    if h.dtype not in KERNEL_DTYPES or gemv_kind(w, m) != "ring" or m * (k // 2 + 4) * 4 > GATED_STAGE_MAX_BYTES:
        return None
    h2 = h.reshape(m, 2 * k).contiguous()
    if not torch.compiler.is_compiling() and h2.data_ptr() % 16:  # (the op checks it under torch.compile)
        h2 = h2.clone()
    y = kernels.wo_gemv(h2, w.qweight, w.scale, w.zero, bias, w.num_bits, w.group_size, w.out_features, EPILOGUE,
                        prefetch, gemv_variant(w) + GATED_X_FLAG)
    return y.reshape(*h.shape[:-1], w.out_features)
