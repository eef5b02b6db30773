"""Row-major 4-bit weights for `qtool_cuda::w4_gemv` (csrc/w4_gemv.cu), and its PyTorch reference.

The layout puts w8_gemv's design (each lane reads a run of codes and the activations of the same k with 16-byte
loads) under 4-bit weights: rows [N_pad, K_pad / 2] uint8, two codes per byte, u = q + 8. Inside each 32-bit word
(8 consecutive k) the nibbles are ordered (k0, k2, k4, k6, k1, k3, k5, k7), so that nibbles p and p + 4 are the pair
(k_2p, k_2p+1): one shift and one LOP3 make an mma A register of two codes, and the matching B register is the
activations' own word for the same two k. Scales and zero points stay per (row, group), float32; groups are a
multiple of 128 k (one group per lane tile of the kernel), or one per row.

Session 18 wrote it without a GPU; nothing dispatches to it until it is measured (dev/session19.sh w4rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .layout import UnsupportedLayout

TILE_K = 128  # k per lane tile of the kernel: groups are a multiple of it
ROWS = 16  # rows per stripe
NIBBLE_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a word holds the code of k = 8 j + NIBBLE_ORDER[i]


@dataclass
class W4Rows:
    """rows [N_pad, K_pad / 2] uint8; scale / zero [N_pad, K_pad / group_size] float32 (zero None: symmetric)."""

    rows: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    group_size: int  # k per scale: a multiple of TILE_K dividing K_pad (K_pad itself: one scale per row)
    in_features: int
    out_features: int

    @property
    def k_padded(self) -> int:
        return self.rows.shape[1] * 2


def pack_w4_rows(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                 group_size: int) -> W4Rows:
    """codes [N, K] int8 in [-8, 7]; scale [N, G] float; zero_point [N, G] or None; group_size <= 0: one scale per
    row -> W4Rows. Raises UnsupportedLayout (naming the value) for groups the kernel cannot take."""
    n, k = codes.shape
    if group_size > 0 and group_size % TILE_K:
        raise UnsupportedLayout(f"w4_gemv takes groups that are a multiple of {TILE_K} (or one per row), "
                                f"got group_size={group_size}")
    if codes.min() < -8 or codes.max() > 7:
        raise UnsupportedLayout(f"w4_gemv takes 4-bit codes in [-8, 7], got [{int(codes.min())}, {int(codes.max())}]")
    k_pad = -(-k // TILE_K) * TILE_K
    gs = k_pad if group_size <= 0 else group_size
    k_pad = -(-k_pad // gs) * gs
    n_pad, groups = -(-n // ROWS) * ROWS, k_pad // gs
    if scale.shape != (n, groups) or (zero_point is not None and zero_point.shape != (n, groups)):
        raise UnsupportedLayout(f"w4_gemv needs scales (and zero points) [{n}, {groups}] for K={k} in groups of "
                                f"{gs}, got {tuple(scale.shape)}")
    u = F.pad(codes.to(torch.int16) + 8, (0, k_pad - k, 0, n_pad - n), value=8)  # padding: q = 0
    nib = u.view(n_pad, k_pad // 8, 8)[..., list(NIBBLE_ORDER)]
    rows = (nib[..., 0::2] | (nib[..., 1::2] << 4)).to(torch.uint8).reshape(n_pad, k_pad // 2)
    pad = (0, 0, 0, n_pad - n)
    zero = None if zero_point is None else F.pad(zero_point.float(), pad).contiguous()
    return W4Rows(rows.contiguous(), F.pad(scale.float(), pad).contiguous(), zero, gs, k, n)


def unpack_w4_rows(rows: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_w4_rows' code packing: rows [N, K / 2] uint8 -> codes [N, K] int8 in [-8, 7]."""
    n, half = rows.shape
    b = rows.to(torch.int16).view(n, half // 4, 4)
    nib = torch.stack([b & 15, b >> 4], dim=-1).view(n, half // 4, 8)  # nibble i of each word
    u = torch.empty_like(nib)
    u[..., list(NIBBLE_ORDER)] = nib
    return (u.view(n, half * 2) - 8).to(torch.int8)


def reference_w4_gemv(x: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                      bias: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """What the kernel computes, in float32: x [m, K_pad] @ ((q - z) * s)^T + bias -> [m, N_pad] in x's dtype."""
    q = unpack_w4_rows(rows).float()
    z = 0.0 if zero is None else zero.float().repeat_interleave(group_size, dim=1)
    w = (q - z) * scale.float().repeat_interleave(group_size, dim=1)
    y = x.float() @ w.T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
