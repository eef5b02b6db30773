"""W4A16 and W8A16 on Hopper's wgmma: libqtool_sm90_mixed / libqtool_sm90_mixed8 (csrc/sm90/mixed_mm_sm90.cu,
one build per code width) behind `qtool_cuda_mixed::w4_mm` and `qtool_cuda_mixed::w8_mm`.

The batched case of weight-only layers (tens to thousands of tokens) is bound by the tensor cores,
which qtool's mma.sync GEMM (csrc/wo_gemm.cu) does not keep busy past ~32 tokens: it reads and
decodes every weight once per 64 tokens, and dequantization + cuBLAS pays a second pass over the
weights in 16 bits. CUTLASS's mixed-input mainloop stages the int4 / int8 weights with TMA, converts
them in registers (q * scale + zero, bf16) and feeds wgmma, with split-K filling the GPU when the
output tiles are few.

Its layout (`MixedWeight`, built from the kernel layout by `pack_mixed`):
  w      [N_pad, K_pad / 2] uint8   4-bit: signed int4 codes, two per byte, in the shuffled order
         [N_pad, K_pad] int8        8-bit: the signed codes (the dtype tells the width), shuffled
  The shuffled order (`shuffle_codes`, csrc/sm90/mixed_mm_sm90.cu ShuffledLayout) puts the 8 codes one
  thread converts for a wgmma fragment into one word, so they load from shared memory at once (H200,
  against row-major codes: 4-bit 1.1-1.2x faster at 8-128 tokens, 1.07x at 256-1024, 8-bit 3-10% at 8-128).
  scale  [G, N_pad] bf16            group-major, as PackedWeight.scale
  zero   [G, N_pad] bf16            -zero_point * scale, so that w = q * scale + zero
Scales and zeros are rounded to bf16 (the kernels of the mma.sync path keep float32 scales): the
dequantized weight carries a relative error of about 2^-8 of a quantization step, far below the
rounding to the 4-bit grid itself; at 8 bits the bf16 scale is a relative error of at most 2^-9 per
output channel, that of a bf16 weight. Group sizes must be multiples of 64 (the k tile) or per channel.
The Hopper copy is kept beside the kernel layout (which the GEMVs of 1-16 tokens read), so a CUDA layer
with it holds its weight codes twice.

The call goes through ctypes in a `torch.library.custom_op`, so CUDA graphs capture the launch and
torch.compile treats it as one opaque op.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import torch

from . import sm90

TILE_K = 64  # the mainloop's k tile: group sizes must be multiples of it


def copy_bits_from(text: str) -> tuple[int, ...]:
    """QTOOL_HOPPER_COPY's value ("4 8" by default; "" for none) -> the code widths that get a Hopper copy."""
    parts = text.replace(",", " ").split()
    if any(b not in ("4", "8") for b in parts):
        raise ValueError(f"QTOOL_HOPPER_COPY={text!r}: expected code widths among 4 and 8, e.g. '4 8', '4' or ''")
    return tuple(int(b) for b in parts)


def copy_bits() -> tuple[int, ...]:
    """The code widths that get the Hopper copy. It costs memory: N x K / 2 bytes per 4-bit layer (the
    layer then holds 1 byte per weight, half of bf16) and N x K per 8-bit layer (2 bytes per weight, as
    much as bf16; 2- and 3-bit layers get a 4-bit copy, under "4"). QTOOL_HOPPER_COPY="4" keeps W8A16 layers
    at 1 byte per weight, on wo_gemm / dequant + cuBLAS past the GEMV. Read when a layer is packed, so a bad value is an error of the command."""
    return copy_bits_from(os.environ.get("QTOOL_HOPPER_COPY", "4 8"))


@dataclass
class MixedWeight:
    w: torch.Tensor  # uint8 [N_pad, K_pad / 2] (4-bit) or int8 [N_pad, K_pad] (8-bit)
    scale: torch.Tensor  # bf16 [G, N_pad]
    zero: torch.Tensor  # bf16 [G, N_pad]
    group: int  # k per scale (K_pad when per channel)

    @property
    def bits(self) -> int:
        return 8 if self.w.dtype == torch.int8 else 4


