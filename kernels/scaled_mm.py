"""CUDA implementations of the W8A8 ops: qtool::w8a8_linear (what a W8A8 QuantLinear calls),
qtool::quantize_activation and qtool::scaled_linear.

qtool::w8a8_linear on CUDA, fp16/bf16 activations, by token count m, as measured (tuning.W8A8: the route of
the nearest measured shape and the next measured batch; outside the measured batches these rules):
  m <= W8_GEMV_MAX_M  qtool_cuda::w8_gemv: the 8-bit weights with 16-bit activations, no activation
                      quantization (at these m the weight bytes set the time; more accurate too); a measured
                      route may take it up to W8_GEMV_KERNEL_MAX_M
  QTOOL_WGMMA_W8_TOKENS  qtool_cuda_wgmma::w8_mm (warpgroup_mm.py): the same, on wgmma, for per-channel or
                      per-tensor int8 / E4M3 / E5M2 weights and E4M3 128 x 128 blocks (off by default until measured)
  otherwise           qtool_cuda::act_quant (one fused pass), then `scaled_mm` below, on the measured
                      libqtool_sm90 tile configuration (or cuBLAS where that measured faster)
On CPU, and for float32 activations, every op runs its reference (kernels/reference.py).

`scaled_mm`, the GEMM with its scales, first that fits:
  INT8 / FP8 E4M3, per-token (or static) x per-channel (or tensor) scales:
                     qtool_cuda::sm90_scaled_mm, CUTLASS wgmma with the scales and bias in the epilogue
                     (Hopper, libqtool_sm90: kernels/sm90.py); K % 16 == 0, N % 8 == 0
  FP8 E4M3, same scales  torch._scaled_mm with row-wise scales (K, N multiples of 16)
  INT8, same scales  torch._int_mm (m > 16, K and N multiples of 8; small m zero-padded), scales after
  FP8 1x128 activation groups x 128x128 weight blocks: F.scaled_mm block-wise (K % 512 == 0), or
                     qtool_cuda_block::fp8_block_mm (block_mm.py) where tuning.W8A8 measured it faster
Anything else returns None and the caller runs the reference.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
import torch.nn.functional as F

from . import block_mm as block_mm_sm90
from . import build, ops, reference, sm90, tuning, warpgroup_mm
from .layout import KERNEL_DTYPES
from .mlp import silu_mul

W8_GEMV_MAX_M = 16  # the rule outside the measured batches: w8_gemv up to 16 tokens
W8_GEMV_KERNEL_MAX_M = 32  # what qtool_cuda::w8_gemv takes (w8a8.h, kMaxW8Tokens): a measured route may use it
INT_MM_MIN_M = 17  # torch._int_mm on CUDA needs more than 16 rows
FP8_MIN_CAPABILITY = (8, 9)  # FP8 matrix units: Ada (sm_89) and Hopper (sm_90) onwards
_warned: set[str] = set()


def _has_fp8_units(device: torch.device) -> bool:
    """Whether the GPU multiplies FP8 natively; warns once, and the caller dequantizes, when it does not."""
    if device.type != "cuda":
        return _cpu_has_rowwise_fp8()  # CPU tensors only reach here from tests
    if torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY:
        return True
    if "fp8" not in _warned:
        _warned.add("fp8")
        warnings.warn(f"{torch.cuda.get_device_name(device)} has no FP8 matrix units: FP8 layers run as "
                      "dequantize + 16-bit GEMM (weight-only speed)", RuntimeWarning, stacklevel=3)
    return False


@functools.cache
def _cpu_has_rowwise_fp8() -> bool:
    """Whether this PyTorch's CPU torch._scaled_mm takes row-wise scales (2.13 does; 2.11 is per-tensor only)."""
    a = torch.ones(2, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(2, 1), scale_b=torch.ones(1, 2), out_dtype=torch.float32)
    except RuntimeError:
        return False
    return True


def _rowwise(scale: torch.Tensor, rows: int) -> torch.Tensor:
    """Per-row float32 scales [rows, 1] from [rows, 1] or a per-tensor [1]."""
    return scale.float().reshape(-1, 1).expand(rows, 1).contiguous()


def _vector(scale: torch.Tensor, rows: int) -> torch.Tensor:
    """Contiguous float32 [rows] from per-row scales or one per-tensor scale."""
    flat = scale.float().reshape(-1)
    return flat.expand(rows).contiguous() if flat.numel() == 1 and rows != 1 else flat.contiguous()


