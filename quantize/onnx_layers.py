"""One QuantLinear as ONNX nodes: y = x @ dequant(W)^T + bias, for `onnx_export.py`.

Which form a layer takes (each computes (q - zero_point) * scale in float32, as qtool's reference op):
  2- and 4-bit integer weights   com.microsoft MatMulNBits (onnxruntime's contrib op): B uint8
                                 [N, k_blocks, block_size * bits / 8], codes offset to unsigned and packed
                                 low bits first along K; scales [N, k_blocks]; zero points unsigned, packed
                                 the same way per row (absent: 2^(bits-1), i.e. symmetric). block_size must
                                 be a power of two >= 16: a group size that is not uses the largest such
                                 divisor with the scales repeated (exact), or QDQ when there is none.
  3-, 5- to 8-bit integers       QDQ: DequantizeLinear (opset 21, blocked along K) on int4 (3 bits) or
                                 int8 codes stored transposed [K, N], then MatMul.
  FP8 weights                    QDQ on float8e4m3fn / float8e5m2 codes.
  8-bit activations (W8A8)       the activation quantization of `qtool::quantize_activation`, in standard
                                 ops: per-token (or static) scale, Round+Clip (int8) or a saturating Cast
                                 (FP8), times the scale, then the QDQ weight.
A last group shorter than the others (SmolLM2's K = 576 in groups of 128) is padded: MatMulNBits reads
K columns of a padded block, DequantizeLinear takes ceil(K / block) scales. Act-order weights (g_idx)
whose groups are all group_size long have their columns sorted by group and the activations gathered
with the same permutation (qtool_kernels.layout.act_order_permutation, as the CUDA kernels do).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from qtool_kernels.layout import UnsupportedLayout, act_order_permutation

from .linear import QuantLinear
from .scheme import Strategy


class OnnxExportError(ValueError):
    """A layer or model that the ONNX export cannot express, or a missing package; the message says which."""


try:  # the optional `onnx` extra; onnxscript is what torch.onnx's exporter translates with
    import ml_dtypes
    import onnxscript  # noqa: F401
    from onnx import NodeProto, TensorProto, helper, numpy_helper
except ImportError as err:
    raise OnnxExportError(f"ONNX export needs {err.name or 'onnx'}, which is not installed: "
                          "pip install 'qtool[onnx]'") from None

MS_DOMAIN = "com.microsoft"
NBITS = (2, 4)  # bits MatMulNBits runs on CPU that QDQ would not store as compactly (8-bit is QDQ)
_FP8_NUMPY = {"e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}
_FP8_ONNX = {"e4m3": TensorProto.FLOAT8E4M3FN, "e5m2": TensorProto.FLOAT8E5M2}


@dataclass
class Nodes:
    """The nodes and initializers one layer adds to the graph, and how its weight is stored."""

    kind: str
    nodes: list[NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output


def k_blocks(layer: QuantLinear) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(scale [N, G], zero point [N, G] or None, block): the layer's scales as one per `block` inputs of
    each row, whatever its strategy (tensor, channel, group, 2-D block)."""
    w, n, k = layer.scheme.weights, layer.out_features, layer.in_features
    scale, zero = layer.weight_scale.float(), getattr(layer, "weight_zero_point", None)
    if w.strategy is Strategy.GROUP:
        return scale, zero, w.group_size
    if w.strategy is Strategy.BLOCK:
        rows, cols = w.block_structure
        scale = scale.repeat_interleave(rows, 0)[:n]
        return scale, None if zero is None else zero.repeat_interleave(rows, 0)[:n], cols
    return scale.reshape(-1, 1).expand(n, 1), None if zero is None else zero.reshape(-1, 1).expand(n, 1), k


def nbits_block_size(block: int, in_features: int) -> int | None:
    """The MatMulNBits block_size for groups of `block` inputs (block == K: one scale per row), or None."""
    if block >= in_features:
        return 128
    size = block & -block  # the largest power of two dividing block
    return min(size, 256) if size >= 16 else None