class _Args(ctypes.Structure):  # csrc/sm90/sm90_mixed_mm.h, MixedMmArgs
    _fields_ = [("w", ctypes.c_void_p), ("x", ctypes.c_void_p), ("scale", ctypes.c_void_p),
                ("zero", ctypes.c_void_p), ("y", ctypes.c_void_p), ("workspace", ctypes.c_void_p),
                ("workspace_bytes", ctypes.c_size_t), ("m", ctypes.c_int), ("n", ctypes.c_int),
                ("k", ctypes.c_int), ("group", ctypes.c_int), ("split", ctypes.c_int), ("pingpong", ctypes.c_int),
                ("ktile", ctypes.c_int), ("variant", ctypes.c_int), ("token_tile", ctypes.c_int),
                ("launch", ctypes.c_int)]


# Which calls are launched with PDL (MixedMmArgs.launch), so their launch and prologue overlap the kernel before,
# and, where EARLY_RELEASE, release the next kernel from their own prologue (csrc/sm90/sm90_prefetch.cuh).
# Session 46 (H100, one process per setting; BENCHMARKS.md): PDL took 1-4 us off every W4 g128 / W8 per-channel
# cell of the six shapes at 9-128 tokens (4096 x 4096 W4 at 64 tokens 13.9 -> 11.1 us), and at 256 tokens off the
# four weights of at most 8192 x 8192 (4096 x 4096 W4 0.93x -> 1.08x bf16) but not the two 28672-row ones
# (three of their four cells slower, by up to 23 us). Early release moved cells both ways within ~1.4 us: off.
# Session 47 (H200): the same 1.4-2.9 us off the W4 cells at 32-128 tokens (4096 x 4096 at 64 tokens 0.90x -> 1.14x);
# on the 28672-row weights at 128-256 tokens, three alternated rounds put PDL level within a noise of up to 40 us
# there, so the bound of 128 on them is a guard, not a measured loss.
# QTOOL_MIXED_PDL_MAX_M sets both bounds (0: no PDL), for A/Bs.
_PDL_ENV = os.environ.get("QTOOL_MIXED_PDL_MAX_M")
PDL_MAX_M = int(_PDL_ENV or 128)  # any weight
PDL_MAX_M_SMALL = int(_PDL_ENV or 256)  # weights of at most PDL_SMALL_WEIGHT elements
PDL_SMALL_WEIGHT = 8192 * 8192
EARLY_RELEASE = False


def launch_bits(m: int, weight_elements: int = 0) -> int:
    """MixedMmArgs.launch for a call of m tokens on a weight of N x K elements: bit 0 PDL, bit 1 early release
    (with PDL only)."""
    small = weight_elements <= PDL_SMALL_WEIGHT
    if m > (max(PDL_MAX_M, PDL_MAX_M_SMALL) if small else PDL_MAX_M):
        return 0
    return 1 | (2 if EARLY_RELEASE else 0)


_functions: dict[int, tuple] = {}


def _entry_points(bits: int) -> tuple:
    if bits not in _functions:
        lib = ctypes.CDLL(str(sm90.MIXED[bits].path()))  # RTLD_LOCAL: both libraries export these names
        lib.qtool_sm90_mixed_workspace.restype = ctypes.c_size_t
        lib.qtool_sm90_mixed_workspace.argtypes = [ctypes.POINTER(_Args)]
        lib.qtool_sm90_mixed_mm.restype = ctypes.c_char_p
        lib.qtool_sm90_mixed_mm.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p]
        lib.qtool_sm90_mixed_shuffle.restype = ctypes.c_char_p
        lib.qtool_sm90_mixed_shuffle.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                                 ctypes.c_void_p]
        _functions[bits] = (lib.qtool_sm90_mixed_workspace, lib.qtool_sm90_mixed_mm, lib.qtool_sm90_mixed_shuffle)
    return _functions[bits]


