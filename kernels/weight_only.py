"""CUDA path of weight-only linears: dispatch by token count, the CUDA implementation of
qtool::weight_only_linear, and the load-time repacking hook QuantLinear calls.

Dispatch on m = tokens (thresholds to be tuned on the GPU with scripts/bench_kernels.py):
  m <= GEMV_MAX_M   qtool_cuda::wo_gemv   CUDA cores; the weights are streamed once
  m <= GEMM_MAX_M   qtool_cuda::wo_gemm   tensor cores; the weights are streamed once per 64 tokens
  otherwise         qtool_cuda::dequant_int + cuBLAS: compute-bound, so one extra weight pass is cheap

Act-order weights are stored with their input columns sorted by group (layout.act_order_permutation),
so each call gathers the activations once, x.index_select(-1, perm): m * K elements read and written
plus one kernel launch (a few microseconds at m = 1, a few percent of a decode step's linear time).
Folding the permutation into the producer of x would remove it; that needs model-level rewriting.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import build, ops, reference
from .layout import ACTIVATIONS, PackedWeight, UnsupportedLayout, pack_weight

# $QTOOL_GEMV_MAX_M (0..8, read at import) overrides the GEMV cut-off, to measure wo_gemv against
# wo_gemm at m = 5..8 without editing this file (scripts/gpu_session.sh pdl_ab).
GEMV_MAX_M = 4
if os.environ.get("QTOOL_GEMV_MAX_M"):
    GEMV_MAX_M = int(os.environ["QTOOL_GEMV_MAX_M"])
    if not 0 <= GEMV_MAX_M <= 8:  # wo_gemv takes at most 8 tokens (wo_kernels.h, kMaxGemvTokens)
        raise ValueError(f"QTOOL_GEMV_MAX_M must be in 0..8, got {GEMV_MAX_M}")
GEMM_MAX_M = 256
KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def _kernel_input(x2: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """[m, K] activations -> [m, K_pad]: permuted for act-order, zero-padded, contiguous, 16-byte aligned."""
    if w.perm is not None:
        x2 = x2.index_select(1, w.perm)
    if x2.shape[1] != w.k_padded:
        x2 = F.pad(x2, (0, w.k_padded - x2.shape[1]))
    x2 = x2.contiguous()
    if torch.compiler.is_compiling():  # data_ptr is not traceable; the op checks alignment
        return x2
    return x2.clone() if x2.data_ptr() % 16 else x2


def packed_linear(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, activation: str, kernels,
                  prefetch: torch.Tensor | None = None) -> torch.Tensor:
    """act(x @ W^T + bias) for x [..., K]; `kernels` is torch.ops.qtool_cuda or layout.ReferenceOps.

    prefetch: a tensor (the next layer's packed weight, see `link_prefetch`) the GEMV pulls into L2
    after its own weight loads; a hint only, ignored by the other kernels.
    """
    lead = x.shape[:-1]
    x2 = _kernel_input(x.reshape(-1, x.shape[-1]), w)
    m = x2.shape[0]
    args = (w.qweight, w.scale, w.zero)
    meta = (w.num_bits, w.group_size, w.out_features)
    if m <= GEMV_MAX_M:
        y = kernels.wo_gemv(x2, *args, bias, *meta, activation, prefetch)
    elif m <= GEMM_MAX_M:
        y = kernels.wo_gemm(x2, *args, bias, *meta, activation)
    else:
        dense = kernels.dequant_int(*args, *meta, x.dtype)
        y = ACTIVATIONS[activation](F.linear(x2, dense, None if bias is None else bias.to(x.dtype)))
    return y.reshape(*lead, w.out_features)


@ops.weight_only_linear.register_kernel("cuda")
def _weight_only_linear_cuda(x, qweight, scale, zero_point, g_idx, bias, num_bits, group_size, in_features):
    """Repacks on every call, which is right for direct calls and opcheck; QuantLinear repacks once."""
    kernels = build.load_extension()
    if kernels is not None and x.dtype in KERNEL_DTYPES:
        codes = reference.unpack_weight(qweight, num_bits, in_features)
        try:
            packed = pack_weight(codes, scale, zero_point, g_idx, num_bits, group_size)
        except UnsupportedLayout:
            packed = None
        if packed is not None:
            return packed_linear(x, packed, bias, "none", kernels)
    return reference.weight_only_linear(x, qweight, scale, zero_point, g_idx, bias, num_bits, group_size, in_features)


# --- QuantLinear hook -------------------------------------------------------------------------

_SOURCES = ("weight_packed", "weight", "weight_scale", "weight_zero_point", "weight_g_idx", "bias")
_BUFFERS = ("cuda_qweight", "cuda_scale", "cuda_zero", "cuda_perm", "cuda_bias")


def pack_layer(layer) -> PackedWeight | None:
    """A QuantLinear's weight in the kernel layout, on its device; None when the kernels cannot take it."""
    from quantize.scheme import Strategy

    w = layer.scheme.weights
    if layer.scheme.input_activations is not None or w.is_float or w.strategy not in (Strategy.GROUP, Strategy.CHANNEL):
        return None
    group_size = w.group_size if w.strategy is Strategy.GROUP else -1
    try:
        return pack_weight(layer.codes(), layer.weight_scale, getattr(layer, "weight_zero_point", None),
                           getattr(layer, "weight_g_idx", None), w.num_bits, group_size)
    except UnsupportedLayout:
        return None


def _source_key(layer) -> tuple:
    """Changes when any checkpoint tensor is replaced, moved or written in place."""
    return tuple((t.data_ptr(), t._version) for name in _SOURCES if (t := getattr(layer, name, None)) is not None)


def prepare_for_cuda(layer) -> PackedWeight | None:
    """Repack `layer` into the kernel layout once and keep it as non-persistent buffers.

    The checkpoint buffers are untouched and state_dict() is unchanged; the repack is redone when a
    checkpoint buffer changes (load_state_dict, .to()). None when the kernels are not available or
    cannot take this layer's scheme, in which case the layer keeps using qtool::weight_only_linear.
    Under torch.compile the layout an eager forward prepared is used as is (run one eager forward first).
    """
    if build.load_extension() is None:
        return None
    key = _source_key(layer)
    if getattr(layer, "_cuda_layout_key", None) != key:
        packed = pack_layer(layer)
        bias = None if packed is None or layer.bias is None else layer.bias.detach().float()
        tensors = (None,) * 5 if packed is None else (packed.qweight, packed.scale, packed.zero, packed.perm, bias)
        for name, t in zip(_BUFFERS, tensors, strict=True):
            layer.register_buffer(name, t, persistent=False)
        layer._cuda_layout = None if packed is None else (packed.num_bits, packed.group_size, packed.in_features,
                                                          packed.out_features)
        layer._cuda_layout_key = key
    return _prepared(layer)


def _prepared(layer) -> PackedWeight | None:
    meta = getattr(layer, "_cuda_layout", None)
    if meta is None:
        return None
    return PackedWeight(layer.cuda_qweight, layer.cuda_scale, layer.cuda_zero, layer.cuda_perm, *meta)


def cuda_linear(layer, x: torch.Tensor) -> torch.Tensor | None:
    """QuantLinear's forward on the CUDA kernels, or None when they cannot serve this layer and input."""
    if not x.is_cuda or x.dtype not in KERNEL_DTYPES:
        return None
    packed = _prepared(layer) if torch.compiler.is_compiling() else prepare_for_cuda(layer)
    if packed is None:
        return None
    return packed_linear(x, packed, layer.cuda_bias, "none", torch.ops.qtool_cuda, getattr(layer, "cuda_prefetch", None))


def link_prefetch(layers) -> int:
    """Make each of `layers` (QuantLinears in the order a forward pass calls them) prefetch the packed
    weight of the next one into L2 during its GEMV, and the last one the first's (the next token
    starts there). Layers the kernels cannot serve are skipped. Returns the number of links.

    Why: between two GEMVs of a decode step run small kernels (norms, attention) that leave DRAM idle;
    a prefetch issued at the end of one GEMV moves the next one's weight during that time. The link is
    a plain attribute (not a buffer), so state_dict and .to() are unchanged; run after one eager
    forward has prepared the layers (prepare_for_cuda), and again after moving or reloading them: a
    link keeps the packed weight it points to alive.
    """
    ready = [layer for layer in layers if _prepared(layer) is not None]
    if len(ready) < 2:
        return 0
    for layer, nxt in zip(ready, ready[1:] + ready[:1], strict=True):
        layer.cuda_prefetch = nxt.cuda_qweight
    return len(ready)
