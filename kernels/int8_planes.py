"""The x_planes pair: which tokens and weights take x as two int8 planes on the int8 tensor cores, and the launch.

`x_planes` (csrc/wo_planes.cu) writes each token once as two int8 planes (~2^-16 of its range) and
`wo_planes_gemv` multiplies them by the packed codes with mma.m16n8k32.s8 (csrc/wo_planes.cu: 1-4 tokens, two or four
n-tiles to 16; wo_planes_low.cu: 2- and 3-bit codes; wo_planes_tile.cu: the planes staged per block, split-K over a
cluster). The rules below were measured on the H200 (BENCHMARKS.md, sessions 37-39); weight_only.route asks them
first. Module-level switches are read once from the environment; tests patch them here.
"""

from __future__ import annotations

import functools
import os

import torch

from . import reference
from .layout import LOW_BITS, PDL_STATIC_WEIGHT, PackedWeight
from .scaled_mm import planes_variant

# x_planes + wo_planes_gemv (csrc/wo_planes.cu), "planes": 4-bit weights with groups >= 64 (or per channel), with
# zero points or without, at 1-4 tokens. A producer kernel quantizes x once into two int8 planes (~2^-16 of each
# token's range) and the GEMV runs on the int8 tensor cores (mma.m16n8k32.s8: 3 instructions per 16 weights for A,
# where the bf16 fragment takes 16). Session 37, H200 (BENCHMARKS.md "session 37"), the pair against what shipped
# before: at 3-4 tokens faster on every shape of issue 19's table (8192 x 8192 at 4 tokens 1.82x -> 2.52x bf16,
# 4096 x 14336 1.53x -> 2.52x; asymmetric 1.73x -> 2.35x / 1.56x -> 2.27x); at 2 tokens where N > 4096 (the ring
# keeps 4096 x 4096 and 14336 x 4096: 2.61x / 2.51x against the pair's 2.00x / 2.36x); at one token on weights past
# 8192 x 8192 (4096 x 28672 2.55x -> 3.04x), where the producer's ~2 us is paid back. The variants that quantize x
# inside every block (wo_gemv 4-6) lost to the pair at 2-4 tokens and to the ring at one: unrouted.
# QTOOL_GEMV_PLANES=0 (read once) turns the route off.
GEMV_PLANES = os.environ.get("QTOOL_GEMV_PLANES", "1") != "0"
# Under torch.compile, a layer whose input comes from a kernel Inductor generates (an RMSNorm, SiLU-and-multiply:
# QuantLinear.planes_fuse, set by quantize/fusion.py and quantize/mlp.py) gets its planes from PyTorch ops that
# Inductor fuses into that kernel, so the pair's producer is not launched and 1-2 tokens take the planes on every
# shape (the GEMV alone: 2.5-3.7x bf16 at one token, session 37). Measured in session 38 (H200, `qtool bench
# llama-8b --scheme w4a16`, batch 1): slower, 426.3 tok/s (2.14x bf16) against 455.0 (2.28x) without: Inductor's
# max-and-gather form costs more than the x_planes kernel it replaces. Off unless QTOOL_FUSED_PLANES=1 (read once).
FUSED_PLANES = os.environ.get("QTOOL_FUSED_PLANES", "0") == "1"
# The layers whose input is an RMSNorm's (QuantLinear.norm_input: fused q/k/v, gate/up) count their planes as free
# under torch.compile where norm_planes.py's graph pass is in use (qtool bench's decode steps), which folds the
# residual add, the norm and x_planes into one of our kernels (csrc/norm_planes.cu): 64 launches fewer per 8B step at
# 1-8 tokens, and 1-2 tokens take the planes on every shape. Session 51 (H100, 8B W4A16 decode steps, dev/step_ab.py
# in one process, bf16 158.2 / 613.8 / 1176.7 tok/s): batch 1 394.1 -> 401.5 tok/s, 4 1449 -> 1494, 8 2769 -> 2837;
# with the gated epilogue (mlp.GATED_EPILOGUE) 407.8 -> 419.0, 1507 -> 1562, 2795 -> 2867. QTOOL_NORM_PLANES=0
# (read at trace time, so dev/step_ab.py can vary it as `qtool_kernels.int8_planes.NORM_PLANES=False`): off.
NORM_PLANES = os.environ.get("QTOOL_NORM_PLANES", "1") != "0"
# Symmetric 2- and 3-bit codes (groups >= 64 or per channel) on the same pair (csrc/wo_planes_low.cu: A from the
# ring GEMV's nibble words in one shift and one LOP3 per row), by the 4-bit rule (planes_route). Session 38, H200
# (BENCHMARKS.md "session 38", dev/planes_ab.py, pair against the GEMV that ran): W3 g128 at 3-4 tokens 1.78-2.36x ->
# 2.16-3.23x bf16 on every shape; at 2 tokens where N > 4096 (8192 x 28672 2.57x -> 3.21x; 4096 x 6144 2.17x ->
# 2.16x); at one token on weights past 8192 x 8192 (28672 x 8192 2.81x -> 3.11x) while the ring keeps the smaller
# ones (4096 x 4096 2.69x against the pair's 2.24x); W2 g64 alike. QTOOL_LOWBIT_PLANES=0 (read once): off.
LOWBIT_PLANES = os.environ.get("QTOOL_LOWBIT_PLANES", "1") != "0"
# The next layer's weight pulled into L2 by the planes GEMVs too (the ring GEMV's hint, quantize/prefetch.py), as the
# GEMVs they replace did. Session 38: the 8B W4A16 decode with it 2.28x / 2.18x bf16 at batch 1 / 4 (session 37
# without it: 2.25x / 2.16x; not A/B'd in one process). QTOOL_PLANES_PREFETCH=0 (read once) leaves it out.
PLANES_PREFETCH = os.environ.get("QTOOL_PLANES_PREFETCH", "1") != "0"
PLANES_MAX_M = 4  # csrc/wo_kernels.h, kPlanesMaxTokens
GATED_FLAG = 32  # csrc/wo_kernels.h, kGatedFlag: wo_planes_gemv's variant for interleaved gate / up rows
# 5-16 tokens of 4-bit weights on the pair (wo_planes_gemv with 2 or 4 n-tiles of the mma per A fragment: the codes
# read once for all the tokens, each n-tile's B from L2 / L1). Session 39, H200 (BENCHMARKS.md "session 39", graph
# protocol through QuantLinear against the routes of before: the stream GEMV, wo_gemm, the Hopper mixed-input GEMM):
# symmetric W4 g128 at 5-8 tokens (two n-tiles) 1.45-2.36x -> 1.76-2.75x on issue 19's six shapes (28672 x 8192 at 8
# tokens level), the 8B decode at batch 8 1.71x -> 2.06x, with the launch of one stripe per block (dev/planes_ab.py:
# ahead of two and four stripes but on 8192 x 8192, by 5%); with zero points (a 2-deep ring in 78 registers) 1.88x
# against 2.27x on 8192 x 28672 at 5 tokens: not routed.
# Four n-tiles (9-16 tokens) lost on 5 of 6 shapes (8192 x 28672 at 16 tokens 1.73x against 2.25x): B is 4x the code
# bytes per chunk and L2 runs out (~7.6 TB/s of codes and planes there), so it waits for B staged in shared memory
# and shared by the rows of a block. PLANES_TILE: the most tokens routed there (QTOOL_PLANES_TILE, read once; 4 or
# less: off; 16 for A/Bs of the four n-tiles).
PLANES_TILE = int(os.environ.get("QTOOL_PLANES_TILE", "8"))
PLANES_TILE_MAX_M = 16  # csrc/wo_kernels.h, kPlanesGivenMaxTokens
# One stripe per block (QTOOL_PLANES_TILE_VARIANT, read once: 1 / 2 for two / four, for A/Bs at 9-16 tokens, where
# session 40's planes_ab put two stripes ahead on 8192 x 8192: 1.56-1.60x against the route's 1.43-1.44x).
PLANES_TILE_VARIANT = int(os.environ.get("QTOOL_PLANES_TILE_VARIANT", "0"))
# wo_planes_gemv's variant 3 (csrc/wo_planes_tile.cu): codes, scales and the planes staged through cp.async for 128
# rows per block, split-K over a thread block cluster (sm_90), 1-32 tokens of 4-bit weights (16 with zero points).
# Measured in session 40 against the routes at 9-32 tokens (BENCHMARKS.md "session 40"): it lost on every shape, so
# it serves past PLANES_TILE tokens up to QTOOL_PLANES_GEMM only where that is set (read once; 0, the default: off).
PLANES_GEMM = int(os.environ.get("QTOOL_PLANES_GEMM", "0"))
PLANES_GEMM_MAX_M = 32  # csrc/wo_kernels.h, kPlanesTileMaxTokens
PLANES_GEMM_MAX_ASYM_M = 16  # kPlanesTileMaxAsymTokens: zero points to four n-tiles (eight are not built)
PLANES_GEMM_VARIANT = 3
# wo_gemv variant 7, "split" (csrc/wo_split.cu): 4-bit weights (groups >= 64 or per channel; zero points to 16
# tokens), each block quantizing its K slice of x into planes in shared memory for its 8 or 16 stripes, split-K over
# a cluster (sm_90). Session 58 (kernels/NOTES.md "Session 58", dev/split_ab.py, one process against the routes): with
# 8 stripes per block it won on 4096 x 4096 at 9-16 tokens only (H200 1.47 / 1.37x against 1.43 / 1.31x). Session 60
# (H100): 16 stripes per block won at 9-16 tokens on 4096 x 6144 (1.86 / 1.77x against wo_gemm's 1.68 / 1.61x), 14336
# x 4096 (2.35 / 2.25x against 2.18 / 2.14x) and 4096 x 14336 at 9-12 (2.38 / 2.34x against the Hopper GEMM's 2.17 /
# 2.18x; at 16 2.15-2.20x against 2.22-2.23x: not routed there), and lost on 8192 x 8192, 8192 x 28672 and 28672
# x 8192 at 16 (2.08x against 2.32x), with zero points (1.53-1.74x against 2.12-2.27x) and past 16 tokens: symmetric
# layers of the winning sizes take it at 9-16 (split_by_shape). Session 63 (H100) timed the 1-3B models' shapes, which
# the rule had left to wo_gemm at 0.78-1.33x: the split variant ran 1.20-1.81x on 2048 x 2048 ... 4096 x 2048 and
# 3072 x 3072 at 9-16 tokens, 1.83-2.06x on 2048 x 16384 against the Hopper GEMM's 1.79-1.80x, so the rule's floor
# is 2048 x 2048 now and K <= 2048 takes N to 16384. QTOOL_SPLIT_GEMV=N (read once) routes every shape to it at
# QTOOL_SPLIT_MIN (9) to N tokens, for A/Bs; 0: off.
SPLIT_VARIANT = 7  # csrc/wo_kernels.h, kSplitVariant
SPLITS_UNIT = 32  # kSplitsUnit: wo_gemv's variant + 32 s forces s splits of K
SPLIT_MAX_TOKENS, SPLIT_MAX_ASYM_TOKENS = 32, 16  # kSplitMaxTokens, kSplitMaxAsymTokens
SPLIT_MAX_M = None if os.environ.get("QTOOL_SPLIT_GEMV") is None else int(os.environ["QTOOL_SPLIT_GEMV"])
SPLIT_MIN_M = int(os.environ.get("QTOOL_SPLIT_MIN", "9"))
PLANES_MAX_BYTES = 96 << 10  # kPlanesMaxBytes: wo_gemv 4-6's staged planes, 2 * m * (K + 64) bytes
PLANES_ONE_TOKEN_MIN_WEIGHT = 8192 * 8192 + 1  # K * N from which one token takes the pair
PLANES_TWO_TOKENS_MIN_N = 4096 + 1  # N from which two tokens do