def shuffle_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [N_pad, K_pad] int8 (signed values, on the GPU) -> the shuffled layout: bits 4: uint8
    [N_pad, K_pad / 2], two codes per byte; bits 8: int8 [N_pad, K_pad]. N_pad and K_pad multiples of 16."""
    n, k = codes.shape
    order = torch.empty(n * k, dtype=torch.int8, device=codes.device)
    err = _entry_points(bits)[2](codes.to(torch.int8).contiguous().data_ptr(), order.data_ptr(), n, k,
                                 torch.cuda.current_stream(codes.device).cuda_stream)
    if err is not None:
        raise RuntimeError(f"shuffle_codes: {err.decode()} (n={n}, k={k})")
    if bits == 8:
        return order.view(n, k)
    nibbles = (order.to(torch.int16) & 0xF).to(torch.uint8).view(-1, 2)
    return (nibbles[:, 0] | (nibbles[:, 1] << 4)).view(n, k // 2)


def available(bits: int = 4) -> bool:
    """Whether the GEMM of this code width (4: `w4_mm`, 8: `w8_mm`) can run here (a Hopper GPU and its
    library built or buildable)."""
    return torch.cuda.is_available() and bits in sm90.MIXED and sm90.MIXED[bits].load()


def takes(num_bits: int, group_size: int, k_padded: int) -> bool:
    """Whether a packed weight of this format fits the mainloop (4 or 8 bits; groups a multiple of TILE_K)."""
    return num_bits in (4, 8) and k_padded % TILE_K == 0 and (group_size <= 0 or group_size % TILE_K == 0)


def pack_mixed(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, group_size: int,
               bits: int = 4) -> MixedWeight:
    """codes [N_pad, K_pad] signed int4 or int8 values (int8, on the GPU: the library shuffles them); scale,
    zero [G, N_pad] float32 as in PackedWeight (zero: the signed-domain zero point, None when symmetric);
    group_size -1: per channel."""
    zero_f = torch.zeros_like(scale) if zero is None else -zero * scale
    return MixedWeight(shuffle_codes(codes, bits), scale.to(torch.bfloat16).contiguous(),
                       zero_f.to(torch.bfloat16).contiguous(), codes.shape[1] if group_size <= 0 else group_size)


def _run(bits: int, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
         split: int, pingpong: int, ktile: int, variant: int, token_tile: int) -> torch.Tensor:
    workspace_of, run, _ = _entry_points(bits)
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    args = _Args(w.data_ptr(), x.data_ptr(), scale.data_ptr(), zero.data_ptr(), y.data_ptr(), None, 0, m, n, k, group,
                 split, pingpong, ktile, variant, token_tile, launch_bits(m, n * k))
    err = sm90.call(workspace_of, run, args, x.device)
    if err is not None:
        raise RuntimeError(f"w{bits}_mm: {err} (m={m}, n={n}, k={k}, group={group})")
    return y


@torch.library.custom_op("qtool_cuda_mixed::w4_mm", mutates_args=())
def w4_mm(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
          split: int = 0, pingpong: int = 0, ktile: int = 64, variant: int = 0, token_tile: int = 0) -> torch.Tensor:
    """y [m, N_pad] bf16 = x [m, K_pad] bf16 . dequant(w)^T, w uint8 [N_pad, K_pad / 2] shuffled (module docstring).

    split: 0 splits k when the output tiles leave SMs idle (the default), 1 never, s > 1 in s parts,
    -1 stream-K; pingpong: 1 for 64-row tiles with two warpgroups alternating (token tiles <= 64); ktile:
    k per pipeline stage, 64 or 128 (`takes_ktile`); variant 0: 128-row tiles, 1: 256-row tiles (ktile 128,
    token tiles <= 64), 2: 128-row tiles in clusters of two (ktile 64, cooperative); token_tile: 0 for the
    smallest tile that holds m tokens, t for the smallest that holds t (16 to 256)."""
    return _run(4, x, w, scale, zero, group, split, pingpong, ktile, variant, token_tile)


@torch.library.custom_op("qtool_cuda_mixed::w8_mm", mutates_args=())
def w8_mm(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
          split: int = 0, pingpong: int = 0, ktile: int = 64, variant: int = 0, token_tile: int = 0) -> torch.Tensor:
    """`w4_mm` for int8 codes: w int8 [N_pad, K_pad], shuffled."""
    return _run(8, x, w, scale, zero, group, split, pingpong, ktile, variant, token_tile)


@w4_mm.register_fake
@w8_mm.register_fake
def _(x, w, scale, zero, group, split=0, pingpong=0, ktile=64, variant=0, token_tile=0):
    return x.new_empty(x.shape[0], w.shape[0])


KTILE_MAX_M = 128  # the 128-k tiles are built for token tiles up to this many tokens (cooperative kernels)


def takes_ktile(ktile: int, m: int, group: int, k_padded: int, pingpong: int = 0) -> bool:
    """Whether a call can use `ktile` k per stage: 64 always; 128 for token tiles (m) of up to KTILE_MAX_M,
    not ping-pong, with one scale per row or groups that are a multiple of 128 (the scales change at tile
    edges only)."""
    if ktile == 64:
        return True
    return ktile == 128 and not pingpong and m <= KTILE_MAX_M and (group == k_padded or group % 128 == 0)


def check_schedule(m: int, group: int, k_padded: int, pingpong: int, ktile: int, variant: int,
                   token_tile: int) -> None:
    """Raise ValueError naming the argument when this library builds no tile for the schedule."""
    t = token_tile or m  # the tile is chosen as if the batch held t tokens
    if not 0 <= token_tile <= 256:
        raise ValueError(f"token_tile={token_tile}: 0 (the batch's own) or 1-256")
    if not takes_ktile(ktile, t, group, k_padded, pingpong):
        raise ValueError(f"ktile={ktile} does not apply to token tile {t}, group={group}, pingpong={pingpong}")
    if pingpong and t > 64:
        raise ValueError(f"pingpong=1 takes token tiles up to 64, got {t}")
    if variant == 1 and (ktile != 128 or t > 64 or pingpong):
        raise ValueError(f"variant=1 (256-row tiles) takes ktile=128, token tiles <= 64, no ping-pong; "
                         f"got ktile={ktile}, token tile {t}, pingpong={pingpong}")
    if variant == 2 and (ktile != 64 or pingpong):
        raise ValueError(f"variant=2 (clusters of two tiles) takes ktile=64, no ping-pong; got ktile={ktile}, "
                         f"pingpong={pingpong}")
    if variant not in (0, 1, 2):
        raise ValueError(f"variant={variant}: 0, 1 (256-row tiles) or 2 (clusters of two tiles)")


def mixed_linear(x2: torch.Tensor, mixed: MixedWeight, split: int = 0, pingpong: int = 0,
                 ktile: int = 64, variant: int = 0, token_tile: int = 0, checked: bool = False) -> torch.Tensor:
    """x2 [m, K_pad] bf16, contiguous -> [m, N_pad] bf16; the schedule arguments as in `w4_mm`; checked: the
    caller has run `check_schedule` on them already (the dispatcher's routes, tuning.fit)."""
    if not checked:
        check_schedule(x2.shape[0], mixed.group, x2.shape[1], pingpong, ktile, variant, token_tile)
    args = (x2, mixed.w, mixed.scale, mixed.zero, mixed.group, split, pingpong, ktile, variant, token_tile)
    if not torch.compiler.is_compiling():  # eager: the ctypes call without the custom op's dispatch (host time)
        return _run(mixed.bits, *args)
    op = torch.ops.qtool_cuda_mixed.w8_mm if mixed.bits == 8 else torch.ops.qtool_cuda_mixed.w4_mm
    return op(*args)