SM90_SKINNY_MAX_M = 128  # scaled_mm_sm90.cu, kSkinnyMaxM
SM90_FP8_TILE = (128, 256)  # its FP8 tile above that


def _sm90_fits(xq: torch.Tensor, wq: torch.Tensor, out_dtype: torch.dtype, measured: bool = False) -> bool:
    """Whether libqtool_sm90 takes this GEMM and (unless `measured` chose it) is the fastest choice for it.

    Measured on the H200 (BENCHMARKS.md): above the skinny range, an FP8 problem with fewer 128 x 256
    output tiles than SMs leaves SMs idle, and cuBLAS's row-wise FP8 GEMM (torch._scaled_mm) is
    faster there (1.24x against 0.82x bf16 at 512 x 4096 x 4096); int8 has no such alternative."""
    (m, k), n = xq.shape, wq.shape[0]
    fits = (xq.is_cuda and out_dtype in KERNEL_DTYPES and xq.dtype == wq.dtype
            and xq.dtype in (torch.int8, torch.float8_e4m3fn) and k % 16 == 0 and n % 8 == 0 and sm90.load())
    cublas_takes_it = k % 16 == 0 and n % 16 == 0
    if fits and not measured and xq.dtype == torch.float8_e4m3fn and m > SM90_SKINNY_MAX_M and cublas_takes_it:
        tiles = -(-m // SM90_FP8_TILE[0]) * -(-n // SM90_FP8_TILE[1])
        return tiles >= torch.cuda.get_device_properties(xq.device).multi_processor_count
    return fits


# libqtool_sm90's tile configurations (csrc/sm90/sm90_scaled_mm.h, config): 0 picks skinny or large by m.
# 6: skinny tiles in 2-CTA clusters along m (session 24: the fastest in 5 of 60 cells, at 128 tokens). 7, 8: pingpong
# and large in 2 x 2 clusters, both operands multicast (session 42, for 1024-8192 tokens, where L2's bandwidth may
# bind the 2-CTA tiles; session 43 measured them 0-40% slower than their 1 x 2 tiles there).
SM90_TILES = {"auto": 0, "skinny": 1, "large": 2, "split": 3, "narrow": 4, "pingpong": 5, "skinny-pair": 6,
              "pingpong-2x2": 7, "large-2x2": 8}
# The large tiles also with a tile order of their own (sm90.ORDERS: "pingpong-s8", ...)
ORDERED_TILES = ("large", "pingpong", "split")
SM90_CONFIGS = {**SM90_TILES, **{f"{name}-{order}": SM90_TILES[name] + bits for name in ORDERED_TILES
                                 for order, bits in sm90.ORDERS.items()}}
# Added to the configuration: programmatic dependent launch (csrc/sm90/sm90_common.cuh; the GEMM waits for the
# kernel before, act_quant, ahead of any global access, so any input is safe). Session 19 (H200, graph replay):
# faster at 32 and 64 tokens on every shape (fp8 8192 x 8192 at 32: 26.0 -> 23.8 us, 4096 x 4096 at 64: 11.0 ->
# 10.0), mixed to 1.5x slower at 256 (8192 x 28672: 107.9 -> 157.6 us): up to SM90_PDL_MAX_M tokens only.
# QTOOL_W8A8_PDL_MAX_M overrides the bound for A/Bs (session 46 found the mixed-input GEMM faster under PDL at 128
# tokens on every shape, which session 19 did not time here).
SM90_PDL, SM90_PDL_MAX_M = 16, int(os.environ.get("QTOOL_W8A8_PDL_MAX_M") or 64)
# The same for the fp8-block GEMM (block_mm.PDL), on layers of at most BLOCK_PDL_MAX_K columns. Session 22 (H200,
# graph replay, `dev/block_pdl_probe.py`): at k = 4096 faster on every shape and batch measured, 16-256 tokens (4096 x
# 4096 at 64: 11.7 -> 11.0 us; 4096 x 6144 at 64: 13.4 -> 12.4), where act_quant is short and the GEMM's launch a
# larger share; at k >= 8192 mixed (8192 x 8192 at 128: 26.2 -> 29.3 us, 8192 x 28672 at 32: 72.4 -> 66.6).
BLOCK_PDL_MAX_M, BLOCK_PDL_MAX_K = 256, 4096


def measured_kind(codes: torch.dtype, blocks: bool) -> str | None:
    """The tuning.W8A8 kind of 8-bit codes: "fp8-block", "fp8", "int8"; None for E5M2 (not measured)."""
    if codes == torch.float8_e4m3fn:
        return "fp8-block" if blocks else "fp8"
    return "int8" if codes == torch.int8 and not blocks else None


def takes_gemv(m: int, route: str | None) -> bool:
    """Whether m tokens with this measured route (None: not measured) run w8_gemv, when the shapes fit it."""
    return m <= W8_GEMV_KERNEL_MAX_M and route == "gemv" if route is not None else m <= W8_GEMV_MAX_M


def w8a8_route(m: int, n: int, k: int, kind: str | None) -> str | None:
    """The measured W8A8 route (tuning.W8A8) for m tokens of an n x k weight of `kind` ("fp8", "int8",
    "fp8-block"): "gemv", a libqtool_sm90 configuration, a block_mm configuration or "cublas"; None outside the
    measured batches, and off Hopper (the table was measured with libqtool_sm90 there: the rules of this module
    decide)."""
    return tuning.lookup("w8a8", kind, k, n, m, within=True) if kind is not None and sm90.load() else None


def scaled_mm(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
              bias: torch.Tensor | None, x_group_size: int, w_block_n: int, w_block_k: int,
              out_dtype: torch.dtype, route: str | None = None) -> torch.Tensor | None:
    """qtool::scaled_linear on the GEMMs of the module docstring; None when none fits. route: the measured route
    (`w8a8_route`) when the caller has looked it up, else None (looked up here)."""
    (m, k), n = xq.shape, wq.shape[0]
    if m == 0:
        return None
    blocks = x_group_size > 0 or w_block_n > 0
    if route is None and xq.is_cuda:
        route = w8a8_route(m, n, k, measured_kind(wq.dtype, blocks))
    if blocks:
        return _blockwise(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype, route)
    if route in SM90_CONFIGS and _sm90_fits(xq, wq, out_dtype, measured=True):
        config = sm90.without_padded_order(SM90_CONFIGS[route], m, n) + (SM90_PDL if m <= SM90_PDL_MAX_M else 0)
        return torch.ops.qtool_cuda.sm90_scaled_mm(xq.contiguous(), wq.contiguous(), _vector(x_scale, m),
                                                   _vector(w_scale, n), bias, out_dtype, config)
    if route == "cublas" and (y := torch_scaled_mm(xq, x_scale, wq, w_scale, bias, out_dtype)) is not None:
        return y
    if _sm90_fits(xq, wq, out_dtype):
        return torch.ops.qtool_cuda.sm90_scaled_mm(xq.contiguous(), wq.contiguous(), _vector(x_scale, m),
                                                   _vector(w_scale, n), bias, out_dtype)
    return torch_scaled_mm(xq, x_scale, wq, w_scale, bias, out_dtype)


def torch_scaled_mm(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor,
                    bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor | None:
    """Per-token x per-channel scaled GEMM on torch._scaled_mm (FP8) / torch._int_mm (INT8); None if neither fits."""
    (m, k), n = xq.shape, wq.shape[0]
    sx = _rowwise(x_scale, m)  # [m, 1]
    sw = _rowwise(w_scale, n).t()  # [1, n]
    if xq.dtype == torch.int8 and wq.dtype == torch.int8:
        if k % 8 or n % 8:
            return None
        xp = F.pad(xq, (0, 0, 0, INT_MM_MIN_M - m)) if m < INT_MM_MIN_M else xq
        acc = torch._int_mm(xp.contiguous(), wq.t())[:m]
        y = acc.float() * sx * sw
    elif xq.dtype == wq.dtype == torch.float8_e4m3fn:
        if k % 16 or n % 16 or not _has_fp8_units(xq.device):
            return None
        mm_dtype = torch.bfloat16 if out_dtype == torch.bfloat16 else torch.float32
        y = torch._scaled_mm(xq.contiguous(), wq.t(), scale_a=sx, scale_b=sw.contiguous(), out_dtype=mm_dtype)
    else:
        return None
    if bias is not None:
        y = y.float() + bias.float()
    return y.to(out_dtype)


BLOCK = 128  # the one block size torch's block-wise FP8 GEMM takes (1x128 activations, 128x128 weights)


_blockwise_failed: set[str] = set()


def _blockwise(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype, route):
    """FP8 1x128 x 128x128 through the measured block-wise GEMM (block_mm.py where `route`, from tuning.W8A8, names
    it, else F.scaled_mm on cuBLAS); None where neither applies."""
    k, n = xq.shape[1], wq.shape[0]
    fits = (xq.is_cuda and xq.dtype == wq.dtype == torch.float8_e4m3fn and x_group_size == BLOCK
            and (w_block_n, w_block_k) == (BLOCK, BLOCK) and k % BLOCK == 0)
    if not fits:
        return None
    if route in block_mm_sm90.CONFIGS and n % 8 == 0 and block_mm_sm90.available():  # measured faster than cuBLAS
        config = sm90.without_padded_order(block_mm_sm90.CONFIGS[route], xq.shape[0], n)
        y = block_mm_sm90.block_linear(xq, x_scale, wq, w_scale, config,
                                       pdl=xq.shape[0] <= BLOCK_PDL_MAX_M and k <= BLOCK_PDL_MAX_K)
    else:
        # cuBLAS wants the weight scales' row stride (k / 128 floats) 16-byte aligned: k % 512 == 0.
        if k % (4 * BLOCK) or not hasattr(F, "scaled_mm") or _blockwise_failed:
            return None
        try:
            y = block_mm(xq, x_scale, wq, w_scale)
        except (RuntimeError, ValueError) as err:  # a PyTorch or cuBLAS without block-wise FP8 on this GPU
            _blockwise_failed.add(str(err).splitlines()[0])
            warnings.warn(f"F.scaled_mm block-wise FP8 failed ({str(err).splitlines()[0][:200]}); fp8-block "
                          "layers use the reference from now on", RuntimeWarning, stacklevel=3)
            return None
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(out_dtype)


def block_mm(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """bf16 [m, n] = (xq [m, k] with scales [m, k/128]) @ (wq [n, k] with scales [n/128, k/128])^T.

    cuBLAS reads the activation scales M-major with a 16-byte aligned stride, so m is padded to a
    multiple of 4 (zero codes, unit scales), and the weight scales k-major (the stored layout).
    """
    from torch.nn.functional import ScalingType

    m = xq.shape[0]
    xq_p, sa = block_mm_sm90.pad_rows(xq, x_scale)
    y = F.scaled_mm(xq_p, wq.t(), sa, ScalingType.BlockWise1x128, w_scale.float().t(),
                    ScalingType.BlockWise128x128, output_dtype=torch.bfloat16)
    return y[:m] if xq_p.shape[0] != m else y


def quantize_activation_cuda(x: torch.Tensor, fmt: str, group_size: int,
                             static_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel where it fits (scale [m, 1] per token and static, [m, groups] column-major), else
    the reference (scale [1] when static)."""
    kernels = build.load_extension()
    rows_ok = x.dim() == 2 and x.stride(1) == 1 and x.dtype in KERNEL_DTYPES
    groups_ok = group_size <= 0 or static_scale is not None or (
        8 <= group_size <= 256 and group_size & (group_size - 1) == 0 and x.shape[1] % 8 == 0
        and x.stride(0) % 8 == 0 and x.data_ptr() % 16 == 0)
    if kernels is None or not rows_ok or not groups_ok:
        return reference.quantize_activation(x, fmt, group_size, static_scale)
    return kernels.act_quant(x, fmt, group_size, static_scale)


# int8 rows with one scale per row (W8A8 int8, W8A16) at 1-4 tokens on x_planes + w8_planes_gemv (csrc/w8_planes.cu):
# x as two int8 planes, the codes straight into the int8 mma, int32 sums over the row. Session 38, H200 (BENCHMARKS.md
# "session 38"): the raw pair beat a plain w8_gemv launch where K and N are both >= 8192 (dev/w8planes_ab.py: 8192 x
# 8192 1.32-1.41x -> 1.54-1.57x, 28672 x 8192 1.29-1.33x -> 1.64-1.70x), but not the layers as they run: through
# bench_w8a8.py (int8) 8192 x 8192 1.63/1.57/1.57x -> 1.55/1.54/1.54x at 1/2/4 tokens, and through bench_kernels.py
# (W8A16) 8192 x 8192 1.73x -> 1.53x, 28672 x 8192 1.65x -> 1.55x at one token, where w8_gemv runs with its measured
# PDL (tuning.gemv_pdl) and prefetch. Off unless QTOOL_W8_PLANES=1 (read once), for A/Bs; W8_PLANES_MIN_K/N: the
# shapes it was aimed at.
W8_PLANES = os.environ.get("QTOOL_W8_PLANES", "0") == "1"
W8_PLANES_MAX_M = 4  # csrc/wo_kernels.h, kPlanesMaxTokens
W8_PLANES_MIN_K = W8_PLANES_MIN_N = 8192
PLANES_MIN_BLOCKS = 448  # stripes per block (1, 2, 4): the most that leave this many blocks (~3.4 per SM; session 37)


def planes_variant(n: int) -> int:
    """The planes GEMVs' launch (w8_planes_gemv, wo_planes_gemv) for n output rows: 0, 1, 2 = one, two or four
    16-row stripes per block, the most that leave PLANES_MIN_BLOCKS blocks (measured best within 2% on the 4-bit
    shapes, session 37)."""
    stripes = -(-n // 16)
    return 2 if stripes >= 4 * PLANES_MIN_BLOCKS else 1 if stripes >= 2 * PLANES_MIN_BLOCKS else 0


def takes_w8_planes(m: int, n: int, k: int) -> bool:
    """Whether m tokens of an int8 [n, k] weight take the planes by the measured rule (above)."""
    return (W8_PLANES and 1 <= m <= W8_PLANES_MAX_M and k >= W8_PLANES_MIN_K and n >= W8_PLANES_MIN_N
            and k % 64 == 0 and k <= 1 << 17)


def w8_planes_linear(x, weight, weight_scale, bias, static_weight=False) -> torch.Tensor | None:
    """x [m, k] @ (weight [n, k] int8 * weight_scale [n])^T + bias on the planes (above), or None where they do not
    serve: switched off, more than 4 tokens, k or n under the measured rule, k not a multiple of 64, not int8 rows
    with per-row (or one) scales."""
    m, (n, k) = x.shape[0], weight.shape
    if (not takes_w8_planes(m, n, k) or weight.dtype != torch.int8
            or weight_scale.numel() not in (1, n) or not weight.is_contiguous() or x.dtype not in KERNEL_DTYPES):
        return None
    x = x.contiguous()
    if x.data_ptr() % 16:
        x = x.clone()
    planes, xscale = torch.ops.qtool_cuda.x_planes(x, 1, 1)
    return torch.ops.qtool_cuda.w8_planes_gemv(planes, xscale, weight, _vector(weight_scale, n), bias, x.dtype,
                                               planes_variant(n) + 16 * bool(static_weight))


def _w8_gemv(x, weight, weight_scale, bias, block_n, block_k, static_weight=False,
             prefetch=None, swiglu=False) -> torch.Tensor | None:
    """qtool_cuda::w8_gemv when the shapes fit (k % 16 == 0; blocks of 32k x 64k), else None. `static_weight`: no
    kernel writes the weight while layers run (a QuantLinear's), so the launch may read it early (gemv_pdl).
    `prefetch`: bytes the kernel pulls into L2 after its own weight (the next layer's, quantize/prefetch.py).
    `swiglu`: weight = [gate; up], y = silu(gate) * up [m, n / 2] (m <= 8, per-channel or per-tensor scales)."""
    n, k = weight.shape
    if k % 16 or (block_n > 0 and (block_n % 32 or block_k % 64)) or not weight.is_contiguous():
        return None
    if not swiglu and block_n == 0 and (y := w8_planes_linear(x, weight, weight_scale, bias, static_weight)) is not None:
        return y
    scale = weight_scale.float().contiguous() if block_n > 0 else _vector(weight_scale, n)
    x = x.contiguous()
    if x.data_ptr() % 16:
        x = x.clone()
    pdl = static_weight and tuning.gemv_pdl(x.shape[0], n, k)
    return torch.ops.qtool_cuda.w8_gemv(x, weight, scale, bias, block_n, block_k, int(pdl), prefetch, int(swiglu))


# A gated MLP's [gate; up] W8A8 layer with SiLU-and-multiply in w8_gemv's epilogue (its two-stripe variant, one
# gate stripe and its up stripe per block) up to this many tokens (at most 8), the batch-1 decode, where the separate
# kernel it saves costs as much as a small layer's launch; for the code formats in SWIGLU_CODES (else the layer runs
# as before, followed by silu_mul). Session 22 (H200, `dev/prefetch_sweep.py --swiglu 8,0`, one process each): 8B
# decode at batch 1, fp8 291.3 -> 294.3 tok/s (1.598x -> 1.615x bf16), int8 280.3 -> 288.3. E5M2 unmeasured: off.
SWIGLU_GEMV_MAX_M = 8
SWIGLU_CODES = {torch.float8_e4m3fn, torch.int8}
# fp8-block's gate/up layers too (FP8 codes, bf16 activations: the block scales folded per stripe, w8_gemv.cu
# kBlockFoldGated). Session 29 (H200, `dev/prefetch_sweep.py --schemes fp8-block --swiglu 8,0`, one process): 8B
# decode at batch 1 291.0 -> 294.0 tok/s (bf16 199.6 in the same process).
SWIGLU_BLOCKS = True


def _folds(block_k: int) -> bool:
    """Whether w8_gemv folds block scales of this width into its decode (block_k = 64 * 2^j; w8_gemv.cu)."""
    tiles = block_k // 64
    return block_k % 64 == 0 and tiles > 0 and tiles & (tiles - 1) == 0


def _gated_gemv(x, weight, weight_scale, bias, block_n, block_k, static_weight, prefetch) -> torch.Tensor | None:
    """silu(gate) * up [m, n / 2] from w8_gemv's epilogue where the layer runs w8_gemv, else None."""
    m, (n, k) = x.shape[0], weight.shape
    blocks_ok = not block_n or (SWIGLU_BLOCKS and x.dtype == torch.bfloat16 and weight.dtype != torch.int8
                                and n % 32 == 0 and _folds(block_k))
    if (m > SWIGLU_GEMV_MAX_M or not blocks_ok or weight.dtype not in SWIGLU_CODES or x.dtype not in KERNEL_DTYPES
            or build.load_extension() is None):
        return None
    if not takes_gemv(m, w8a8_route(m, n, k, measured_kind(weight.dtype, block_n > 0))):
        return None
    return _w8_gemv(x, weight, weight_scale, bias, block_n, block_k, bool(static_weight), prefetch, swiglu=True)


@ops.w8a8_linear.register_kernel("cuda")
def w8a8_linear_cuda(x, weight, weight_scale, bias, input_scale, fmt, act_group_size, block_n, block_k,
                     static_weight=0, prefetch=None, swiglu=0):
    """qtool::w8a8_linear on CUDA (QuantLinear calls it directly in eager mode, with static_weight=1 and the next
    layer's weight to prefetch). swiglu: a gated MLP's [gate; up] layer, y = silu(gate) * up [m, n / 2]: in the
    GEMV's epilogue where it runs (<= SWIGLU_GEMV_MAX_M tokens, per-channel scales), else after the layer."""
    if swiglu:
        if (y := _gated_gemv(x, weight, weight_scale, bias, block_n, block_k, static_weight, prefetch)) is not None:
            return y
        return silu_mul(w8a8_linear_cuda(x, weight, weight_scale, bias, input_scale, fmt, act_group_size, block_n,
                                         block_k, static_weight, prefetch))
    args = (x, weight, weight_scale, bias, input_scale, fmt, act_group_size, block_n, block_k)
    if build.load_extension() is None or x.dtype not in KERNEL_DTYPES:
        return reference.w8a8_linear(*args)
    m, (n, k) = x.shape[0], weight.shape
    route = w8a8_route(m, n, k, measured_kind(weight.dtype, block_n > 0))  # None: E5M2, or not measured
    if takes_gemv(m, route) and (y := _w8_gemv(x, weight, weight_scale, bias, block_n, block_k,
                                               bool(static_weight), prefetch)) is not None:
        return y
    blocks = (block_n, block_k) == (warpgroup_mm.BLOCK,) * 2
    if (block_n == 0 or blocks) and warpgroup_mm.routes_rows(weight, weight_scale, m, x.dtype, blocks):
        return warpgroup_mm.rows_linear(x, weight, weight_scale, bias, blocks=blocks)  # QTOOL_WGMMA_W8_TOKENS
    xq, xs = quantize_activation_cuda(x, fmt, act_group_size, input_scale)
    group = act_group_size if input_scale is None else 0
    y = scaled_mm(xq, xs, weight, weight_scale, bias, group, block_n, block_k, x.dtype, route)
    if y is None:
        return reference.scaled_linear(xq, xs, weight, weight_scale, bias, group, block_n, block_k, x.dtype)
    return y


@ops.quantize_activation.register_kernel("cuda")
def _quantize_activation_cuda(x, fmt, group_size, static_scale):
    xq, xs = quantize_activation_cuda(x, fmt, group_size, static_scale)
    if static_scale is not None:  # the op's contract: the static scale itself, [1]
        return xq, static_scale.float().reshape(1).clone()
    return xq, xs.contiguous()


@ops.scaled_linear.register_kernel("cuda")
def _scaled_linear_cuda(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype):
    y = scaled_mm(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype)
    if y is None:
        return reference.scaled_linear(xq, x_scale, wq, w_scale, bias, x_group_size, w_block_n, w_block_k, out_dtype)
    return y
