"""CUDA implementation of qtool::scaled_linear on PyTorch's own GEMMs, until qtool has W8A8 kernels (issue 7).

  FP8 (e4m3 x e4m3)  torch._scaled_mm with row-wise scales: per-token (or per-tensor, broadcast) x
                     per-channel (or per-tensor); needs K and N multiples of 16. Row-wise scaling
                     writes bfloat16 (or float32 for other output dtypes, then cast).
  INT8               torch._int_mm (int32 accumulation; needs m > 16, K and N multiples of 8: small m
                     is zero-padded to 17 rows), then scales and bias in float32.
Activation groups and weight blocks (e.g. FP8 block-128) and any other shape use the reference.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from . import ops, reference

INT_MM_MIN_M = 17  # torch._int_mm on CUDA needs more than 16 rows
FP8_MIN_CAPABILITY = (8, 9)  # FP8 matrix units: Ada (sm_89) and Hopper (sm_90) onwards
_warned: set[str] = set()


def _has_fp8_units(device: torch.device) -> bool:
    """Whether the GPU multiplies FP8 natively; warns once, and the caller dequantizes, when it does not."""
    if device.type != "cuda":
        return _cpu_has_rowwise_fp8()  # CPU tensors only reach here from tests
    if torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY:
        return True
    if "fp8" not in _warned:
        _warned.add("fp8")
        warnings.warn(f"{torch.cuda.get_device_name(device)} has no FP8 matrix units: FP8 layers run as "
                      "dequantize + 16-bit GEMM (weight-only speed)", RuntimeWarning, stacklevel=3)
    return False


@functools.cache
def _cpu_has_rowwise_fp8() -> bool:
    """Whether this PyTorch's CPU torch._scaled_mm takes row-wise scales (2.13 does; 2.11 is per-tensor only)."""
    a = torch.ones(2, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(2, 1), scale_b=torch.ones(1, 2), out_dtype=torch.float32)
    except RuntimeError:
        return False
    return True


def _rowwise(scale: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-row float32 scales [rows, 1] from [rows, 1] or a per-tensor [1]."""
    return scale.float().reshape(-1, 1).expand(rows, 1).contiguous()


def scaled_mm(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None, x_group_size: int, w_block_n: int, w_block_k: int,
              out_dtype: torch.dtype) -> torch.Tensor | None:
    """qtool::scaled_linear on torch._scaled_mm / torch._int_mm; None when neither fits (see module docstring)."""
    m, k = xq.shape
    if x_group_size > 0 or w_block_n > 0 or m == 0:
        return None
    n = wq.shape[0]
    sx = _rowwise(x_scale, m)  # [m, 1]
    sw = _rowwise(w_scale, n).t()  # [1, n]
    if xq.dtype == torch.int8 and wq.dtype == torch.int8:
        if k % 8 or n % 8:
            return None
        xp = F.pad(xq, (0, 0, 0, INT_MM_MIN_M - m)) if m < INT_MM_MIN_M else xq
        acc = torch._int_mm(xp.contiguous(), wq.t())[:m]
        y = acc.float() * sx * sw
    elif xq.dtype == wq.dtype == torch.float8_e4m3fn:
        if k % 16 or n % 16 or not _has_fp8_units(xq.device):
            return None
        mm_dtype = torch.bfloat16 if out_dtype == torch.bfloat16 else torch.float32
        y = torch._scaled_mm(xq.contiguous(), wq.t(), scale_a=sx, scale_b=sw.contiguous(), out_dtype=mm_dtype)
    else:
        return None
    if bias is not None:
        y = y.float() + bias.float()
    return y.to(out_dtype)


@ops.scaled_linear.register_kernel("cuda")
def _scaled_linear_cuda(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype):
    y = scaled_mm(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype)
    if y is None:
        return reference.scaled_linear(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype)
    return y
