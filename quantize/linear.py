"""QuantLinear: packed buffers plus one call to a qtool op, and everything about running it on CUDA.

Buffer names follow compressed-tensors (`weight_packed`, `weight_scale`, `weight_zero_point`,
`weight_g_idx`, `input_scale`); quantize/compressed.py converts where the layouts differ (packed zero
points, packed 8-bit and odd-width codes, group sizes).

The one CUDA route of weight-only layers: `QuantLinear.forward` -> `cuda_linear`, which repacks the
checkpoint buffers into the kernels' layout once (`prepare_for_cuda`, kept as non-persistent `cuda_*`
buffers) and calls `qtool_kernels.weight_only.packed_linear`. This module is the only reader of a
layer's scheme on that route (`kernel_args`); qtool_kernels takes tensors and ints and knows nothing
of QuantLinear. Everything the kernels cannot take runs the `qtool::weight_only_linear` reference op.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

# ops declares torch.ops.qtool.*; scaled_mm registers qtool::scaled_linear's CUDA implementation.
from qtool_kernels import binary, build, int8_planes, mixed_mm, ops, scaled_mm, weight_only  # noqa: F401
from qtool_kernels.layout import (
    KERNEL_DTYPES,
    LOW_BITS,
    PackedWeight,
    UnsupportedLayout,
    pack_rows,
    pack_weight,
    unpack_codes,
)
from qtool_kernels.mlp import silu_mul
from qtool_kernels.weight_only import packed_linear, takes_rows

from .primitives import QTensor, dequantize, pack_factor, pack_int, scale_shape, unpack_int
from .scheme import QuantScheme, Strategy


def kernel_args(scheme: QuantScheme) -> tuple[int, int] | None:
    """(num_bits, group_size) of a weight-only integer scheme as the weight-only ops take them
    (group_size -1: one scale per output channel); None for schemes they do not serve."""
    w = scheme.weights
    if scheme.input_activations is not None or w.kernel_group_size is None:
        return None
    return w.num_bits, w.kernel_group_size


class QuantLinear(nn.Module):
    """A linear layer whose weight is stored quantized.

    Buffers (N = out_features, K = in_features):
      weight_packed     [N, ceil(K / (32 // bits))] int32   integer weights below 8 bits
      weight_shape      [2] int64 = (N, K)                  with weight_packed
      weight            [N, K] int8 or float8               8-bit integer or FP8 weights
      weight_scale      float32, shape from `primitives.scale_shape`
      weight_zero_point int8 like weight_scale              asymmetric only
      weight_g_idx      [K] int32                           act-order only
      input_scale       [1] float32                         static activation quantization only
    """

    # The next layer's weight bytes a GEMV pulls into L2 (quantize/prefetch.py sets it per instance). A class
    # default, not getattr(..., None): a missing attribute goes through nn.Module.__getattr__ (~1.8 us per call).
    cuda_prefetch: torch.Tensor | None = None
    # Whether the kernel that makes this layer's input is one Inductor generates (an RMSNorm before fused q/k/v or
    # gate/up, the gated MLP's product before down: quantize/fusion.py, quantize/mlp.py set it), so that under
    # torch.compile the input's int8 planes can be fused into it (kernels/int8_planes.py, FUSED_PLANES).
    planes_fuse: bool = False
    # That kernel is an RMSNorm (q/k/v, gate/up): qtool_kernels.norm_planes can then make the planes in it.
    norm_input: bool = False

    def __init__(self, in_features: int, out_features: int, scheme: QuantScheme, bias: bool = False,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        w = scheme.weights
        n, k = out_features, in_features
        if scheme.weights.packed:
            self.register_buffer("weight_packed", torch.zeros(n, math.ceil(k / pack_factor(w.num_bits)),
                                                              dtype=torch.int32, device=device))
            # Packing hides K; stored so a checkpoint describes itself (as compressed-tensors does).
            self.register_buffer("weight_shape", torch.tensor([n, k], dtype=torch.int64, device=device))
        else:
            store = getattr(torch, w.torch_dtype_name)
            self.register_buffer("weight", torch.zeros(n, k, dtype=store, device=device))
        sshape = scale_shape((n, k), w)
        self.register_buffer("weight_scale", torch.ones(sshape, dtype=torch.float32, device=device))
        if not w.symmetric:
            self.register_buffer("weight_zero_point", torch.zeros(sshape, dtype=torch.int8, device=device))
        if w.actorder:
            self.register_buffer("weight_g_idx", torch.zeros(k, dtype=torch.int32, device=device))
        act = scheme.input_activations
        if act is not None and not act.dynamic:
            self.register_buffer("input_scale", torch.ones(1, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(n, dtype=dtype, device=device), requires_grad=False) if bias else None
        self.dense_weight: torch.Tensor | None = None  # see `dequantized_weights`

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def from_qtensor(cls, qt: QTensor, scheme: QuantScheme, bias: torch.Tensor | None = None,
                     input_scale: torch.Tensor | None = None) -> QuantLinear:
        """Build from a quantized weight (codes [N, K]); `bias` [N] keeps its dtype."""
        n, k = qt.values.shape
        layer = cls(k, n, scheme, bias=bias is not None, dtype=bias.dtype if bias is not None else torch.float32,
                    device=qt.values.device)
        if scheme.weights.packed:
            layer.weight_packed.copy_(pack_int(qt.values, scheme.weights.num_bits))
            layer.weight_shape.copy_(torch.tensor([n, k]))
        else:
            layer.weight.copy_(qt.values)
        layer.weight_scale.copy_(qt.scale)
        if qt.zero_point is not None:
            layer.weight_zero_point.copy_(qt.zero_point)
        if scheme.weights.actorder:
            if qt.g_idx is None:
                raise ValueError("scheme has actorder=True but the quantized weight has no g_idx")
            layer.weight_g_idx.copy_(qt.g_idx)
        if bias is not None:
            layer.bias.data.copy_(bias)
        if input_scale is not None:
            layer.input_scale.copy_(input_scale.reshape(1))
        return layer

    def _apply(self, *args, **kwargs):
        # .to(), .cuda(), .half() replace the buffers: forget the kernel layout prepare_for_cuda kept, whose
        # references would hold the old device's copies until the next forward.
        self._cuda_packed = self._cuda_layout_key = None
        return super()._apply(*args, **kwargs)

    def codes(self) -> torch.Tensor:
        """Unpacked weight codes [N, K] (int8 or FP8)."""
        if self.scheme.weights.packed:
            return unpack_int(self.weight_packed, self.scheme.weights.num_bits, self.in_features)
        return self.weight

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight this layer computes with, [N, K] in `dtype`."""
        return dequantize(self.codes(), self.weight_scale, getattr(self, "weight_zero_point", None),
                          self.scheme.weights, dtype, getattr(self, "weight_g_idx", None))

    # --- forward --------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scheme.input_activations is not None and self.scheme.input_activations.binary:
            return self._forward_w1a1(x)
        if self.scheme.input_activations is not None:
            return self._forward_w8a8(x)
        if self.dense_weight is not None:
            # Set by `dequantized_weights` while the pipeline runs many batches through one block: the
            # reference op's arithmetic without unpacking the weight every call (on a GPU, the decode
            # kernels would repack a copy of each layer for batches of thousands of tokens).
            return F.linear(x, self.dense_weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if (args := kernel_args(self.scheme)) is not None:
            # The CUDA kernels have no backward; when x needs a gradient the reference op (which has one) runs.
            if x.is_cuda and not (x.requires_grad and torch.is_grad_enabled()) and (y := cuda_linear(self, x)) is not None:
                return y
            qweight = self.weight_packed if self.scheme.weights.packed else self.weight
            return torch.ops.qtool.weight_only_linear(
                x, qweight, self.weight_scale, getattr(self, "weight_zero_point", None),
                getattr(self, "weight_g_idx", None), self.bias, *args, self.in_features)
        # FP8 weight-only and per-tensor/block integer weights: dequantize, then a plain GEMM.
        return F.linear(x, self.dequantize_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def forward_gated(self, x: torch.Tensor) -> torch.Tensor:
        """For a gated MLP's gate and up projections stacked as this one layer ([gate; up] rows): silu(gate) * up,
        x [..., K] -> [..., N / 2]. W8A8 layers can do the product in their GEMV's epilogue (one kernel fewer per
        block in a batch-1 decode; kernels/scaled_mm.py, SWIGLU_GEMV_MAX_M); every other layer, and any x that needs
        a gradient, runs the layer and then `silu_mul`."""
        acts = self.scheme.input_activations
        if acts is None or acts.binary or (x.requires_grad and torch.is_grad_enabled()):
            return silu_mul(self(x))
        return self._forward_w8a8(x, swiglu=1)

    def _forward_w8a8(self, x: torch.Tensor, swiglu: int = 0) -> torch.Tensor:
        act, w = self.scheme.input_activations, self.scheme.weights
        fmt = act.fp_format if act.is_float else "int8"
        group = act.group_size if act.strategy is Strategy.GROUP else 0
        bn, bk = w.block_structure if w.strategy is Strategy.BLOCK else (0, 0)
        args = (x.reshape(-1, self.in_features), self.weight, self.weight_scale, self.bias,
                self._buffers.get("input_scale"), fmt, group, bn, bk,  # not getattr: a miss costs ~1.8 us
                1, self.cuda_prefetch, swiglu)  # a static weight (w8_gemv's PDL); quantize/prefetch.py
        if x.is_cuda and not torch.compiler.is_compiling() and not (x.requires_grad and torch.is_grad_enabled()):
            # Eager calls skip the custom op's dispatch (tens of microseconds of host time per call, which an
            # eager prefill pays on every layer); torch.compile and autograd still see the op.
            out = scaled_mm.w8a8_linear_cuda(*args)
        else:
            out = torch.ops.qtool.w8a8_linear(*args)
        return out.reshape(*x.shape[:-1], self.out_features // 2 if swiglu else self.out_features)

    def _forward_w1a1(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and (y := binary_cuda_linear(self, x)) is not None:
            return y
        out = torch.ops.qtool.binary_linear(x.reshape(-1, self.in_features), self.weight_packed, self.weight_scale,
                                            self.bias, self.scheme.weights.kernel_group_size, self.in_features)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme.describe()}"


@contextmanager
def dequantized_weights(module: nn.Module) -> Iterator[None]:
    """Within the block, weight-only QuantLinear layers compute with their weight dequantized once
    (float32) instead of once per call; the results are the reference op's."""
    layers = [m for m in module.modules() if isinstance(m, QuantLinear) and m.scheme.input_activations is None]
    for layer in layers:
        layer.dense_weight = layer.dequantize_weight(torch.float32)
    try:
        yield
    finally:
        for layer in layers:
            layer.dense_weight = None


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def replace_linears(model: nn.Module, schemes: dict[str, QuantScheme], device: torch.device | str | None = None) -> None:
    """Swap each named nn.Linear for an empty QuantLinear of its scheme (filled by a state dict later)."""
    for name, scheme in schemes.items():
        old = model.get_submodule(name)
        if not isinstance(old, nn.Linear):
            raise ValueError(f"{name} is a {type(old).__name__}, not a Linear; the checkpoint does not fit this model")
        bias_dtype = old.bias.dtype if old.bias is not None else torch.float32
        new = QuantLinear(old.in_features, old.out_features, scheme, bias=old.bias is not None,
                          dtype=bias_dtype, device=device)
        set_submodule(model, name, new)


# --- the CUDA route ---------------------------------------------------------------------------

_SOURCES = ("weight_packed", "weight", "weight_scale", "weight_zero_point", "weight_g_idx", "bias")
_BUFFERS = ("cuda_qweight", "cuda_scale", "cuda_zero", "cuda_perm", "cuda_bias", "cuda_rows")
_MIXED = ("cuda_mixed_w", "cuda_mixed_scale", "cuda_mixed_zero")


def pack_layer(layer: QuantLinear) -> PackedWeight | None:
    """A QuantLinear's weight in the kernel layout, on its device; None when the kernels cannot take it."""
    args = kernel_args(layer.scheme)
    if args is None or args[0] < 2:  # 1-bit layers have kernels of their own (binary_cuda_linear)
        return None
    # The kernels decode 2-, 3-, 4- and 8-bit codes, 2- and 3-bit ones streamed at their own width (groups
    # of 32 k or more, or per channel). Other widths are widened here: 5- to 7-bit codes are 8-bit codes
    # using part of the range (and 2-, 3-bit ones 4-bit codes where their own layout cannot take the
    # groups, g16), and (q - z) * s is the same number. So every width runs on the kernels, not on the
    # reference (which unpacks the whole weight on every call); the checkpoint keeps its own width.
    codes, zero, g_idx = layer.codes(), getattr(layer, "weight_zero_point", None), getattr(layer, "weight_g_idx", None)
    if takes_rows(args[0], args[1], zero, g_idx, *codes.shape):
        return pack_rows(codes, layer.weight_scale)
    widths = [args[0]] if args[0] in LOW_BITS else []
    for bits in [*widths, 4 if args[0] <= 4 else 8]:
        try:
            return pack_weight(codes, layer.weight_scale, zero, g_idx, bits, args[1])
        except UnsupportedLayout:
            continue
    return None


def _source_key(layer: QuantLinear) -> tuple:
    """Changes when any checkpoint tensor is replaced, moved or written in place. Read from the module's own
    dicts: nn.Module.__getattr__ per name made this 8 of an eager call's ~20 us of Python (CPU, 2026-12-04)."""
    params, buffers, key = layer._parameters, layer._buffers, []
    for name in _SOURCES:
        t = params.get(name)
        if t is None:
            t = buffers.get(name)
        if t is not None:
            key.append((t.data_ptr(), t._version))
    return tuple(key)


def refuse_capture(layer: QuantLinear) -> None:
    """A layout made inside a CUDA graph capture is recorded, not run: kept, it is unwritten memory to eager calls."""
    if build.capturing():
        raise RuntimeError(f"QuantLinear({layer.in_features} -> {layer.out_features}) met its weights first inside a "
                           "CUDA graph capture; run one eager forward before capturing (it prepares the kernel layout)")


def prepare_for_cuda(layer: QuantLinear) -> PackedWeight | None:
    """Repack `layer` into the kernel layout once and keep it as non-persistent buffers.

    The checkpoint buffers are untouched and state_dict() is unchanged; the repack is redone when a
    checkpoint buffer changes (load_state_dict, .to()). None when the kernels are not available or
    cannot take this layer's scheme, in which case the layer runs the reference op.
    Under torch.compile the layout an eager forward prepared is used as is (run one eager forward first); inside a
    CUDA graph capture a layer that has none refuses (RuntimeError).
    """
    if build.load_extension() is None:
        return None
    key = _source_key(layer)
    if getattr(layer, "_cuda_layout_key", None) == key:
        return layer._cuda_packed  # built from these buffers at the key's time (prepared_weight costs ~5 us a call)
    refuse_capture(layer)
    packed = pack_layer(layer)
    bias = None if packed is None or layer.bias is None else layer.bias.detach().float()
    tensors = (None,) * 6 if packed is None else (packed.qweight, packed.scale, packed.zero, packed.perm, bias,
                                                  packed.rows)
    for name, t in zip(_BUFFERS, tensors, strict=True):
        layer.register_buffer(name, t, persistent=False)
    layer._cuda_layout = None if packed is None else (packed.num_bits, packed.group_size, packed.in_features,
                                                      packed.out_features)
    mixed = _pack_mixed(packed)
    for name, t in zip(_MIXED, (None,) * 3 if mixed is None else (mixed.w, mixed.scale, mixed.zero), strict=True):
        layer.register_buffer(name, t, persistent=False)
    layer._cuda_mixed_group = None if mixed is None else mixed.group
    layer._cuda_layout_key = key
    layer._cuda_packed = prepared_weight(layer)
    return layer._cuda_packed


def _pack_mixed(packed: PackedWeight | None) -> mixed_mm.MixedWeight | None:
    """The Hopper W4A16 / W8A16 GEMM's copy of a packed weight (batches of tokens), where it applies.
    It holds the codes a second time (N * K * bits / 8 bytes), the price of the faster batched path."""
    if packed is None or not packed.codes_tensor.is_cuda:
        return None
    bits = 4 if packed.num_bits in LOW_BITS else packed.num_bits  # 2-3-bit codes fit int4: a 4-bit copy
    if not mixed_mm.takes(bits, packed.group_size, packed.k_padded) or bits not in mixed_mm.copy_bits():
        return None
    if not mixed_mm.available(bits):
        return None
    codes = packed.rows if packed.qweight is None else unpack_codes(packed.qweight, packed.num_bits)
    return mixed_mm.pack_mixed(codes, packed.scale, packed.zero, packed.group_size, bits)


def prepared_weight(layer: QuantLinear) -> PackedWeight | None:
    """The weight-only layer's weight in the kernels' layout as its last eager call prepared it, or None."""
    meta = getattr(layer, "_cuda_layout", None)
    if meta is None:
        return None
    group = getattr(layer, "_cuda_mixed_group", None)
    mixed = None if group is None else mixed_mm.MixedWeight(layer.cuda_mixed_w, layer.cuda_mixed_scale,
                                                             layer.cuda_mixed_zero, group)
    return PackedWeight(layer.cuda_qweight, layer.cuda_scale, layer.cuda_zero, layer.cuda_perm, *meta, mixed,
                        layer.cuda_rows)


def cuda_linear(layer: QuantLinear, x: torch.Tensor, gated: bool = False) -> torch.Tensor | None:
    """The layer's forward on the CUDA kernels for x [..., K] -> [..., N] (gated: silu(gate) * up [..., N / 2] of
    interleaved gate / up rows, quantize/mlp.py), or None when they cannot serve this layer and input."""
    if not x.is_cuda or x.dtype not in KERNEL_DTYPES:
        return None
    if layer.scheme.weights.binary:
        return None if gated else binary_cuda_linear(layer, x)
    packed = prepared_weight(layer) if torch.compiler.is_compiling() else prepare_for_cuda(layer)
    if packed is None:
        return None
    return packed_linear(x, packed, layer.cuda_bias, torch.ops.qtool_cuda, layer.cuda_prefetch, layer.planes_fuse,
                         layer.norm_input, gated)


def fuses_planes(layer: nn.Module, m: int) -> bool:
    """Whether m tokens into `layer` take int8 planes that Inductor fuses into the kernel making its input (under
    torch.compile, kernels/int8_planes.py FUSED_PLANES): the gated MLP then leaves SiLU-and-multiply to Inductor."""
    if not (int8_planes.FUSED_PLANES and torch.compiler.is_compiling() and getattr(layer, "planes_fuse", False)):
        return False
    packed = prepared_weight(layer)
    return packed is not None and packed.rows is None and int8_planes.planes_route(packed, m, free=True) is not None


# --- 1-bit layers (qtool_kernels.binary) -------------------------------------------------------

_BINARY = ("cuda_w1_bits", "cuda_w1_scale", "cuda_w1_cterm", "cuda_w1_bias")


def _prepare_binary(layer: QuantLinear) -> binary.GemvWeight | binary.GemmWeight | None:
    """The 1-bit layer's weight in its kernel's layout (W1A1: the GEMM's, W1A16: the GEMV's), kept as
    non-persistent buffers and rebuilt when a checkpoint buffer changes, as `prepare_for_cuda` does."""
    w1a1 = layer.scheme.input_activations is not None
    if not torch.compiler.is_compiling() and getattr(layer, "_cuda_binary_key", None) != (key := _source_key(layer)):
        refuse_capture(layer)
        args = (layer.weight_packed, layer.weight_scale, layer.scheme.weights.kernel_group_size, layer.in_features)
        try:
            packed = binary.pack_gemm(*args) if w1a1 else binary.pack_gemv(*args)
        except UnsupportedLayout:
            packed = None
        tensors = (None,) * 3 if packed is None else (
            (packed.bits, packed.scale, packed.cterm) if w1a1 else (packed.qweight, packed.scale, None))
        bias = None if packed is None or layer.bias is None else layer.bias.detach().float()
        for name, t in zip(_BINARY, (*tensors, bias), strict=True):
            layer.register_buffer(name, t, persistent=False)
        layer._cuda_binary_group = None if packed is None else packed.group_size
        layer._cuda_binary_key = key
    group = getattr(layer, "_cuda_binary_group", None)
    if group is None:
        return None
    if w1a1:
        return binary.GemmWeight(layer.cuda_w1_bits, layer.cuda_w1_scale, layer.cuda_w1_cterm, group,
                                 layer.in_features, layer.out_features)
    return binary.GemvWeight(layer.cuda_w1_bits, layer.cuda_w1_scale, group, layer.in_features, layer.out_features)


def binary_cuda_linear(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor | None:
    """A 1-bit layer's forward on the CUDA kernels: W1A1 at any m (binarize + b1 GEMM), W1A16 at
    m <= binary.CHUNKED_MAX_M (the GEMV, 8 tokens per call); None where they do not serve (larger m for
    W1A16, float32 x, x needing a gradient)."""
    if x.dtype not in KERNEL_DTYPES or (x.requires_grad and torch.is_grad_enabled()):
        return None
    x2 = x.reshape(-1, layer.in_features)
    w1a1 = layer.scheme.input_activations is not None
    if (not w1a1 and x2.shape[0] > binary.CHUNKED_MAX_M) or build.load_extension() is None:
        return None
    packed = _prepare_binary(layer)
    if packed is None:
        return None
    kernels = torch.ops.qtool_cuda
    y = (binary.binary_gemm_linear(x2.contiguous(), packed, layer.cuda_w1_bias, kernels) if w1a1
         else binary.binary_gemv_linear(x2, packed, layer.cuda_w1_bias, kernels))
    return y.reshape(*x.shape[:-1], layer.out_features)
