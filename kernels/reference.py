"""Pure-PyTorch reference of every qtool op: the CPU path and the oracle the CUDA kernels are tested against.

Each function mirrors one op in `ops.py` argument for argument. They compute in float32
(dequantize, then matmul) and return the activation dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantize.primitives import choose_qparams, dequantize, quantize, unpack_int
from quantize.scheme import QuantArgs, QuantType, Strategy


def weight_args(num_bits: int, group_size: int, symmetric: bool) -> QuantArgs:
    """QuantArgs of an integer weight; group_size <= 0 means one scale per output channel."""
    if group_size <= 0:
        return QuantArgs(num_bits=num_bits, symmetric=symmetric, strategy=Strategy.CHANNEL)
    return QuantArgs(num_bits=num_bits, symmetric=symmetric, strategy=Strategy.GROUP, group_size=group_size)


def unpack_weight(qweight: torch.Tensor, num_bits: int, in_features: int) -> torch.Tensor:
    """qweight: [N, ceil(K / (32 // bits))] int32 for bits < 8, or [N, K] int8 -> codes [N, K] int8."""
    return qweight if num_bits == 8 else unpack_int(qweight, num_bits, in_features)


def weight_only_linear(
    x: torch.Tensor,  # [..., K] fp16/bf16/fp32 activations
    qweight: torch.Tensor,  # [N, ceil(K/pack)] int32, or [N, K] int8 when num_bits == 8
    scale: torch.Tensor,  # [N, G] float32, G = ceil(K / group_size) (1 per channel)
    zero_point: torch.Tensor | None,  # [N, G] int8, None when symmetric
    g_idx: torch.Tensor | None,  # [K] int32 group of each input (act-order), None when contiguous
    bias: torch.Tensor | None,  # [N]
    num_bits: int,
    group_size: int,  # <= 0: per output channel
    in_features: int,
) -> torch.Tensor:  # [..., N] in x.dtype
    args = weight_args(num_bits, group_size, zero_point is None)
    q = unpack_weight(qweight, num_bits, in_features)
    w = dequantize(q, scale, zero_point, args, x.dtype, g_idx)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def activation_args(fmt: str, group_size: int, static: bool) -> QuantArgs:
    """QuantArgs of a symmetric activation: fmt "int8" | "e4m3" | "e5m2"; group_size 0 = per token."""
    kw = dict(num_bits=8, type=QuantType.INT) if fmt == "int8" else dict(num_bits=8, type=QuantType.FLOAT, fp_format=fmt)
    if static:
        return QuantArgs(**kw, strategy=Strategy.TENSOR)
    if group_size > 0:
        return QuantArgs(**kw, strategy=Strategy.GROUP, group_size=group_size, dynamic=True)
    return QuantArgs(**kw, strategy=Strategy.TOKEN, dynamic=True)


def quantize_activation(
    x: torch.Tensor,  # [M, K]
    fmt: str,  # "int8" | "e4m3" | "e5m2"
    group_size: int,  # 0: one scale per token; g > 0: one per 1 x g group
    static_scale: torch.Tensor | None,  # [1] float32 from calibration; None for dynamic
) -> tuple[torch.Tensor, torch.Tensor]:  # codes [M, K] (int8 or fp8), scale [M, 1] / [M, ceil(K/g)] / [1]
    args = activation_args(fmt, group_size, static_scale is not None)
    # A copy of the static scale: a custom op's outputs may not alias its inputs.
    scale = static_scale.float().reshape(1).clone() if static_scale is not None else choose_qparams(x, args)[0]
    return quantize(x, scale, None, args), scale


def scaled_linear(
    xq: torch.Tensor,  # [M, K] int8 or fp8 codes
    x_scale: torch.Tensor,  # [M, 1] per token, [M, ceil(K/g)] per 1 x g group, or [1] per tensor
    wq: torch.Tensor,  # [N, K] int8 or fp8 codes
    w_scale: torch.Tensor,  # [N, 1] per channel, [1] per tensor, or [ceil(N/bn), ceil(K/bk)] per block
    bias: torch.Tensor | None,  # [N]
    x_group_size: int,  # g of the activation groups, 0 if per token/tensor
    w_block_n: int,  # bn x bk weight blocks, 0 if per channel/tensor
    w_block_k: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:  # [M, N] out_dtype
    m, k = xq.shape
    x = xq.float()
    if x_group_size > 0:
        x = x * x_scale.float().repeat_interleave(x_group_size, -1)[:, :k]
    else:
        x = x * x_scale.float()
    w = wq.float()
    if w_block_n > 0:
        n = w.shape[0]
        w = w * w_scale.float().repeat_interleave(w_block_n, 0)[:n].repeat_interleave(w_block_k, 1)[:, :k]
    else:
        w = w * w_scale.float()
    out = x @ w.T
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)



def w8a8_linear(
    x: torch.Tensor,  # [M, K] fp16/bf16/fp32 activations
    weight: torch.Tensor,  # [N, K] int8 or fp8 codes
    weight_scale: torch.Tensor,  # as w_scale of `scaled_linear`
    bias: torch.Tensor | None,  # [N]
    input_scale: torch.Tensor | None,  # [1] static activation scale, None for dynamic
    fmt: str,  # activation format: "int8" | "e4m3" | "e5m2"
    act_group_size: int,  # 0: per token (or static); g > 0: 1 x g activation groups
    block_n: int,  # weight blocks, 0 if per channel/tensor
    block_k: int,
) -> torch.Tensor:  # [M, N] in x.dtype
    xq, xs = quantize_activation(x, fmt, act_group_size, input_scale)
    group = act_group_size if input_scale is None else 0
    return scaled_linear(xq, xs, weight, weight_scale, bias, group, block_n, block_k, x.dtype)
