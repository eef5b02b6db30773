"""qtool's operators, declared once in the `qtool` torch.library namespace.

Each op's default implementation is the pure-PyTorch reference (`reference.py`), which runs
on any device; `scaled_mm.py` registers a CUDA implementation of qtool::scaled_linear over it.
qtool::weight_only_linear stays the reference on every device: the weight-only CUDA kernels
(torch.ops.qtool_cuda, built by `build.py`) take a repacked weight, which quantize/linear.py
prepares once per layer and passes to `weight_only.packed_linear`.
Each op also has a fake (meta) implementation so torch.compile and CUDA graphs can trace it.
The two linear ops have a backward for their float inputs (`register_autograd`, below), so gradients
flow through frozen quantized layers to whatever is trained around them (LoRA adapters, QAT inputs).
"""

from __future__ import annotations

import torch

from . import reference

Tensor = torch.Tensor


@torch.library.custom_op("qtool::weight_only_linear", mutates_args=())
def weight_only_linear(x: Tensor, qweight: Tensor, scale: Tensor, zero_point: Tensor | None, g_idx: Tensor | None,
                       bias: Tensor | None, num_bits: int, group_size: int, in_features: int) -> Tensor:
    """y = x @ dequant(W)^T + bias for integer weights; shapes as in `reference.weight_only_linear`."""
    return reference.weight_only_linear(x, qweight, scale, zero_point, g_idx, bias, num_bits, group_size, in_features)


@weight_only_linear.register_fake
def _(x, qweight, scale, zero_point, g_idx, bias, num_bits, group_size, in_features):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])


@torch.library.custom_op("qtool::quantize_activation", mutates_args=())
def quantize_activation(x: Tensor, fmt: str, group_size: int, static_scale: Tensor | None) -> tuple[Tensor, Tensor]:
    """Symmetric INT8/FP8 activation codes and float32 scales; see `reference.quantize_activation`."""
    return reference.quantize_activation(x, fmt, group_size, static_scale)