def takes_planes(w: PackedWeight, m: int) -> bool:
    """Whether wo_gemv's variants 4-6 (x quantized in every block) serve m tokens of this weight (csrc/wo_kernels.h,
    planes_take)."""
    return (m <= PLANES_MAX_M and takes_given_planes(w, m) and w.zero is None
            and 2 * m * (w.k_padded + 64) <= PLANES_MAX_BYTES)


def takes_given_planes(w: PackedWeight, m: int) -> bool:
    """Whether wo_planes_gemv serves m tokens of this weight (4-bit, groups >= 64 or per channel; zero points or
    none; to PLANES_GEMM_MAX_M tokens, past PLANES_TILE_MAX_M on the tile kernel only)."""
    return w.num_bits == 4 and (w.group_size <= 0 or w.group_size >= 64) and 1 <= m <= PLANES_GEMM_MAX_M


def lowbit_planes_route(w: PackedWeight, m: int, free: bool = False) -> int | None:
    """wo_planes_gemv's variant for m tokens of a 2- or 3-bit weight where LOWBIT_PLANES serves them (symmetric,
    groups >= 64 or per channel, the 4-bit rule of shapes and tokens), else None."""
    if (not LOWBIT_PLANES or w.num_bits not in LOW_BITS or w.zero is not None or not 1 <= m <= PLANES_MAX_M
            or 0 < w.group_size < 64):
        return None
    return _planes_by_shape(w, m, free)