def refine(param: torch.Tensor, block: int, size: int, in_features: int) -> torch.Tensor:
    """[N, G] per `block` inputs -> [N, ceil(K / size)] per `size` inputs (size divides block, or block >= K)."""
    starts = torch.arange(0, in_features, size)
    return param[:, (starts // block).clamp(max=param.shape[1] - 1)]


def pack_low_first(u: np.ndarray, bits: int) -> np.ndarray:
    """[..., C] unsigned codes (C a multiple of 8 / bits) -> [..., C * bits / 8] uint8, first code lowest."""
    per = 8 // bits
    u = u.astype(np.uint8).reshape(*u.shape[:-1], -1, per)
    out = np.zeros(u.shape[:-1], np.uint8)
    for j in range(per):
        out |= u[..., j] << (bits * j)
    return out


def matmul_nbits(out: Nodes, x: str, y: str, name: str, codes: torch.Tensor, scale: torch.Tensor,
                 zero: torch.Tensor | None, bits: int, size: int) -> None:
    """MatMulNBits over codes [N, K] (signed) with scale/zero [N, ceil(K / size)]."""
    n, k = codes.shape
    blocks = scale.shape[1]
    offset = 1 << (bits - 1)
    # Padding columns take the zero point (dequantize to 0); MatMulNBits reads only K of them anyway.
    pad = (zero if zero is not None else torch.zeros_like(scale, dtype=torch.int8)).repeat_interleave(size, 1)
    full = pad.to(torch.int16).clone()
    full[:, :k] = codes
    b = pack_low_first((full + offset).numpy().reshape(n, blocks, size), bits)
    inputs = [x, out.const(f"{name}.B", b), out.const(f"{name}.scales", scale.numpy().astype(np.float32))]
    if zero is not None:
        per = 8 // bits
        z = np.zeros((n, -(-blocks // per) * per), np.int16)
        z[:, :blocks] = zero.numpy().astype(np.int16) + offset
        inputs.append(out.const(f"{name}.zero_points", pack_low_first(z, bits)))
    # accuracy_level 0: A stays float32, as in qtool (4 would quantize it to int8).
    out.node("MatMulNBits", inputs, y, MS_DOMAIN, K=k, N=n, bits=bits, block_size=size, accuracy_level=0)


def dequantize_linear(out: Nodes, name: str, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                      block: int, storage) -> str:
    """DequantizeLinear of the transposed weight [K, N] -> float32; returns its output name."""
    k = codes.shape[1]
    if codes.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        q = codes.t().contiguous().view(torch.uint8).numpy().view(storage)
    else:
        q = codes.t().numpy().astype(storage)
    inputs = [out.const(f"{name}.weight_q", q)]
    if scale.shape[1] == 1 or block >= k:
        inputs.append(out.const(f"{name}.weight_scale", scale[:, 0].numpy().astype(np.float32)))
        attrs = {"axis": 1}
        zp = None if zero is None else zero[:, 0].numpy()
    else:
        inputs.append(out.const(f"{name}.weight_scale", scale.t().contiguous().numpy().astype(np.float32)))
        attrs = {"axis": 0, "block_size": block}
        zp = None if zero is None else zero.t().contiguous().numpy()
    if zp is not None:
        inputs.append(out.const(f"{name}.weight_zero_point", zp.astype(storage)))
    return out.node("DequantizeLinear", inputs, f"{name}.weight_dq", **attrs)


def linear_nodes(name: str, layer: QuantLinear, x: str, y: str) -> Nodes:
    """The ONNX form of `layer` (see module docstring) reading `x` [..., K] and writing `y` [..., N]."""
    w, act = layer.scheme.weights, layer.scheme.input_activations
    codes, (scale, zero, block) = layer.codes().cpu(), k_blocks(layer)
    scale, zero = scale.cpu(), None if zero is None else zero.cpu()
    out = Nodes(kind="")
    g_idx = getattr(layer, "weight_g_idx", None)
    if g_idx is not None:
        try:
            perm = act_order_permutation(g_idx.cpu(), w.group_size, layer.in_features)
        except UnsupportedLayout as err:
            raise OnnxExportError(f"layer {name}: {err}; ONNX has no per-column groups") from None
        if perm is not None:
            codes = codes.index_select(1, perm)
            x = out.node("Gather", [x, out.const(f"{name}.perm", perm.numpy())], f"{name}.x_sorted", axis=-1)
    if act is not None:
        x = quantize_activation(out, name, layer, x)
    size = nbits_block_size(block, layer.in_features) if not w.is_float and w.num_bits in NBITS else None
    y_mm = f"{name}.matmul" if layer.bias is not None else y
    if size is not None and act is None:
        out.kind = f"MatMulNBits {w.num_bits}-bit block {size}"
        matmul_nbits(out, x, y_mm, name, codes, refine(scale, block, size, layer.in_features),
                     None if zero is None else refine(zero, block, size, layer.in_features), w.num_bits, size)
    else:
        storage = _FP8_NUMPY[w.fp_format] if w.is_float else ml_dtypes.int4 if w.num_bits <= 4 else np.int8
        out.kind = f"QDQ {np.dtype(storage).name}" + (f" block {block}" if block < layer.in_features else "")
        out.kind += " + activation QDQ" if act is not None else ""
        weight = dequantize_linear(out, name, codes, scale, zero, block, storage)
        out.node("MatMul", [x, weight], y_mm)
    if layer.bias is not None:
        out.node("Add", [y_mm, out.const(f"{name}.bias", layer.bias.detach().float().numpy())], y)
    return out


def quantize_activation(out: Nodes, name: str, layer: QuantLinear, x: str) -> str:
    """qtool::quantize_activation then its dequantization, in float32 standard ops: x -> codes * scale.

    Dynamic scales are max|x| / 127.5 (int8) or / max of the FP8 format, 1 where max|x| is 0
    (kernels/reference.py); static ones are the layer's input_scale.
    """
    act = layer.scheme.input_activations
    if act.strategy is Strategy.GROUP:
        raise OnnxExportError(f"layer {name}: activation groups ({act.describe()}) are not exported to ONNX; "
                              "per-token and static per-tensor activations are")
    fp8 = act.fp_format if act.is_float else None
    top = float(ml_dtypes.finfo(_FP8_NUMPY[fp8]).max) if fp8 else 255 / 2
    if act.dynamic:
        amax = out.node("ReduceMax", [out.node("Abs", [x], f"{name}.x_abs"),
                                      out.const(f"{name}.last_axis", np.array([-1], np.int64))],
                        f"{name}.x_amax", keepdims=1)
        raw = out.node("Div", [amax, out.const(f"{name}.act_top", np.array(top, np.float32))], f"{name}.x_scale_raw")
        zero = out.node("Equal", [raw, out.const(f"{name}.act_zero", np.array(0, np.float32))], f"{name}.x_scale_zero")
        scale = out.node("Where", [zero, out.const(f"{name}.act_one", np.array(1, np.float32)), raw], f"{name}.x_scale")
    else:
        scale = out.const(f"{name}.input_scale", layer.input_scale.float().reshape(()).numpy())
    y = out.node("Div", [x, scale], f"{name}.x_scaled")
    if fp8:
        bound = np.array(top, np.float32)
        y = out.node("Clip", [y, out.const(f"{name}.act_lo", -bound), out.const(f"{name}.act_hi", bound)],
                     f"{name}.x_clipped")
        y = out.node("Cast", [y], f"{name}.x_q", to=_FP8_ONNX[fp8], saturate=1)
        y = out.node("Cast", [y], f"{name}.x_codes", to=TensorProto.FLOAT)
    else:
        y = out.node("Round", [y], f"{name}.x_rounded")
        y = out.node("Clip", [y, out.const(f"{name}.act_lo", np.array(-128, np.float32)),
                              out.const(f"{name}.act_hi", np.array(127, np.float32))], f"{name}.x_codes")
    return out.node("Mul", [y, scale], f"{name}.x_dq")
