"""The CUDA route of weight-only linears over a weight already in the kernel layout (`layout.PackedWeight`).

Dispatch on m = tokens:
  rows layout       8-bit symmetric per-channel weights packed row-major (layout.pack_rows, where takes_rows):
                    qtool_cuda::w8_gemv up to 4-32 tokens by size (rows_gemv), then qtool_cuda_wgmma::w8_mm at
                    QTOOL_WGMMA_W8_TOKENS (warpgroup_mm.py; off by default until measured), then the Hopper copy's
                    route (two int8 planes of the activations on the int8 GEMM, split_mm.py, where SPLIT
                    says: off by default since session 48); without a copy w8_gemv in slices to 64 tokens, then
                    dequantized rows + cuBLAS
  m <= 8            gemv_kind: qtool_cuda::wo_gemv variant 3 ("stream") or the ring GEMV (variants 0-2), by
                    session 15's measured rule (below), or None: the kernels past them
  m >= MIXED_MIN_M  where the weight has a Hopper copy (4- or 8-bit, bf16): the measured route of
                    tuning.py, which is qtool_cuda_mixed::w4_mm / w8_mm (mixed_mm.py: wgmma with the
                    weights converted in registers) with the schedule measured fastest, or wo_gemm, or
                    dequantization + cuBLAS, whichever won at the nearest measured shape and batch
  V3_MIN_M <= m <= V3_MAX_M
                    qtool_cuda::wo_gemm_v3  tensor cores, many weight loads in flight per SM, split-K
                    reduced in thread block clusters (runs wo_gemm before sm_90): 8-bit, fp16, asym
  m <= GEMM_MAX_M   qtool_cuda::wo_gemm   tensor cores; the weights are streamed once per 64 tokens
                    (fp16 activations, or no Hopper copy)
  otherwise         qtool_cuda::dequant_int + cuBLAS: compute-bound, so one extra weight pass is cheap
2- and 3-bit weights (layout.LOW_BITS) take the GEMVs up to 8 tokens (they read the weight once at 2-3 bits, where
dequant_int + cuBLAS writes and reads it at 16: H200 1.15-1.49x bf16 at 8 tokens vs 0.42-0.64x at 16), then their
4-bit Hopper copy (the tensor-core GEMMs decode 4- and 8-bit chunks only), else dequant_int + cuBLAS.

Act-order weights are stored with their input columns sorted by group (layout.act_order_permutation),
so each call gathers the activations once, x.index_select(-1, perm): m * K elements read and written
plus one kernel launch (a few microseconds at m = 1, a few percent of a decode step's linear time).

Who packs a layer, caches the packed copy and chains prefetches is quantize/linear.py's business:
this module takes tensors and ints only.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import int8_planes, norm_planes, warpgroup_mm
from .layout import EPILOGUE, LOW_BITS, PDL_STATIC_WEIGHT, PackedWeight, takes_rows_shape
from .mixed_mm import mixed_linear
from .mlp import silu_mul
from .scaled_mm import w8_planes_linear
from .split_mm import split_linear
from .tuning import gemv_pdl, mixed_schedule, plain_schedule

# wo_gemv serves up to 8 tokens (csrc/wo_kernels.h, kMaxGemvTokens). 4 is the cut-off every recorded
# measurement ran with (BENCHMARKS.md); the 4-vs-8 A/B of kernels/NOTES.md (v3) left no result, so to
# try another value edit this constant and compare with `benchmarks/bench_kernels.py --tokens 4,5,8`.
GEMV_MAX_M = 4
# wo_gemm reads every weight once per 64 tokens, so past 64 dequantization + cuBLAS wins: at 256 tokens
# on the H200 it took 176-593 us (W4) and 218-748 us (W8) where dequant + cuBLAS took 93-357 and 100-362.
GEMM_MAX_M = 64
# Past the GEMV, a weight with a Hopper copy takes the measured route of tuning.py (the Hopper GEMM's
# best schedule, wo_gemm or dequantization + cuBLAS).
MIXED_MIN_M = {4: 5, 8: 5}
# 4-bit weights at these tokens (inclusive) take the wgmma kernel (warpgroup_mm.py) where it applies, ahead of the
# Hopper copy's routes. QTOOL_WGMMA_TOKENS="lo,hi" ("0,0": off, the default until measured on the device).
WGMMA_TOKENS = warpgroup_mm.parse_tokens(os.environ.get("QTOOL_WGMMA_TOKENS", "0,0"))
# Without a copy: small weights run wo_gemm rather than wo_gemm_v3 up to SMALL_GEMM_MAX_M tokens (2-40% faster
# on 4096 x 4096 up to 32 tokens, H200).
SMALL_WEIGHT = 4096 * 4096
SMALL_GEMM_MAX_M = 32
# wo_gemm_v3 (kernels/NOTES.md, "wo_gemm v3") measured on the H200 at M = 16, 32, 64 (BENCHMARKS.md):
# it loses to w4_mm everywhere, and at M = 16 it ties wo_gemm; at 32 and 64 its variant 3 (twice the
# split-K slices) beats wo_gemm by 0-30% on 7 of the 9 (shape, M) cells of W8 g-1. So it serves the
# weights w4_mm cannot take, past 16 tokens, with variant 3.
V3_MIN_M = 17
V3_MAX_M = 64
V3_VARIANT = 3
# wo_gemv's variant 3, "stream" (csrc/wo_stream.cu: x staged per warp in shared memory, 1-32 tokens) against the
# ring GEMV (variants 0-2) and the routes past it, every width at 1-8 tokens on the H200 (session 15, BENCHMARKS.md):
# - 1 token: the ring GEMV (W4 2.08-2.53x bf16, stream 1.85-2.15x). 16-32 tokens: the Hopper GEMMs.
# - 2- and 3-bit, 2-8 tokens: stream on every shape (within 2% of the best at 2 tokens; at 6-8 tokens 20-60% faster
#   than the 4-bit Hopper copy's GEMM, e.g. W2 8192 x 8192 17.2 vs 26.3 us), to 16 tokens on weights of at most
#   4096 x 4096 (W2 / W3 at 16 tokens 12.8 / 13.1 us against the Hopper GEMM's 15.7 / 14.7; bf16 13.4).
# - 4-bit: stream from 3 tokens (at 2 the ring GEMV is 4-7% ahead on half the shapes), to 4 on every weight and
#   to 8 on small ones (8192 x 8192 at 6 tokens 20.4 vs 24.0 us; on the 14336- and 28672-row weights the Hopper
#   GEMM wins past 4: 4096 x 28672 at 6 tokens 27.9 vs 32.3).
# - 8-bit: the ring GEMV on small weights (2-8 tokens; stream 3-9% behind) and at 2-3 tokens; stream at 4 on the
#   others (28672 x 8192 82.8 vs 130.7 us, 8192 x 8192 27.8 vs 33.1) and at 2-3 where K >= 16384 (82.4 vs 105.4).
# "Small": at most STREAM_SMALL_MAX_N rows and STREAM_SMALL_MAX_BYTES of codes (8192 x 8192 4-bit is 32 MiB).
STREAM_SMALL_MAX_N = 8192
STREAM_SMALL_MAX_BYTES = 32 << 20
STREAM_LONG_K = 16384
STREAM_LOW_BITS_MAX_M = 16  # 2-/3-bit weights of at most STREAM_LOW_BITS_MAX_WEIGHT elements (kernel: <= 32)
STREAM_LOW_BITS_MAX_WEIGHT = 4096 * 4096
# Session 27 (the ring GEMV with x in fragment order; every GEMV column at 2-4 tokens, BENCHMARKS.md): the ring
# GEMV takes back
# - 4-bit at 3 tokens where K <= RING_M3_MAX_K < N (4096 x 6144 / 14336 / 28672: lean ring 1.85 / 1.82 / 1.99x bf16
#   against stream's 1.75 / 1.73 / 1.97x, both launched plainly; stream still wins on 4096 x 4096, 8192 x 8192 and
#   the long-K weights);
# - 2- and 3-bit at 2 tokens on weights larger than STREAM_LOW_BITS_MAX_WEIGHT with K < STREAM_LONG_K (W3
#   14336 x 4096 2.21 vs 2.06x, 4096 x 14336 2.05 vs 1.95, 8192 x 28672 2.43 vs 2.34, others within 1%; 28672 x 8192
#   and 4096 x 4096 stay on stream).
RING_M3_MAX_K = 4096
GEMV_KIND_MAX_M = 8  # the ring GEMV's token limit (csrc/wo_kernels.h, kMaxGemvTokens); variant 3 passes it only
# for small 2-/3-bit weights (STREAM_LOW_BITS_MAX_M)


# wo_gemv's lean launch (variant 1: 4 blocks per SM instead of 3) measured on the H200 at M = 1 (BENCHMARKS.md,
# session 10): 6-12% faster where the weight has at least as many rows as columns (4096 x 14336, 8192 x 8192,
# 8192 x 28672: more blocks than 3 per SM), 6-9% slower where K is long and N short (14336 x 4096, 28672 x 8192).
# The wide launch (variant 2: 16 warps, lean; session 14) where few rows make few blocks (<= GEMV_WIDE_MAX_N):
# 4096 x 4096 W4 / W8 at 1 token 6.1 / 8.6 -> 6.2 / 8.2 us, at 8 tokens 9.9 / 13.6 -> 9.0 / 12.5 us; 14336 x 4096
# 13.8 / 21.3 -> 13.0 / 20.1 us at one token; with more rows where N >= K (4096 x 6144 and up) it loses 5-20%.
# Session 15: where K is longer than N it wins at any row count (28672 x 8192 at one token, W4 / W8: variant 0
# 44.4 / 72.1 us, wide 42.2 / 67.5; at two tokens 61.8 / 108.2 -> 57.7 / 93.3; 2-/3-bit within 1%), so
# variant 0 serves nothing now.
GEMV_WIDE_MAX_N = 4096


# W8A16 on w8_gemv, the W8A8 layers' GEMV (kernels/NOTES.md, session 16): 8-bit symmetric per-channel layers keep
# their codes row-major (layout.pack_rows) and run w8_gemv where it beat every other kernel in one run on the H200
# (`dev/session16.sh w8rows`, BENCHMARKS.md session 16), e.g. 4096 x 4096 at 16 tokens 8.2 us vs 15.1 (bf16 13.5),
# 14336 x 4096 at 8 20.1 vs 27.6, 28672 x 8192 at 4 65.2 vs 82.6:
# - up to 4 tokens on every weight (at one token it lost only on 8192 x 28672: 70.3 vs 67.9 us);
# - up to 16 on weights of at most ROWS_MID_WEIGHT elements (8192 x 8192: 25.2 vs 28.7 us; on the 28672-wide and
#   -deep weights the Hopper GEMM wins from 8 tokens, 8192 x 28672 61.1 vs 70.7);
# - up to 32 (w8_gemv's limit, W8_ROWS_MAX_M) on weights of at most ROWS_SMALL_WEIGHT (4096 x 6144: 15.1 vs 17.9).
# Past that the Hopper copy's measured route; without a copy (fp16, before sm_90) w8_gemv in slices of up to
# W8_ROWS_MAX_M tokens, up to ROWS_SLICES slices (reading the codes twice costs less than dequantizing them: on the
# H200 w8_gemv at 32 tokens took 12.4-148 us where the dequantized rows alone would move 7 bytes per weight), then
# the rows dequantized + cuBLAS. W8_ROWS_MAX_M = 0 turns the layout off (every layer keeps the wo layout).
W8_ROWS_MAX_M = 32
# Past w8_gemv: the two int8 planes of the activations on the int8 GEMM (split_mm.py) at SPLIT = (first, last) tokens
# on weights of at most max_weight elements, where tuning.W8A8 has an int8 route for 2m tokens (SPLIT_MEASURED; False:
# any GEMM that takes the shapes, for tests). Session 23 (H200, graph replay, `dev/session23.sh split`: the route
# forced at 17-512 tokens on six shapes against the Hopper copy's routes, bf16 in the same process): 4096 x 4096 at
# 64 / 128 / 256 tokens 18.6 / 20.5 / 24.6 -> 15.5 / 17.6 / 23.6 us (bf16 12.1 / 14.0 / 17.5); slower on every larger
# weight, where the mixed-input GEMM already ran 1.0-1.5x bf16 at 64 tokens (8192 x 8192: 31.3 -> 33.9 us), and at
# 512 tokens everywhere. Call 4 (33-256 tokens): 4096 x 6144 20.6 / 20.4 / 24.2 / 31.0 -> 20.4 / 18.3 / 21.9 / 30.2
# us at 33 / 64 / 128 / 256 (bf16 16.0-21.4), 4096 x 4096 again 18.6 / 20.2 -> 15.8 / 17.7 at 64 / 128.
# Off since session 48: the mixed-input GEMM under PDL with ordered split adds (sessions 43-47) overtook it. Issue 19's
# table (H200) had the layer at 4096 x 4096 and 64 tokens at 16.0 us on this route against 12.1 for the mixed GEMM
# alone in the same run (bf16 12.6), and the A/B (`dev/session48.sh splitab`, one H100, one process per setting, graph
# us, off / on) put the Hopper route ahead at every cell: 4096 x 4096 at 33 / 64 / 128 / 256 tokens 13.0 / 12.7 /
# 15.9 / 19.4 against 19.5 / 16.9 / 18.3 / 23.2, 4096 x 6144 16.3 / 16.3 / 20.0 / 29.5 against 21.3 / 20.4 / 22.8 /
# 32.6. The route stays for A/Bs: QTOOL_ROWS_SPLIT="FIRST,LAST,MAX_WEIGHT" (read at import; "33,256,25165824" was
# the default before).
def _split_setting(raw: str) -> tuple[int, int, int]:
    try:
        first, last, max_weight = (int(v) for v in raw.split(","))
    except ValueError:
        raise ValueError(f"QTOOL_ROWS_SPLIT must be 'FIRST,LAST,MAX_WEIGHT' (three integers), got {raw!r}") from None
    return first, last, max_weight


SPLIT = _split_setting(os.environ.get("QTOOL_ROWS_SPLIT", "0,0,0"))  # (0, 0, 0): off
SPLIT_MEASURED = True
ROWS_SLICES = 2
ROWS_MID_WEIGHT = 8192 * 8192
ROWS_SMALL_WEIGHT = 4096 * 6144


def takes_rows(num_bits: int, group_size: int, zero: torch.Tensor | None, g_idx: torch.Tensor | None,
               out_features: int, in_features: int) -> bool:
    """Whether a layer is packed row-major for w8_gemv (layout.pack_rows) in place of the wo layout."""
    return (W8_ROWS_MAX_M > 0 and num_bits == 8 and group_size <= 0 and zero is None and g_idx is None
            and takes_rows_shape(out_features, in_features))


def rows_gemv(w: PackedWeight, m: int, dtype: torch.dtype) -> bool:
    """Whether m tokens on a row-major weight run w8_gemv (the rule above) rather than the Hopper copy."""
    if w.mixed is None or dtype != torch.bfloat16:
        return m <= W8_ROWS_MAX_M
    size = w.out_features * w.k_padded
    return m <= min(W8_ROWS_MAX_M, 32 if size <= ROWS_SMALL_WEIGHT else 16 if size <= ROWS_MID_WEIGHT else 4)


def gemv_variant(w: PackedWeight) -> int:
    """wo_gemv's `variant` argument (ring GEMV) for this prepared weight: wide where few rows or a long K, else
    lean; plus PDL_STATIC_WEIGHT (packed weights are not written while layers run)."""
    return (2 if w.out_features <= GEMV_WIDE_MAX_N or w.k_padded > w.out_features else 1) + PDL_STATIC_WEIGHT


def _small_weight(w: PackedWeight) -> bool:
    return w.out_features <= STREAM_SMALL_MAX_N and w.out_features * w.k_padded * w.num_bits <= 8 * STREAM_SMALL_MAX_BYTES


def gemv_kind(w: PackedWeight, m: int) -> str | None:
    """The GEMV for m tokens on this weight by the measured rule above: "stream" (wo_gemv variant 3), "ring"
    (wo_gemv's variants 0-2, gemv_variant), or None where the kernels past the GEMVs serve m."""
    if m <= 1:
        return "ring"
    if w.num_bits in LOW_BITS:
        small = w.out_features * w.k_padded <= STREAM_LOW_BITS_MAX_WEIGHT
        if m == 2 and not small and w.k_padded < STREAM_LONG_K:
            return "ring"
        return "stream" if m <= GEMV_KIND_MAX_M or (small and m <= STREAM_LOW_BITS_MAX_M) else None
    if m > GEMV_KIND_MAX_M:
        return None
    small = _small_weight(w)
    if w.num_bits == 4:
        stream = m >= 3 and (m <= 4 or small) and not (m == 3 and w.k_padded <= RING_M3_MAX_K < w.out_features)
    else:
        stream = not small and (m == 4 or (m <= 3 and w.k_padded >= STREAM_LONG_K))
    if stream:
        return "stream"
    return "ring" if m <= GEMV_MAX_M or (w.num_bits == 8 and small) else None


def _small(w: PackedWeight, m: int) -> bool:
    """Whether wo_gemm beats wo_gemm_v3 (weights without a Hopper copy)."""
    return m <= SMALL_GEMM_MAX_M and w.out_features * w.in_features <= SMALL_WEIGHT


def hopper_route(w: PackedWeight, m: int, dtype: torch.dtype, bits: int | None = None) -> dict | str | None:
    """For m tokens of `dtype` on a weight with a Hopper copy: the measured route (tuning.py: a schedule of
    the Hopper GEMM, "wo_gemm" or "dequant"); None without a copy, for fp16, or below MIXED_MIN_M tokens.
    bits: the table to read (the copy's width by default)."""
    if w.mixed is None or dtype != torch.bfloat16 or m < MIXED_MIN_M[w.mixed.bits]:
        return None
    return mixed_schedule(bits or w.mixed.bits, w.k_padded, w.out_features, m, w.mixed.group, w.zero is not None)


def _wgmma_cell(w: PackedWeight, m: int, dtype: torch.dtype, hopper: dict | str | None) -> str | None:
    """The measured route `hopper` (hopper_route's) where it names the wgmma kernel and the kernel runs here, made fit
    for this weight (warpgroup_mm.for_weight); None elsewhere. Ahead of the split GEMV too: the sweeps write such
    cells at its tokens only where they led it (session 70, H100: the tall tile on 4096 x 4096 at 9-16 tokens
    2.14-2.16x bf16 against the split GEMV's 1.87-2.02x; dev/wgmma_cells.py)."""
    if warpgroup_mm.names_kernel(hopper) and warpgroup_mm.takes(w, m, dtype) and warpgroup_mm.available():
        return warpgroup_mm.for_weight(hopper, w.zero is not None, m)
    return None


def route(w: PackedWeight, m: int, dtype: torch.dtype, planes_free: bool = False) -> dict | str:
    """The kernel of `packed_linear` for m tokens of 4- or 8-bit weights: "wo_gemv", a schedule of the Hopper
    GEMM (a dict), "wo_gemm_v3", "wo_gemm" or "dequant"; "wo_gemv_stream" (variant 3); "wo_planes" (x_planes +
    wo_planes_gemv, int8_planes.planes_route); "wo_split" (variant 7, int8_planes.takes_split); "wo_wgmma"
    (warpgroup_mm.py, WGMMA_TOKENS); "wgmma ..." (a measured route to it: warpgroup_mm.route_plan)."""
    if int8_planes.planes_route(w, m, planes_free) is not None and dtype in (torch.bfloat16, torch.float16):
        return "wo_planes"
    if int8_planes.takes_split(w, m, dtype):
        return _wgmma_cell(w, m, dtype, hopper_route(w, m, dtype)) or "wo_split"
    if (kind := gemv_kind(w, m)) is not None:
        return "wo_gemv_stream" if kind == "stream" else "wo_gemv"
    if WGMMA_TOKENS[0] <= m <= WGMMA_TOKENS[1] and warpgroup_mm.takes(w, m, dtype) and warpgroup_mm.available():
        return "wo_wgmma"
    if (hopper := hopper_route(w, m, dtype)) is not None:
        if warpgroup_mm.names_kernel(hopper):  # measured there; where the kernel cannot run, the plain schedule
            return _wgmma_cell(w, m, dtype, hopper) or plain_schedule(m, w.mixed.group, w.k_padded)
        return hopper
    if V3_MIN_M <= m <= V3_MAX_M and not _small(w, m):
        return "wo_gemm_v3"
    return "wo_gemm" if m <= GEMM_MAX_M else "dequant"


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


def packed_linear(x: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, kernels,
                  prefetch: torch.Tensor | None = None, planes_fuse: bool = False,
                  norm_input: bool = False, gated: bool = False) -> torch.Tensor:
    """x @ W^T + bias for x [..., K] -> [..., N]; `kernels` is torch.ops.qtool_cuda or layout.ReferenceOps.

    bias: [N] float32 (the kernels add it in float32), or None.
    prefetch: a tensor (the next layer's packed weight) the GEMV pulls into L2 after its own weight
    loads; a hint only, ignored by the other kernels.
    planes_fuse: x comes from a kernel Inductor generates, so under torch.compile with FUSED_PLANES (int8_planes) the planes are
    PyTorch ops it fuses there (QuantLinear.planes_fuse).
    norm_input: x is an RMSNorm's output, so under torch.compile with NORM_PLANES the planes come from that norm's
    kernel (qtool_kernels.norm_planes rewrites the graph) and cost no launch of their own.
    gated: w's rows are a gated MLP's gate / up interleaved by 8 (quantize/mlp.py); returns silu(gate) * up
    [..., N / 2], from the planes GEMV's epilogue where the planes run, else through silu_mul.
    """
    lead = x.shape[:-1]
    x2 = _kernel_input(x.reshape(-1, x.shape[-1]), w)
    m = x2.shape[0]
    if w.rows is not None:
        y = _rows_linear(x2, w, bias, kernels, prefetch)
        return (silu_mul(y, interleaved=True) if gated else y).reshape(*lead, y.shape[-1] // (2 if gated else 1))
    args = (w.qweight, w.scale, w.zero)
    meta = (w.num_bits, w.group_size, w.out_features)
    free = torch.compiler.is_compiling() and (planes_fuse and int8_planes.FUSED_PLANES
                                              or norm_input and int8_planes.NORM_PLANES and norm_planes.IN_USE[0])
    kernel = None if w.num_bits in LOW_BITS else route(w, m, x2.dtype, free)
    if gated and (variant := _gated_planes_variant(w, m, x2.dtype, kernel, free)) is not None:
        y = int8_planes.planes_linear(x2, w, bias, kernels, variant, free, prefetch, gated=True)
        return y.reshape(*lead, w.out_features // 2)
    if kernel is None:
        y = _low_bits_linear(x2, w, bias, kernels, prefetch, free)
    elif isinstance(kernel, dict):
        y = _hopper_linear(x2, w, bias, kernel)
    elif kernel in ("wo_gemv", "wo_gemv_stream"):
        variant = 3 if kernel == "wo_gemv_stream" else gemv_variant(w)
        y = kernels.wo_gemv(x2, *args, bias, *meta, EPILOGUE, prefetch, variant)
    elif kernel == "wo_split":
        y = kernels.wo_gemv(x2, *args, bias, *meta, EPILOGUE, prefetch, int8_planes.SPLIT_VARIANT + PDL_STATIC_WEIGHT)
    elif kernel == "wo_planes":
        y = int8_planes.planes_linear(x2, w, bias, kernels, int8_planes.planes_route(w, m, free), free, prefetch)
    elif kernel == "wo_wgmma":
        y = warpgroup_mm.wgmma_linear(x2, w, bias)
    elif warpgroup_mm.names_kernel(kernel):  # a measured route (tuning.py) naming the wgmma kernel's schedule
        y = warpgroup_mm.wgmma_linear(x2, w, bias, warpgroup_mm.route_plan(kernel, m, w.k_padded))
    elif kernel == "wo_gemm_v3":
        y = kernels.wo_gemm_v3(x2, *args, bias, *meta, EPILOGUE, V3_VARIANT)
    elif kernel == "wo_gemm":
        y = kernels.wo_gemm(x2, *args, bias, *meta, EPILOGUE)
    else:
        y = _dequant_linear(x2, w, bias, kernels)
    if gated:
        return silu_mul(y, interleaved=True).reshape(*lead, w.out_features // 2)
    return y.reshape(*lead, w.out_features)


def _gated_planes_variant(w: PackedWeight, m: int, dtype: torch.dtype, kernel, free: bool) -> int | None:
    """The planes GEMV's launch variant where m tokens of this (gate / up interleaved) weight run on it and its
    epilogue can write the product (not the tile kernel), else None."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    if w.num_bits in LOW_BITS:
        variant = int8_planes.lowbit_planes_route(w, m, free)
    else:
        variant = int8_planes.planes_route(w, m, free) if kernel == "wo_planes" else None
    return variant if variant is not None and variant != int8_planes.PLANES_GEMM_VARIANT else None


def _rows_linear(x2: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, kernels,
                 prefetch: torch.Tensor | None = None) -> torch.Tensor:
    """packed_linear for the row-major layout: x2 [m, K] -> [m, N]."""
    m = x2.shape[0]
    if rows_gemv(w, m, x2.dtype):
        if kernels is torch.ops.qtool_cuda and (y := w8_planes_linear(x2, w.rows, w.scale, bias, True)) is not None:
            return y  # QTOOL_W8_PLANES (scaled_mm.py)
        return kernels.w8_gemv(x2, w.rows, w.scale.view(-1), bias, 0, 0, int(gemv_pdl(m, *w.rows.shape)), prefetch)
    if warpgroup_mm.routes_rows(w.rows, w.scale, m, x2.dtype):  # QTOOL_WGMMA_W8_TOKENS
        return warpgroup_mm.rows_linear(x2, w.rows, w.scale, bias)
    first, last, max_weight = SPLIT
    if (first <= m <= last and w.out_features * w.k_padded <= max_weight
            and (y := split_linear(x2, w.rows, w.scale, bias, SPLIT_MEASURED)) is not None):
        return y
    if (y := _copy_linear(x2, w, bias)) is not None:
        return y
    if m <= ROWS_SLICES * W8_ROWS_MAX_M:  # no Hopper copy (fp16, before sm_90): w8_gemv per slice of tokens
        return torch.cat([kernels.w8_gemv(x2[i:i + W8_ROWS_MAX_M], w.rows, w.scale.view(-1), bias, 0, 0)
                          for i in range(0, m, W8_ROWS_MAX_M)])
    dense = (w.rows.float() * w.scale.view(-1, 1)).to(x2.dtype)  # scale applied in float32, one rounding
    return F.linear(x2, dense, None if bias is None else bias.to(x2.dtype))


def _dequant_linear(x2: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, kernels) -> torch.Tensor:
    """x2 [m, K_pad] times the weight dequantized to x2's dtype, on cuBLAS -> [m, N]."""
    dense = kernels.dequant_int(w.qweight, w.scale, w.zero, w.num_bits, w.group_size, w.out_features, x2.dtype)
    return F.linear(x2, dense, None if bias is None else bias.to(x2.dtype))


def _hopper_linear(x2: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, schedule: dict) -> torch.Tensor:
    """x2 [m, K_pad] bf16 on the weight's Hopper copy with `schedule` (mixed_linear's arguments, checked by
    tuning.fit / plain_schedule) -> [m, N]."""
    y = mixed_linear(x2, w.mixed, **schedule, checked=True)[:, :w.out_features]
    return y if bias is None else y + bias.to(y.dtype)


def _low_bits_linear(x2: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None, kernels,
                     prefetch: torch.Tensor | None, free: bool = False) -> torch.Tensor:
    """packed_linear for 2- and 3-bit weights: x2 [m, K_pad] -> [m, N]; free as packed_linear's."""
    variant = int8_planes.lowbit_planes_route(w, x2.shape[0], free)
    if x2.dtype in (torch.bfloat16, torch.float16) and variant is not None:
        return int8_planes.planes_linear(x2, w, bias, kernels, variant, free, prefetch)
    if (kind := gemv_kind(w, x2.shape[0])) is not None:  # with a Hopper copy or without
        return kernels.wo_gemv(x2, w.qweight, w.scale, w.zero, bias, w.num_bits, w.group_size, w.out_features,
                               EPILOGUE, prefetch, 3 if kind == "stream" else gemv_variant(w))
    # the Hopper copy holds the codes widened to 4 bits: read the 4-bit routes
    if (y := _copy_linear(x2, w, bias, bits=4)) is not None:
        return y
    return _dequant_linear(x2, w, bias, kernels)


def _copy_linear(x2: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None,
                 bits: int | None = None) -> torch.Tensor | None:
    """x2 [m, K] on the weight's Hopper copy by the measured route for `bits` (hopper_route), or None where the
    route is dequantization or there is no copy. Where the route names wo_gemm, which these weights cannot run
    (2-/3-bit codes, the row-major layout), the copy's plain schedule."""
    m = x2.shape[0]
    hopper = hopper_route(w, m, x2.dtype, bits)
    if isinstance(hopper, dict):
        return _hopper_linear(x2, w, bias, hopper)
    if hopper == "wo_gemm" or warpgroup_mm.names_kernel(hopper):  # kernels of the 4-bit layout only
        return _hopper_linear(x2, w, bias, plain_schedule(m, w.mixed.group, w.k_padded))
    return None