def planes_route(w: PackedWeight, m: int, free: bool = False) -> int | None:
    """wo_planes_gemv's variant (0, 1, 2: one, two or four stripes per block) for m tokens by the measured rule
    above, or None where the planes do not serve them. free: the planes cost no kernel of their own (FUSED_PLANES)."""
    if not GEMV_PLANES or not takes_given_planes(w, m):
        return None
    if m <= PLANES_MAX_M:
        return _planes_by_shape(w, m, free)
    if w.zero is None and m <= min(PLANES_TILE, PLANES_TILE_MAX_M):  # the n-tiles: symmetric only (above)
        return PLANES_TILE_VARIANT
    top = PLANES_GEMM_MAX_M if w.zero is None else PLANES_GEMM_MAX_ASYM_M
    return PLANES_GEMM_VARIANT if m <= min(PLANES_GEMM, top) and _has_clusters(w.qweight) else None


def _has_clusters(t: torch.Tensor) -> bool:
    """Whether t's device runs thread block clusters (sm_90+: the tile kernel's split-K)."""
    return t.is_cuda and _capability(t.device.index or 0) >= (9, 0)


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _planes_by_shape(w: PackedWeight, m: int, free: bool) -> int | None:
    """The tokens and shapes where the pair pays for its producer (above): the launch variant, or None."""
    if not free and m == 1 and w.k_padded * w.out_features < PLANES_ONE_TOKEN_MIN_WEIGHT:
        return None
    if not free and m == 2 and w.out_features < PLANES_TWO_TOKENS_MIN_N:
        return None
    return planes_variant(w.out_features)


