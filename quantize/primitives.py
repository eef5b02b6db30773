"""Quantization arithmetic: ranges -> scales and zero points, quantize, dequantize, pack.

Conventions (shared with GPTQ's reference code and compressed-tensors):
- integers live in the signed range [-2^(b-1), 2^(b-1) - 1] for both symmetric and
  asymmetric schemes; dequantization is (q - zero_point) * scale.
- symmetric scale = max|x| / ((2^b - 1) / 2), so the whole integer range is used
  (for 4 bits, max|x| maps to 7.5 and the largest positive value is clipped by half a step);
- asymmetric ranges always include 0 so that zero is exact (padding, ReLU outputs);
- scales are float32; an all-zero group gets scale 1 rather than a division by zero;
- FP8 casts saturate to the format's largest finite value instead of overflowing;
- 1-bit ("binary") codes are +-1, never 0: x ~ sign(x) * scale with scale = mean|x| of its group,
  the L2-optimal scale for fixed signs (Rastegari et al., XNOR-Net, 2016; BinaryConnect's signs).
  sign(0) is +1. No zero point: XNOR-Net's optional mean offset would need a float offset per group,
  which the (q - zero_point) * scale format has no place for, and with groups of 64 the group means
  are small next to mean|x|.

Scale shapes, for a weight [N, K] (activations [..., K] follow the same rules on the last dim):
  tensor  [1]         channel [N, 1]        token [..., 1]
  group   [N, ceil(K / group_size)]   (the last group of a row may be shorter than group_size)
  block   [ceil(N / rows), ceil(K / cols)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scheme import QuantArgs, Strategy


def int_range(num_bits: int) -> tuple[int, int]:
    """Smallest and largest integer of a signed `num_bits` code (1 bit: -1 and +1, see module docstring)."""
    if num_bits == 1:
        return -1, 1
    return -(1 << (num_bits - 1)), (1 << (num_bits - 1)) - 1


def fp8_dtype(args: QuantArgs) -> torch.dtype:
    return getattr(torch, args.torch_dtype_name)


def fp8_max(args: QuantArgs) -> float:
    return float(torch.finfo(fp8_dtype(args)).max)


def scale_shape(shape: tuple[int, ...] | torch.Size, args: QuantArgs) -> tuple[int, ...]:
    """Shape of the scale tensor for a tensor of `shape` under `args` (see module docstring)."""
    *lead, k = shape
    s = args.strategy
    if s is Strategy.TENSOR:
        return (1,)
    if s in (Strategy.CHANNEL, Strategy.TOKEN):
        return (*lead, 1)
    if s is Strategy.GROUP:
        return (*lead, math.ceil(k / args.group_size))
    rows, cols = args.block_structure
    (n,) = lead
    return (math.ceil(n / rows), math.ceil(k / cols))


def _blocked(x: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """View `x` as [*scale_shape, elements_per_scale], zero-padding partial groups and blocks.

    Zero padding never changes a range: every range includes zero (see module docstring).
    """
    s = args.strategy
    if s is Strategy.TENSOR:
        return x.reshape(1, -1)
    if s in (Strategy.CHANNEL, Strategy.TOKEN):
        return x.unsqueeze(-2)
    if s is Strategy.GROUP:
        g = args.group_size
        k = x.shape[-1]
        x = F.pad(x, (0, (-k) % g))
        return x.reshape(*x.shape[:-1], x.shape[-1] // g, g)
    rows, cols = args.block_structure
    n, k = x.shape
    x = F.pad(x, (0, (-k) % cols, 0, (-n) % rows))
    nb, kb = x.shape[0] // rows, x.shape[1] // cols
    return x.reshape(nb, rows, kb, cols).permute(0, 2, 1, 3).reshape(nb, kb, rows * cols)


def group_index(in_features: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """g_idx without act-order: input column k belongs to group k // group_size. Shape [K], int32."""
    return (torch.arange(in_features, device=device) // group_size).to(torch.int32)


def expand(param: torch.Tensor, shape: torch.Size | tuple[int, ...], args: QuantArgs,
           g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Broadcast a per-scale tensor (scale or zero point) to the full tensor `shape`.

    g_idx: [K] group of each input column, for act-order GPTQ where groups are not contiguous.
    """
    s = args.strategy
    if s is Strategy.TENSOR:
        return param.reshape([1] * len(shape))
    if s in (Strategy.CHANNEL, Strategy.TOKEN):
        return param
    if s is Strategy.GROUP:
        if g_idx is None:
            g_idx = group_index(shape[-1], args.group_size, param.device)
        return param.index_select(-1, g_idx.to(device=param.device, dtype=torch.long))
    rows, cols = args.block_structure
    n, k = shape
    return param.repeat_interleave(rows, 0)[:n].repeat_interleave(cols, 1)[:, :k]


def reduce_range(x: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale (min, max) of `x`, each of `scale_shape(x.shape, args)`, float32, both including 0."""
    b = _blocked(x.float(), args)
    lo, hi = b.amin(-1), b.amax(-1)
    zero = torch.zeros((), device=x.device)
    return torch.minimum(lo, zero), torch.maximum(hi, zero)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point (None when symmetric) from per-scale ranges; shapes unchanged.

    The division runs in float64 and rounds once to float32. CUDA divides a tensor by a Python
    scalar as a multiplication by its rounded reciprocal, so a float32 amax / 7.5 can differ from
    the CPU's by one ulp; the extreme weights of a group sit exactly on a rounding tie (+-7.5 steps
    at 4 bits), and that ulp flips them. Measured on SmolLM2 W4 g128 RTN: 43.82 vs 44.79 perplexity.
    """
    lo = torch.minimum(lo.double(), torch.zeros_like(lo, dtype=torch.float64))
    hi = torch.maximum(hi.double(), torch.zeros_like(hi, dtype=torch.float64))
    if args.is_float:
        scale = (torch.maximum(-lo, hi) / fp8_max(args)).float()
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None
    qmin, qmax = int_range(args.num_bits)
    if args.symmetric:
        scale = (torch.maximum(-lo, hi) / ((qmax - qmin) / 2)).float()
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None
    scale = ((hi - lo) / (qmax - qmin)).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    lo = lo.float()
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int8)
    return scale, zero_point


def binary_scale(x: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """mean|x| per scale (padding excluded): the scale of 1-bit codes, float32, 1 where all of x is 0."""
    total = _blocked(x.float().abs(), args).sum(-1)
    count = _blocked(torch.ones_like(x, dtype=torch.float32), args).sum(-1)
    scale = total / count
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def choose_qparams(x: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MinMax scale and zero point for `x` under `args` (1-bit: mean|x|, no zero point)."""
    if args.binary:
        return binary_scale(x, args), None
    return qparams_from_range(*reduce_range(x, args), args)


def row_qparams(cols: torch.Tensor, args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point [N] of one group given as its columns [N, g] (GPTQ's groups chosen in its loop)."""
    if args.binary:
        scale = cols.float().abs().mean(1)
        return torch.where(scale > 0, scale, torch.ones_like(scale)), None
    return qparams_from_range(cols.amin(1), cols.amax(1), args)


def binarize(y: torch.Tensor) -> torch.Tensor:
    """sign(y) with sign(0) = +1, as float: the rounding of 1-bit codes."""
    return torch.where(y >= 0, 1.0, -1.0).to(y.dtype)


def cast_fp8(x: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    """Saturating cast: values beyond the format's range become +-max, not inf/NaN."""
    m = fp8_max(args)
    return x.clamp(-m, m).to(fp8_dtype(args))


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, args: QuantArgs,
             g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize `x` with per-scale params; returns int8 codes (signed range) or an FP8 tensor, shaped like x."""
    s = expand(scale, x.shape, args, g_idx)
    if args.is_float:
        return cast_fp8(x.float() / s, args)
    if args.binary:
        return binarize(x.float() / s).to(torch.int8)
    qmin, qmax = int_range(args.num_bits)
    q = torch.round(x.float() / s)
    if zero_point is not None:
        q = q + expand(zero_point, x.shape, args, g_idx).float()
    return q.clamp(qmin, qmax).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, args: QuantArgs,
               dtype: torch.dtype = torch.float32, g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse of `quantize`: (q - zero_point) * scale, computed in float32, returned as `dtype`."""
    x = q.float()
    if zero_point is not None:
        x = x - expand(zero_point, q.shape, args, g_idx).float()
    return (x * expand(scale, q.shape, args, g_idx)).to(dtype)


def fake_quantize(x: torch.Tensor, args: QuantArgs, g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize and dequantize with MinMax params, returning the dtype of `x`."""
    if g_idx is not None or args.binary or args.is_float or args.strategy is Strategy.BLOCK:
        scale, zp = choose_qparams(x, args)
        return dequantize(quantize(x, scale, zp, args, g_idx), scale, zp, args, x.dtype, g_idx)
    # The arithmetic of quantize + dequantize, element for element (same results to the bit), on the
    # [..., scales, elements per scale] view with broadcast parameters instead of scale and zero point
    # expanded to x's shape: AWQ fake-quantizes the weights of each of its grid candidates, and the
    # expansions (index_select) and int8 round trips were most of that cost.
    b = _blocked(x.float(), args)
    zero = torch.zeros((), device=x.device)
    scale, zp = qparams_from_range(torch.minimum(b.amin(-1), zero), torch.maximum(b.amax(-1), zero), args)
    qmin, qmax = int_range(args.num_bits)
    scale = scale.unsqueeze(-1)
    y = torch.round(b / scale)
    if zp is not None:
        zp = zp.unsqueeze(-1).float()
        y = y.add_(zp).clamp_(qmin, qmax).sub_(zp)
    else:
        y = y.clamp_(qmin, qmax)
    y = y.mul_(scale)
    if args.strategy is Strategy.GROUP:  # drop the zero padding of a short last group
        y = y.reshape(*y.shape[:-2], -1)[..., : x.shape[-1]]
    return y.reshape(x.shape).to(x.dtype)


@dataclass
class QTensor:
    """A quantized weight before packing.

    values: [N, K] int8 codes or FP8; scale: float32 (see module docstring for shapes);
    zero_point: int8 like scale, or None; g_idx: [K] int32 group per input column (act-order) or None.
    """

    values: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    args: QuantArgs
    g_idx: torch.Tensor | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.values, self.scale, self.zero_point, self.args, dtype, self.g_idx)


def quantize_weight(weight: torch.Tensor, args: QuantArgs) -> QTensor:
    """Round-to-nearest with MinMax scales. weight: [N, K]."""
    scale, zp = choose_qparams(weight, args)
    return QTensor(quantize(weight, scale, zp, args), scale, zp, args)


# --- INT packing -----------------------------------------------------------------------------
# Layout (compressed-tensors' `pack_to_int32` before 0.18; see compressed.py): codes are offset to unsigned
# u = q + 2^(b-1); along the last dim, each run of 32 // b consecutive codes fills one int32,
# code j of a run at bits [j*b, (j+1)*b). 4 bits: 8 codes per word; 3 bits: 10 (2 bits unused);
# 2 bits: 16. The last word of a row is zero-padded.
# 1 bit: 32 codes per word, bit j set where code j is +1 (u = (q + 1) / 2), clear where it is -1.


def pack_factor(num_bits: int) -> int:
    return 32 // num_bits


def to_unsigned(q: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Signed codes -> the unsigned field stored in a word (int32)."""
    q = q.to(torch.int32)
    return (q > 0).to(torch.int32) if num_bits == 1 else q + (1 << (num_bits - 1))


def pack_int(q: torch.Tensor, num_bits: int) -> torch.Tensor:
    """q: [..., K] int8 codes in the signed range -> [..., ceil(K / (32 // num_bits))] int32."""
    if not 1 <= num_bits <= 7:
        raise ValueError(f"packing is for 1..7-bit codes, got num_bits={num_bits}")
    pf = pack_factor(num_bits)
    u = to_unsigned(q, num_bits)
    k = u.shape[-1]
    u = F.pad(u, (0, (-k) % pf)).reshape(*u.shape[:-1], -1, pf)
    packed = torch.zeros(u.shape[:-1], dtype=torch.int32, device=q.device)
    for j in range(pf):
        packed |= u[..., j] << (num_bits * j)
    return packed


def unpack_int(packed: torch.Tensor, num_bits: int, k: int) -> torch.Tensor:
    """Inverse of `pack_int`: [..., W] int32 -> [..., k] int8 codes in the signed range."""
    pf = pack_factor(num_bits)
    shifts = torch.arange(pf, device=packed.device, dtype=torch.int32) * num_bits
    u = (packed.unsqueeze(-1) >> shifts) & ((1 << num_bits) - 1)
    u = u.reshape(*packed.shape[:-1], -1)[..., :k]
    if num_bits == 1:
        return (2 * u - 1).to(torch.int8)
    return (u - (1 << (num_bits - 1))).to(torch.int8)
