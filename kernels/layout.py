"""The kernel layout of integer weights, built and read back in plain PyTorch.

Checkpoints keep the compressed-tensors layout (quantize/primitives.py: 8 consecutive K-codes per
int32). The CUDA kernels (csrc/wo_*.cu) want a layout where every lane of a warp reads 16 bytes that
already are its A fragments of mma.m16n8k16 (the GEMVs and the GEMMs alike):

  qweight [N_pad/16, K_pad/chunk, R, 4] int32   stripes of 16 rows, chunks of 128 k (2-, 3-bit) / 64 k (int4)
                                                 / 32 k (int8); lane l, word w, code slot s -> (row, k) by
                                                 `_fragment_map`; R = 32 rows of 16 bytes, one per lane, but
                                                 48 for 3-bit: the low 2 bits of each code as the 2-bit layout
                                                 (rows 0..31), then the high bits (rows 32..47, lane l's 8
                                                 bytes at byte 8l), so every load stays aligned
  scale   [G_pad, N_pad] float32                 group-major; padding has scale 0
  zero    [G_pad, N_pad] float32 or None         the zero point in the signed domain, as a float

Codes are stored unsigned (q + 2^(bits-1)). K is padded to a multiple of `pad_k` (64; 128 for 2- and 3-bit:
one chunk) with the row's zero point,
so padded weights dequantize to exactly 0; N is padded to 16. Act-order (g_idx) is removed here by
sorting the input columns by group (`act_order_permutation`): the forward pass then gathers the
activations with the same permutation, so kernels only ever see contiguous groups.
Scales stay float32: the kernels apply them in float32, as the reference does.

A second layout, `pack_rows`, serves 8-bit symmetric per-channel weights on `w8_gemv` (csrc/w8_gemv.cu, the W8A8
layers' GEMV, which reads codes and activations of the same contiguous k with one 16-byte load each): the codes
row-major, rows [N, K] int8, with scale [1, N] float32 and no qweight (weight_only.takes_rows says where).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import reference
from .reference import expand_groups

if TYPE_CHECKING:  # mixed_mm imports build, which imports this module
    from .mixed_mm import MixedWeight

TILE_N = 16  # rows per stripe: the M of mma.m16n8k16
PAD_K = 64  # K padding unit (the int4 chunk); 2- and 3-bit weights pad to their 128-k chunk (`pad_k`)
KERNEL_BITS = (2, 3, 4, 8)  # code widths the kernel layout stores natively
LOW_BITS = (2, 3)  # 128-k chunks: 8 subtiles per lane, so at least 32 k per group (4 groups per chunk)
# The raw ops keep a `str activation` epilogue argument in their C++ schema; qtool only ever passes this.
EPILOGUE = "none"

# Added to wo_gemv's variant for a prepared (static) weight: the ring GEMV then runs with programmatic dependent
# launch (csrc/pdl.cuh): its first weight loads overlap the previous kernel's tail. Session 18, H200, one token,
# graph replay: W4 g128 4096 x 4096 6.0 -> 4.9 us, 8192 x 8192 14.7 -> 13.3, 28672 x 8192 43.5 -> 41.1.
PDL_STATIC_WEIGHT = 16

KERNEL_DTYPES = (torch.float16, torch.bfloat16)  # the activation dtypes every kernel takes


class UnsupportedLayout(ValueError):
    """A weight the kernels cannot take (bits, group size or act-order pattern); use the reference."""


def chunk_k(num_bits: int) -> int:
    """k covered by one lane's 16-byte load of low codes: 128 for 2- and 3-bit (whose high bits come in
    a second, 8-byte load), 64 for int4, 32 for int8 (csrc/wo_kernels.h derives the same)."""
    return 128 if num_bits in LOW_BITS else 256 // num_bits


def pad_k(num_bits: int) -> int:
    """K of a packed weight is a multiple of this (csrc/wo_kernels.h, pad_k)."""
    return max(PAD_K, chunk_k(num_bits))


def kernel_group_size(num_bits: int, group_size: int) -> int:
    """The group size the kernels take: a power of two >= 16 (>= 32 for 2- and 3-bit), or -1 for one
    scale per row."""
    if num_bits not in KERNEL_BITS:
        raise UnsupportedLayout(f"kernels take 2-, 3-, 4- or 8-bit weights, not {num_bits}-bit")
    if group_size <= 0:
        return -1
    smallest = 32 if num_bits in LOW_BITS else 16
    if group_size < smallest or group_size & (group_size - 1):
        raise UnsupportedLayout(f"kernels take power-of-two group sizes >= {smallest} for {num_bits}-bit weights, "
                                f"not {group_size}")
    return group_size


@dataclass
class PackedWeight:
    """A weight in the kernel layout (see module docstring); the arguments of torch.ops.qtool_cuda.*."""

    qweight: torch.Tensor | None  # int32 [N_pad/16, K_pad/chunk, 32, 4] ([.., 48, 4] for 3-bit); None with rows
    scale: torch.Tensor  # float32 [G_pad, N_pad]
    zero: torch.Tensor | None  # float32 [G_pad, N_pad], None when symmetric
    perm: torch.Tensor | None  # int64 [K]: kernel input column j is activation column perm[j]; None: identity
    num_bits: int
    group_size: int  # power of two >= 16, or -1 per channel
    in_features: int
    out_features: int
    mixed: MixedWeight | None = None  # the same weight for the Hopper W4A16 GEMM (mixed_mm.py), where built
    rows: torch.Tensor | None = None  # int8 [N, K] row-major codes in place of qweight (`pack_rows`)

    @property
    def k_padded(self) -> int:
        if self.qweight is None:
            return self.rows.shape[1]
        return self.qweight.shape[1] * chunk_k(self.num_bits)

    @property
    def codes_tensor(self) -> torch.Tensor:
        """The tensor holding the codes (qweight, or rows): its device, and what a prefetch pulls into L2."""
        return self.rows if self.qweight is None else self.qweight


def _fragment_map(num_bits: int, high_plane: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, k) inside a stripe chunk of code slot s of word w of lane l, each [32, words, slots].

    Register p of lane l (PTX mma.m16n8k16, A fragments) holds row l // 4 + 8 * (p % 2) at
    k = 2 * (l % 4) + 8 * (p // 2) + h, h = 0, 1. Where a (subtile j, p, h) code sits (csrc/wo_decode.cuh):
    int4: word j, nibble p + 4h;  int8: word 2j + p // 2, byte 2 * (p % 2) + h;
    2-bit (and the low bits of 3-bit): word j // 2, 2-bit slot 2 * (p + 4h) + j % 2, i.e. bits 4i + 2 (j % 2)
    with i = p + 4h: even subtiles in the low halves of the nibbles, odd ones in the high halves;
    high_plane (3-bit): 2 words per lane, subtile j's bits in word j // 4 at bit 4i + (2 + j % 4) % 4, so
    that the kernels merge each subtile into a word of 3-bit nibbles with one LOP3 (wo_decode.cuh).
    """
    slots = 32 if high_plane else 16 if num_bits in LOW_BITS else 32 // num_bits
    words = 2 if high_plane else 4
    lane = torch.arange(32).view(32, 1, 1)
    word = torch.arange(words).view(1, words, 1)
    slot = torch.arange(slots).view(1, 1, slots)
    if high_plane:
        i, b = slot // 4, slot % 4
        j, p, h = 4 * word + (b + 2) % 4, i % 4, i // 4
    elif num_bits in LOW_BITS:
        i = slot // 2
        j, p, h = 2 * word + slot % 2, i % 4, i // 4
    elif num_bits == 4:
        j, p, h = word, slot % 4, slot // 4
    else:
        j, p, h = word // 2, 2 * (word % 2) + slot // 2, slot % 2
    row = lane // 4 + 8 * (p % 2)
    k = 16 * j + 2 * (lane % 4) + 8 * (p // 2) + h
    shape = (32, words, slots)
    return row.expand(shape), k.expand(shape)


def _planes(num_bits: int) -> list[tuple[int, int, bool]]:
    """(bit offset, width, high_plane) of each plane a code is split into: 3-bit codes are a 2-bit plane
    (bits 0..1) and a 1-bit plane (bit 2); other widths are one plane."""
    if num_bits == 3:
        return [(0, 2, False), (2, 1, True)]
    return [(0, 2 if num_bits == 2 else num_bits, False)]


def act_order_permutation(g_idx: torch.Tensor | None, group_size: int, in_features: int) -> torch.Tensor | None:
    """Column order that makes act-order groups contiguous, or None when they already are.

    Sorting the columns by group (stably) works when every group has group_size members, the last
    possibly fewer: then sorted column j is in group j // group_size, as the kernels assume.
    """
    if g_idx is None:
        return None
    g = g_idx.long()
    perm = torch.argsort(g, stable=True)
    if group_size <= 0 or not torch.equal(g[perm], torch.arange(in_features, device=g.device) // group_size):
        raise UnsupportedLayout("act-order groups are not all group_size long, so sorting K cannot make them contiguous")
    return None if torch.equal(perm, torch.arange(in_features, device=g.device)) else perm


def takes_rows_shape(n: int, k: int) -> bool:
    """Whether an [n, k] weight fits `pack_rows` without padding (w8_gemv: k % 16; the Hopper copy and the
    GEMVs' padding: k % PAD_K, n % TILE_N)."""
    return n % TILE_N == 0 and k % PAD_K == 0


def pack_rows(codes: torch.Tensor, scale: torch.Tensor) -> PackedWeight:
    """codes [N, K] int8 signed, scale [N, 1] float32 (8-bit, symmetric, per channel; `takes_rows_shape`)
    -> the row-major layout: rows [N, K] int8, scale [1, N] float32, no qweight."""
    n, k = codes.shape
    if not takes_rows_shape(n, k) or scale.shape != (n, 1):
        raise UnsupportedLayout(f"pack_rows takes [N % {TILE_N}, K % {PAD_K}] codes and [N, 1] scales, got "
                                f"{tuple(codes.shape)} and {tuple(scale.shape)}")
    return PackedWeight(None, scale.float().t().contiguous(), None, None, 8, -1, k, n,
                        rows=codes.to(torch.int8).contiguous())


def pack_weight(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                g_idx: torch.Tensor | None, num_bits: int, group_size: int) -> PackedWeight:
    """Checkpoint quantities -> kernel layout; raises UnsupportedLayout for weights the kernels cannot take.

    codes [N, K] int8 signed; scale [N, G] float32; zero_point [N, G] int8 or None; g_idx [K] or None;
    group_size <= 0 means one scale per row.
    """
    gs = kernel_group_size(num_bits, group_size)
    n, k = codes.shape
    perm = act_order_permutation(g_idx, group_size, k)
    if perm is not None:
        codes = codes.index_select(1, perm)
    n_pad, k_pad = -(-n // TILE_N) * TILE_N, -(-k // pad_k(num_bits)) * pad_k(num_bits)
    groups = 1 if gs < 0 else -(-k_pad // gs)
    pad = (0, groups - scale.shape[1], 0, n_pad - n)
    scale_p = F.pad(scale.float(), pad)
    zero_p = None if zero_point is None else F.pad(zero_point.float(), pad)

    # Padding columns take the zero point of their row and group, so they dequantize to 0.
    full = torch.zeros(n_pad, k_pad, dtype=torch.int16, device=codes.device)
    if zero_p is not None:
        full.copy_(expand_groups(zero_p.to(torch.int16), gs, k_pad))
    full[:n, :k] = codes
    unsigned = (full + (1 << (num_bits - 1))).to(torch.uint8)

    kc = chunk_k(num_bits)
    stripes, chunks = n_pad // TILE_N, k_pad // kc
    tiles = unsigned.view(stripes, TILE_N, chunks, kc).permute(0, 2, 1, 3).reshape(stripes, chunks, TILE_N * kc)
    planes = []
    for offset, width, high in _planes(num_bits):
        row, col = _fragment_map(num_bits, high)
        flat = (row * kc + col).to(codes.device)
        bits = (tiles.to(torch.int64) >> offset) & ((1 << width) - 1)
        words = torch.zeros(stripes, chunks, 32, flat.shape[1], dtype=torch.int64, device=codes.device)
        for s in range(flat.shape[-1]):
            words |= bits.index_select(2, flat[..., s].reshape(-1)).view(stripes, chunks, 32, -1) << (width * s)
        planes.append(words.view(stripes, chunks, -1, 4))  # the 1-bit plane: 8 bytes per lane, 2 lanes per row
    words = torch.cat(planes, dim=2)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    return PackedWeight(words, scale_p.t().contiguous(), None if zero_p is None else zero_p.t().contiguous(),
                        perm, num_bits, gs, k, n)


def unpack_codes(qweight: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Inverse of the packing step: kernel-layout words -> signed codes [N_pad, K_pad] int8."""
    stripes, chunks = qweight.shape[:2]
    kc = chunk_k(num_bits)
    words = qweight.to(torch.int64) & 0xFFFFFFFF
    tiles = torch.zeros(stripes, chunks, TILE_N * kc, dtype=torch.int64, device=qweight.device)
    first = 0
    for offset, width, high in _planes(num_bits):
        row, col = _fragment_map(num_bits, high)
        rows = 32 * row.shape[1] // 4  # rows of 4 words this plane takes
        plane = words[:, :, first:first + rows].reshape(stripes, chunks, 32, -1)
        first += rows
        for s in range(row.shape[-1]):
            flat = (row[..., s] * kc + col[..., s]).reshape(-1).to(qweight.device)
            tiles[:, :, flat] |= ((plane >> (width * s)) & ((1 << width) - 1)).reshape(stripes, chunks, -1) << offset
    unsigned = tiles.view(stripes, chunks, TILE_N, kc).permute(0, 2, 1, 3).reshape(stripes * TILE_N, chunks * kc)
    return (unsigned - (1 << (num_bits - 1))).to(torch.int8)


def dequantize_packed(qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, num_bits: int,
                      group_size: int, out_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense [N, K_pad] weight of the kernel layout, (q - z) * s in float32: what dequant_int computes."""
    q = unpack_codes(qweight, num_bits)[:out_features].float()
    k_pad = q.shape[1]
    if zero is not None:
        q = q - expand_groups(zero.t()[:out_features], group_size, k_pad)
    return (q * expand_groups(scale.t()[:out_features], group_size, k_pad)).to(dtype)


class ReferenceOps:
    """The torch.ops.qtool_cuda kernels in PyTorch, argument for argument (CPU tests, GPU oracle)."""

    @staticmethod
    def wo_gemv(x, qweight, scale, zero, bias, num_bits, group_size, out_features, activation, prefetch=None,
                variant=0):
        # prefetch (an L2 hint for the next layer's weight in the CUDA kernel) and variant (its launch
        # shape) change nothing here
        if activation != EPILOGUE:
            raise ValueError(f"qtool's kernels run without an epilogue ({EPILOGUE!r}), got activation={activation!r}")
        w = dequantize_packed(qweight, scale, zero, num_bits, group_size, out_features)
        y = x.float() @ w.T
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype)

    @staticmethod
    def wo_gemm(x, qweight, scale, zero, bias, num_bits, group_size, out_features, activation):
        return ReferenceOps.wo_gemv(x, qweight, scale, zero, bias, num_bits, group_size, out_features, activation)

    @staticmethod
    def wo_gemm_v3(x, qweight, scale, zero, bias, num_bits, group_size, out_features, activation, variant=0):
        return ReferenceOps.wo_gemv(x, qweight, scale, zero, bias, num_bits, group_size, out_features, activation)

    @staticmethod
    def w8_gemv(x, w, scale, bias, block_n, block_k, pdl=0, prefetch=None, swiglu=0):
        """Per-channel scales only (block_n = 0), as weight_only uses it; `pdl` and `prefetch` are hints for the
        CUDA kernel, ignored here; swiglu: y = silu(gate) * up of w = [gate; up], in float32."""
        if block_n:
            raise ValueError("ReferenceOps.w8_gemv takes per-channel scales (block_n = 0)")
        y = x.float() @ (w.float() * scale.float().view(-1, 1)).T
        if bias is not None:
            y = y + bias.float()
        return reference.silu_mul(y).to(x.dtype) if swiglu else y.to(x.dtype)

    @staticmethod
    def x_planes(x, pdl=0, natural=0, gated=0):
        """x [m, K] -> its planes, or for gated=1 x [m, 2K] = [gate | up] -> the planes of silu(gate) * up."""
        return reference.x_planes(reference.silu_mul(x) if gated else x, bool(natural))

    @staticmethod
    def w8_planes_gemv(planes, xscale, w, wscale, bias, dtype, variant=0):
        """y of `dtype` from int8 rows [n, k] with per-row scales and x as x_planes gave it in k order."""
        y = reference.planes_to_x(planes, xscale, natural=True) @ (w.float() * wscale.float().view(-1, 1)).T
        return (y if bias is None else y + bias.float()).to(dtype)

    @staticmethod
    def wo_planes_gemv(planes, xscale, qweight, scale, zero, bias, group_size, out_features, dtype, variant=0,
                       num_bits=4, prefetch=None):
        """y of `dtype` from x as x_planes gave it; `variant` is the launch's shape, plus 32 (int8_planes.GATED_FLAG)
        for interleaved gate / up rows: silu(gate) * up of y."""
        w = dequantize_packed(qweight, scale, zero, num_bits, group_size, out_features)
        y = reference.planes_to_x(planes, xscale) @ w.T
        y = (y if bias is None else y + bias.float()).to(dtype)
        return reference.silu_mul(y, interleaved=True) if variant >= 32 else y

    @staticmethod
    def norm_planes(x, residual, weight, eps, pdl=0, natural=0):
        return reference.norm_planes(x, residual, weight, eps, bool(natural))

    @staticmethod
    def silu_mul(x, pdl=0):
        """`pdl` bit 1: x's gate and up interleaved by 8 columns (bit 0, PDL, is a launch hint)."""
        return reference.silu_mul(x, interleaved=bool(pdl & 2))

    @staticmethod
    def dequant_int(qweight, scale, zero, num_bits, group_size, out_features, dtype):
        return dequantize_packed(qweight, scale, zero, num_bits, group_size, out_features, dtype)