@quantize_activation.register_fake
def _(x, fmt, group_size, static_scale):
    dtype = torch.int8 if fmt == "int8" else getattr(torch, {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}[fmt])
    m, k = x.shape
    if static_scale is not None:
        ncols = None
    else:
        ncols = -(-k // group_size) if group_size > 0 else 1
    scale = x.new_empty((1,) if ncols is None else (m, ncols), dtype=torch.float32)
    return x.new_empty((m, k), dtype=dtype), scale


@torch.library.custom_op("qtool::scaled_linear", mutates_args=())
def scaled_linear(xq: Tensor, x_scale: Tensor, wq: Tensor, w_scale: Tensor, bias: Tensor | None, x_group_size: int,
                  w_block_n: int, w_block_k: int, out_dtype: torch.dtype) -> Tensor:
    """W8A8 GEMM (INT8 or FP8) with scales applied per token/group and per channel/block."""
    return reference.scaled_linear(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype)


@scaled_linear.register_fake
def _(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype):
    return xq.new_empty((xq.shape[0], wq.shape[0]), dtype=out_dtype)


@torch.library.custom_op("qtool::w8a8_linear", mutates_args=())
def w8a8_linear(x: Tensor, weight: Tensor, weight_scale: Tensor, bias: Tensor | None, input_scale: Tensor | None,
                fmt: str, act_group_size: int, block_n: int, block_k: int, static_weight: int = 0,
                prefetch: Tensor | None = None, swiglu: int = 0) -> Tensor:
    """A W8A8 layer: quantize x [M, K], then the 8-bit GEMM with weight [N, K]; see `reference.w8a8_linear`.
    static_weight=1: no kernel writes the weight while layers run; prefetch: bytes to pull into L2 after the
    weight (the next layer's); both are hints for the CUDA kernels. swiglu=1: weight = [gate; up] of a gated MLP,
    the result silu(gate) * up [M, N / 2] (`reference.silu_mul`)."""
    y = reference.w8a8_linear(x, weight, weight_scale, bias, input_scale, fmt, act_group_size, block_n, block_k)
    return reference.silu_mul(y) if swiglu else y


@w8a8_linear.register_fake
def _(x, weight, weight_scale, bias, input_scale, fmt, act_group_size, block_n, block_k, static_weight=0,
      prefetch=None, swiglu=0):
    return x.new_empty((x.shape[0], weight.shape[0] // 2 if swiglu else weight.shape[0]))


# --- autograd: gradients for the activations (and bias), none for the quantized weight -------------
# y = x @ W^T + b with W the dequantized weight, so dx = dy @ W and db = sum of dy over tokens. The codes,
# scales and zero points are constants (integer or frozen): their gradients are None. W8A8 layers
# quantize x in the forward; the backward passes the gradient straight through that rounding
# (the straight-through estimator), as quantization-aware training does.


def _linear_backward(ctx, grad: Tensor, weight: Tensor):
    """(dx, db) for y = x @ weight^T + b; weight [N, K] float32, grad [..., N]."""
    grad_x = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
    grad_bias = None
    if ctx.bias_needs_grad:
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.bias_dtype)
    return grad_x, grad_bias


def _save_bias(ctx, bias: Tensor | None) -> None:
    ctx.bias_needs_grad = bias is not None and bias.requires_grad
    ctx.bias_dtype = None if bias is None else bias.dtype


def _weight_only_setup(ctx, inputs, output):
    x, qweight, scale, zero_point, g_idx, bias, num_bits, group_size, in_features = inputs
    ctx.save_for_backward(qweight, scale, zero_point, g_idx)
    ctx.meta = (num_bits, group_size, in_features)
    _save_bias(ctx, bias)


def _weight_only_backward(ctx, grad):
    weight = reference.dequantize_weight(*ctx.saved_tensors, *ctx.meta)
    grad_x, grad_bias = _linear_backward(ctx, grad, weight)
    return grad_x, None, None, None, None, grad_bias, None, None, None


def _w8a8_setup(ctx, inputs, output):
    x, weight, weight_scale, bias, input_scale, fmt, act_group_size, block_n, block_k, *hints = inputs
    if len(hints) > 2 and hints[2]:
        raise NotImplementedError("qtool::w8a8_linear has no backward with swiglu=1; QuantLinear.forward_gated "
                                  "runs the layer and SiLU-and-multiply apart when x needs a gradient")
    ctx.save_for_backward(weight, weight_scale)
    ctx.blocks = (block_n, block_k)
    _save_bias(ctx, bias)


def _w8a8_backward(ctx, grad):
    weight = reference.dequantize_scaled_weight(*ctx.saved_tensors, *ctx.blocks)
    grad_x, grad_bias = _linear_backward(ctx, grad, weight)
    return grad_x, None, None, grad_bias, None, None, None, None, None, None, None, None


weight_only_linear.register_autograd(_weight_only_backward, setup_context=_weight_only_setup)
w8a8_linear.register_autograd(_w8a8_backward, setup_context=_w8a8_setup)

@torch.library.custom_op("qtool::binary_linear", mutates_args=())
def binary_linear(x: Tensor, qweight: Tensor, scale: Tensor, bias: Tensor | None, group_size: int,
                  in_features: int) -> Tensor:
    """W1A1: binarized x [M, K] (per-token scale) times 1-bit weights; see `reference.binary_linear`."""
    return reference.binary_linear(x, qweight, scale, bias, group_size, in_features)


@binary_linear.register_fake
def _(x, qweight, scale, bias, group_size, in_features):
    return x.new_empty((x.shape[0], qweight.shape[0]))


OPS = {"weight_only_linear": weight_only_linear, "quantize_activation": quantize_activation,
       "scaled_linear": scaled_linear, "w8a8_linear": w8a8_linear, "binary_linear": binary_linear}
