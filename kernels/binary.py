"""1-bit weights on CUDA: the layouts of the W1A16 GEMV and the W1A1 GEMM, built and read back in PyTorch,
and the two forward passes over them (issue 21).

Checkpoints keep 32 codes per int32 along K, bit j set where code j is +1 (quantize/primitives.py).
  W1A16, qtool_cuda::w1_gemv (m <= 8 per call, larger m in slices): each lane of a warp reads 16 bytes
    that are its mma.m16n8k16 A fragments as sign bits (csrc/w1_gemv.cu):
      qweight [N_pad/16, K_pad/256, 32, 4] int32   bit b of word w of lane l -> (row, k) by `gemv_bit_map`
      scale   [N_pad/16, K_pad/256, 8, 2, gpc]     lane (g, t) reads rows g, g + 8 of the chunk's gpc groups
              [N_pad] per channel
    N_pad is a multiple of 32, K_pad of 256; x is zero-padded to K_pad, so the padding codes add 0.
  W1A1, qtool_cuda::binarize + qtool_cuda::w1a1_gemm: the checkpoint words as they are, padded
      bits    [N_pad, K_pad/32] int32 (N_pad a multiple of 256, K_pad of 512; padding bits 0)
      scale   [G, N_pad] float32 group-major
      cterm   [N_pad] float32 = sum_g scale[g, n] * (K_g - 2 popc(bits of row n in group g))
    (the weight side of sum(a b) = 4 popc(a & b) - 2 popc(a) - 2 popc(b) + K_g over +-1 values; csrc/w1a1.cu).
Group sizes the kernels take: 32, 64, 128, multiples of 256, or one scale per row; others run the reference.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layout import UnsupportedLayout
from .reference import unpack_weight

GEMV_CHUNK_K = 256
GEMV_ROWS = 32  # csrc/w1_kernels.h, kW1GemvRows
GEMV_MAX_M = 8  # kMaxW1GemvTokens
# W1A16 above 8 tokens runs the GEMV once per 8 tokens up to CHUNKED_MAX_M: each call streams the
# 1-bit weights again (~13-15 us at 8192 x 8192 on the H200), so 16 tokens cost about one bf16 GEMM and
# 32 about 1.7, still far below the reference's unpack of the whole weight per call; above, the reference.
CHUNKED_MAX_M = 32
GEMM_PAD_N, GEMM_PAD_K = 256, 512  # kW1A1PadN, kW1A1PadK


def kernel_group_size(group_size: int) -> int:
    """The group size the 1-bit kernels take (-1: one scale per row); UnsupportedLayout otherwise."""
    if group_size <= 0:
        return -1
    if group_size in (32, 64, 128) or group_size % 256 == 0:
        return group_size
    raise UnsupportedLayout(f"1-bit kernels take groups of 32, 64, 128 or multiples of 256, not {group_size}")


def _round_up(v: int, unit: int) -> int:
    return -(-v // unit) * unit


def _signs(qweight: torch.Tensor, in_features: int, n_pad: int, k_pad: int) -> torch.Tensor:
    """Checkpoint words [N, ceil(K/32)] -> bits [n_pad, k_pad] uint8 (1 for +1), zero padding."""
    bits = (unpack_weight(qweight, 1, in_features) > 0).to(torch.uint8)
    return F.pad(bits, (0, k_pad - in_features, 0, n_pad - bits.shape[0]))


# --- W1A16 ------------------------------------------------------------------------------------


@dataclass
class GemvWeight:
    """A 1-bit weight in the W1A16 GEMV layout (module docstring): the arguments of qtool_cuda::w1_gemv."""

    qweight: torch.Tensor
    scale: torch.Tensor
    group_size: int  # kernel_group_size
    in_features: int
    out_features: int

    @property
    def k_padded(self) -> int:
        return self.qweight.shape[1] * GEMV_CHUNK_K


@functools.cache
def gemv_bit_map() -> tuple[torch.Tensor, torch.Tensor]:
    """(row in stripe, k in chunk) of bit b of word w of lane l, each [32, 4, 32].

    The kernel builds register p of step j from bits 15 - s (k pair element 0) and 31 - s (element 1) of
    word j // 4, s = 4 (j % 4) + p. Register p of lane (g, t) (PTX mma.m16n8k16 A fragment) holds row
    g + 8 (p % 2) at logical k 2t + 8 (p // 2) + h; the physical k is 16 j + 4 t + 2 (p // 2) + h, so the
    lane's B values are 4 consecutive k (one 8-byte load).
    """
    lane = torch.arange(32).view(32, 1, 1)
    word = torch.arange(4).view(1, 4, 1)
    bit = torch.arange(32).view(1, 1, 32)
    g, t = lane // 4, lane % 4
    h, s = bit // 16, 15 - bit % 16
    j, p = 4 * word + s // 4, s % 4
    row = g + 8 * (p % 2)
    k = 16 * j + 4 * t + 2 * (p // 2) + h
    return row.expand(32, 4, 32).contiguous(), k.expand(32, 4, 32).contiguous()


def gemv_groups_per_chunk(group_size: int) -> int:
    """Scale groups per 256-k chunk in the GEMV layout: 0 per row, 1 for groups >= 256, else 256 // group_size."""
    return 0 if group_size <= 0 else 1 if group_size >= GEMV_CHUNK_K else GEMV_CHUNK_K // group_size


def pack_gemv(qweight: torch.Tensor, scale: torch.Tensor, group_size: int, in_features: int) -> GemvWeight:
    """Checkpoint words [N, ceil(K/32)] and scales [N, G] -> the W1A16 GEMV layout."""
    gs = kernel_group_size(group_size)
    n, k = qweight.shape[0], in_features
    n_pad, k_pad = _round_up(n, GEMV_ROWS), _round_up(k, GEMV_CHUNK_K)
    stripes, chunks = n_pad // 16, k_pad // GEMV_CHUNK_K
    bits = _signs(qweight, k, n_pad, k_pad)
    tiles = bits.view(stripes, 16, chunks, GEMV_CHUNK_K).permute(0, 2, 1, 3).reshape(stripes, chunks, -1)
    row, col = gemv_bit_map()
    flat = (row * GEMV_CHUNK_K + col).to(bits.device)
    words = torch.zeros(stripes, chunks, 32, 4, dtype=torch.int64, device=bits.device)
    for b in range(32):
        words |= tiles.index_select(2, flat[..., b].reshape(-1)).view(stripes, chunks, 32, 4).to(torch.int64) << b
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    gpc = gemv_groups_per_chunk(gs)
    if gpc == 0:
        packed_scale = F.pad(scale[:, 0].float(), (0, n_pad - n))
    else:
        # group of (chunk c, slot i): the one holding k = 256 c + i * 256 / gpc; past the last group: 0
        starts = torch.arange(chunks * gpc, device=scale.device) * (GEMV_CHUNK_K // gpc)
        groups = starts // gs
        full = F.pad(scale.float(), (0, 1, 0, n_pad - n))  # column G: zeros for groups past the end
        per = full[:, groups.clamp(max=scale.shape[1])].view(stripes, 2, 8, chunks, gpc)  # [s, row // 8, g, c, i]
        packed_scale = per.permute(0, 3, 2, 1, 4).contiguous()  # [s, c, g, row // 8, i]
    return GemvWeight(words, packed_scale, gs, k, n)


def unpack_gemv(w: GemvWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_gemv`: (codes [N_pad, K_pad] int8 +-1, per-k scales [N_pad, K_pad] float32)."""
    stripes, chunks = w.qweight.shape[:2]
    row, col = gemv_bit_map()
    words = w.qweight.to(torch.int64) & 0xFFFFFFFF
    tiles = torch.zeros(stripes, chunks, 16 * GEMV_CHUNK_K, dtype=torch.int64, device=w.qweight.device)
    for b in range(32):
        tiles[:, :, (row[..., b] * GEMV_CHUNK_K + col[..., b]).reshape(-1).to(tiles.device)] = (
            (words >> b) & 1).reshape(stripes, chunks, -1)
    bits = tiles.view(stripes, chunks, 16, GEMV_CHUNK_K).permute(0, 2, 1, 3).reshape(stripes * 16, -1)
    k_pad = chunks * GEMV_CHUNK_K
    if w.scale.dim() == 1:
        per_k = w.scale.view(-1, 1).expand(-1, k_pad)
    else:
        gpc = w.scale.shape[-1]
        per = w.scale.permute(0, 3, 2, 1, 4).reshape(stripes * 16, chunks * gpc)  # [row, chunk-slot]
        per_k = per.repeat_interleave(GEMV_CHUNK_K // gpc, dim=1)
    return (2 * bits - 1).to(torch.int8), per_k.float()


def gemv_reference(x: torch.Tensor, w: GemvWeight, bias: torch.Tensor | None) -> torch.Tensor:
    """What qtool_cuda::w1_gemv computes, from the layout alone, x [m, K_pad] (CPU tests, GPU oracle)."""
    codes, per_k = unpack_gemv(w)
    y = x.float() @ (codes.float() * per_k)[: w.out_features].T
    return (y if bias is None else y + bias.float()).to(x.dtype)


# --- W1A1 -------------------------------------------------------------------------------------


@dataclass
class GemmWeight:
    """A 1-bit weight in the W1A1 GEMM layout (module docstring): the weight arguments of qtool_cuda::w1a1_gemm."""

    bits: torch.Tensor
    scale: torch.Tensor
    cterm: torch.Tensor
    group_size: int  # kernel_group_size
    in_features: int
    out_features: int

    @property
    def k_padded(self) -> int:
        return self.bits.shape[1] * 32


def pack_gemm(qweight: torch.Tensor, scale: torch.Tensor, group_size: int, in_features: int) -> GemmWeight:
    """Checkpoint words [N, ceil(K/32)] and scales [N, G] -> the W1A1 GEMM layout."""
    gs = kernel_group_size(group_size)
    n, k = qweight.shape[0], in_features
    n_pad, k_pad = _round_up(n, GEMM_PAD_N), _round_up(k, GEMM_PAD_K)
    bits = _signs(qweight, k, n_pad, k_pad)
    words = (bits.view(n_pad, -1, 32).to(torch.int64) << torch.arange(32, device=bits.device)).sum(-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    groups = 1 if gs < 0 else -(-k // gs)
    width = k if gs < 0 else gs
    bits = F.pad(bits, (0, max(0, groups * width - k_pad)))
    valid = bits[:, :groups * width].view(n_pad, groups, width)  # padding bits are 0, so they count nothing
    ones = valid.sum(-1, dtype=torch.float64)
    sizes = torch.clamp(k - torch.arange(groups, device=bits.device, dtype=torch.float64) * width, max=width)
    ws = F.pad(scale.double(), (0, 0, 0, n_pad - n))[:, :groups]
    cterm = (ws * (sizes - 2 * ones)).sum(-1).float()
    return GemmWeight(words, ws.float().t().contiguous(), cterm, gs, k, n)


def binary_gemm_linear(x: torch.Tensor, w: GemmWeight, bias: torch.Tensor | None, kernels,
                       out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """W1A1 forward over the GEMM layout: x [m, K] -> [m, N] in out_dtype (x.dtype by default)."""
    bits, xscale, popc = kernels.binarize(x, w.group_size, w.k_padded)
    return kernels.w1a1_gemm(bits, xscale, popc, w.bits, w.scale, w.cterm, bias, x.shape[0], w.out_features,
                             w.group_size, out_dtype or x.dtype)


def binary_gemv_linear(x: torch.Tensor, w: GemvWeight, bias: torch.Tensor | None, kernels) -> torch.Tensor:
    """W1A16 forward over the GEMV layout for x [m <= CHUNKED_MAX_M, K] -> [m, N]: zero-pads x to K_pad
    (16-byte aligned) and runs the GEMV on each slice of up to GEMV_MAX_M tokens."""
    # F.pad copies even when it pads nothing: one more kernel per call (at one token on 8192 x 8192 a tenth of it)
    x2 = (F.pad(x, (0, w.k_padded - x.shape[1])) if x.shape[1] != w.k_padded else x).contiguous()
    if not torch.compiler.is_compiling() and x2.data_ptr() % 16:
        x2 = x2.clone()
    # Each slice of a contiguous [m, K_pad] with K_pad a multiple of 16 elements stays 16-byte aligned.
    parts = [kernels.w1_gemv(x2[i:i + GEMV_MAX_M], w.qweight, w.scale, bias, w.group_size, w.out_features)
             for i in range(0, x2.shape[0], GEMV_MAX_M)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