def planes_linear(x2: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, kernels, variant: int,
                  free: bool = False, prefetch: torch.Tensor | None = None, gated: bool = False) -> torch.Tensor:
    """x2 [m, K_pad] -> [m, N] on x_planes + wo_planes_gemv with launch `variant` (planes_route); `free` with
    FUSED_PLANES: the planes as PyTorch ops, which Inductor fuses into x's producer (with NORM_PLANES: x_planes, which
    norm_planes.py's pass folds into the norm before it). PDL where on (csrc/pdl.cuh decides); `prefetch` as the
    ring GEMV's (packed_linear), unless QTOOL_PLANES_PREFETCH=0; `gated` as given_planes_linear's."""
    planes, xscale = reference.x_planes(x2) if free and FUSED_PLANES else kernels.x_planes(x2, 1)
    return given_planes_linear(planes, xscale, w, bias, kernels, variant, x2.dtype, prefetch, gated)


def given_planes_linear(planes: torch.Tensor, xscale: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None,
                        kernels, variant: int, dtype: torch.dtype,
                        prefetch: torch.Tensor | None = None, gated: bool = False) -> torch.Tensor:
    """wo_planes_gemv on planes [2m, K_pad] and scales [m] however they were made -> [m, N] of `dtype`: launch
    `variant` for a static weight (PDL), with the prefetch hint unless QTOOL_PLANES_PREFETCH=0. gated: w's rows are
    a gated MLP's gate / up interleaved by 8 and the GEMV writes silu(gate) * up, [m, N / 2] (GATED_FLAG)."""
    return kernels.wo_planes_gemv(planes, xscale, w.qweight, w.scale, w.zero, bias, w.group_size, w.out_features,
                                  dtype, variant + PDL_STATIC_WEIGHT + (GATED_FLAG if gated else 0), w.num_bits,
                                  prefetch if PLANES_PREFETCH else None)


def takes_split(w: PackedWeight, m: int, dtype: torch.dtype) -> bool:
    """Whether m tokens of this weight run on wo_gemv's split variant: by the measured rule (split_by_shape), or as
    QTOOL_SPLIT_GEMV says (SPLIT_MAX_M); 4-bit, groups >= 64 or per channel, zero points to SPLIT_MAX_ASYM_TOKENS,
    16-bit activations, a CUDA device with clusters."""
    if SPLIT_MAX_M is None:
        chosen = split_by_shape(w, m)
    else:
        chosen = SPLIT_MIN_M <= m <= min(SPLIT_MAX_M, SPLIT_MAX_TOKENS if w.zero is None else SPLIT_MAX_ASYM_TOKENS)
    return (chosen and w.num_bits == 4 and (w.group_size <= 0 or w.group_size >= 64)
            and dtype in (torch.bfloat16, torch.float16) and _has_clusters(w.qweight))


def split_by_shape(w: PackedWeight, m: int) -> bool:
    """The measured cells (above): symmetric weights of at least 2048 x 2048 elements with K <= 4096 and N <= 6144
    (N <= 14336 to 12 tokens; N <= 16384 where K <= 2048), or N <= 4096 and K <= 14336 (2048 x 2048 ... 4096 x 4096,
    3072 x 3072, 4096 x 6144, 4096 x 14336, 14336 x 4096, 8192 x 2048, 2048 x 16384), at 9-16 tokens."""
    k, n = w.k_padded, w.out_features
    wide_n = (k <= 4096 and (n <= 6144 or (n <= 14336 and m <= 12))) or (k <= 2048 and n <= 16384)
    tall_k = n <= 4096 and k <= 14336
    return w.zero is None and 9 <= m <= 16 and k * n >= 2048 * 2048 and (wide_n or tall_k)
