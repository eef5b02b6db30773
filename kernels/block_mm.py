"""FP8 block-scaled GEMM on Hopper (the `fp8-block` scheme's GEMM): libqtool_sm90_block
(csrc/sm90/block_mm_sm90.cu, CUTLASS's blockwise-scaling mainloop) behind `qtool_cuda_block::fp8_block_mm`.

  y [m, n] bf16 = sum over 128-k groups of (xq [m, k] x its scales [m, k / 128]) . (wq [n, k] x its
  128 x 128 block scales [ceil(n / 128), k / 128])^T

Configurations (`CONFIGS`): skinny (64 x 128 ping-pong tiles), split (128 x 128 cooperative tiles, k split over
the SMs the tiles leave idle), large (128 x 128 in clusters of two), swap (the product transposed: 128 weight
rows x 64 tokens per tile, split-K), narrow (64 x 64 ping-pong tiles, session 21: twice skinny's CTAs on the
4096-wide layers; it reads the weight scales per 64 rows, `narrow_scales`), large-2x2 and skinny-2x2 (in 2 x 2
clusters, session 42; session 43 measured large-2x2 10-50% slower than large at 1024-8192 tokens); each also as
"...-overlap", with every 128-k promotion overlapped with the next k tile's wgmma (csrc/sm90/sm90_block_overlap.cuh;
session 43: block-large 1-10% faster with it at 1024-8192 tokens on all six shapes), and the large and split tiles
also with a tile order ("-s8", "-n8": sm90.ORDERS). Written in session 11 beside cuBLAS's block-wise GEMM
(F.scaled_mm), which ran 32-256 tokens on the 4096-wide layers at 0.71-0.95x bf16; it serves a layer only where
kernels/tuning.py holds a measured "fp8-block" route naming one of its configurations.

The call goes through ctypes in a `torch.library.custom_op`, like mixed_mm.py, so CUDA graphs capture it and
torch.compile treats it as one opaque op.
"""

from __future__ import annotations

import ctypes
import weakref

import torch
import torch.nn.functional as F

from . import build, sm90

BLOCK = 128
# route names of tuning.W8A8 -> config
TILES = {"block-skinny": 0, "block-split": 1, "block-large": 2, "block-swap": 3, "block-narrow": 4, "block-large-2x2": 5,
         "block-skinny-2x2": 6}
# Added to a tile configuration: CUTLASS's mainloop with each 128-k promotion overlapped with the next k tile's wgmma
# (csrc/sm90/sm90_block_overlap.cuh; session 42, measured faster in session 43). Same arithmetic, same bits.
OVERLAP = 16
_PROMOTIONS = {**TILES, **{f"{name}-overlap": config + OVERLAP for name, config in TILES.items()}}
# The large and split tiles also with a tile order of their own (sm90.ORDERS), for thousands of tokens
ORDERED_TILES = ("block-large", "block-large-overlap", "block-split", "block-split-overlap")
CONFIGS = {**_PROMOTIONS, **{f"{name}-{order}": _PROMOTIONS[name] + bits for name in ORDERED_TILES
                             for order, bits in sm90.ORDERS.items()}}
NARROW = CONFIGS["block-narrow"]
NARROW_ROWS = 64  # the narrow tile's weight rows, and its scale granularity
# Added to a configuration: launched with programmatic dependent launch (csrc/sm90/sm90_block_mm.h), so the GEMM's
# launch and prologue overlap act_quant, which releases it at its start. Off (`scaled_mm.BLOCK_PDL_MAX_M`) until
# measured on these kernels (session 19 timed every Hopper GEMM so, QTOOL_GEMM_PDL=1, before the narrow tile:
# fp8-block moved -6% to +10%).
PDL = 8


def narrow(config: int) -> bool:
    """Whether `config` (a CONFIGS value, plus PDL or not) is the narrow tile, which reads the scales per 64 rows."""
    return config & ~(PDL | OVERLAP | sm90.ORDER_BITS) == NARROW


class _Args(ctypes.Structure):  # csrc/sm90/sm90_block_mm.h, BlockMmArgs
    _fields_ = [("a", ctypes.c_void_p), ("b", ctypes.c_void_p), ("a_scale", ctypes.c_void_p),
                ("b_scale", ctypes.c_void_p), ("d", ctypes.c_void_p), ("workspace", ctypes.c_void_p),
                ("workspace_bytes", ctypes.c_size_t), ("m", ctypes.c_int), ("n", ctypes.c_int), ("k", ctypes.c_int),
                ("config", ctypes.c_int), ("split", ctypes.c_int)]


_functions: list = []


def _entry_points() -> tuple:
    if not _functions:
        if not available():  # a clear error, not ctypes' "cannot open shared object file"
            raise RuntimeError(f"fp8_block_mm needs a Hopper GPU and libqtool_sm90_block: {sm90.block.reason or 'no GPU'}")
        lib = ctypes.CDLL(str(sm90.block.path()))  # RTLD_LOCAL
        lib.qtool_sm90_block_workspace.restype = ctypes.c_size_t
        lib.qtool_sm90_block_workspace.argtypes = [ctypes.POINTER(_Args)]
        lib.qtool_sm90_block_mm.restype = ctypes.c_char_p
        lib.qtool_sm90_block_mm.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p]
        _functions.extend((lib.qtool_sm90_block_workspace, lib.qtool_sm90_block_mm))
    return tuple(_functions)


def available() -> bool:
    """Whether the block GEMM can run here (a Hopper GPU and its library built or buildable)."""
    return torch.cuda.is_available() and sm90.block.load()


def _check(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, config: int) -> None:
    (m, k), n = xq.shape, wq.shape[0]
    if xq.dtype != torch.float8_e4m3fn or wq.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fp8_block_mm takes float8_e4m3fn codes, got {xq.dtype} and {wq.dtype}")
    if k % BLOCK or n % 8 or m % 4 or wq.shape[1] != k:
        raise ValueError(f"fp8_block_mm: k % 128, n % 8 and m % 4 must be 0 and the k of both agree, got xq "
                         f"{tuple(xq.shape)}, wq {tuple(wq.shape)}")
    if x_scale.shape != (m, k // BLOCK) or x_scale.stride() != (1, m) or x_scale.dtype != torch.float32:
        raise ValueError(f"fp8_block_mm: x_scale must be float32 [{m}, {k // BLOCK}] column-major, got "
                         f"{x_scale.dtype} {tuple(x_scale.shape)} strides {x_scale.stride()}")
    rows = NARROW_ROWS if narrow(config) else BLOCK
    if w_scale.shape != (-(-n // rows), k // BLOCK) or not w_scale.is_contiguous() or w_scale.dtype != torch.float32:
        raise ValueError(f"fp8_block_mm: w_scale must be contiguous float32 [{-(-n // rows)}, {k // BLOCK}] with "
                         f"config {config}, got {w_scale.dtype} {tuple(w_scale.shape)}")
    if config & ~PDL not in CONFIGS.values():
        raise ValueError(f"fp8_block_mm: config={config}, expected one of {sorted(CONFIGS.values())} (tile, plus "
                         f"{OVERLAP} for the overlapped promotion, plus 32 / 96 for a tile order), plus {PDL} for a "
                         "PDL launch")


def _run(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, config: int = 0,
         split: int = 0) -> torch.Tensor:
    """y [m, n] bf16 (module docstring); xq [m, k] e4m3 with m % 4 == 0, x_scale float32 [m, k / 128] column-major,
    wq [n, k] e4m3, w_scale float32 [ceil(n / 128), k / 128] row-major (config 4: [ceil(n / 64), k / 128],
    `narrow_scales`); config as CONFIGS, plus PDL for that launch; split (configs 1, 3):
    0 fills the SMs, 1 none, s > 1 that many parts, -1 stream-K."""
    _check(xq, x_scale, wq, w_scale, config)
    workspace_of, run = _entry_points()
    (m, k), n = xq.shape, wq.shape[0]
    y = torch.empty(m, n, dtype=torch.bfloat16, device=xq.device)
    args = _Args(xq.data_ptr(), wq.data_ptr(), x_scale.data_ptr(), w_scale.data_ptr(), y.data_ptr(), None, 0, m, n, k,
                 config, split)
    err = sm90.call(workspace_of, run, args, xq.device)
    if err is not None:
        raise RuntimeError(f"fp8_block_mm: {err} (m={m}, n={n}, k={k}, config={config})")
    return y


fp8_block_mm = torch.library.custom_op("qtool_cuda_block::fp8_block_mm", _run, mutates_args=())


@fp8_block_mm.register_fake
def _(xq, x_scale, wq, w_scale, config=0, split=0):
    return xq.new_empty(xq.shape[0], wq.shape[0], dtype=torch.bfloat16)


def pad_rows(xq: torch.Tensor, x_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """xq [m, k] and its group scales [m, k / 128] padded to m % 4 == 0 rows (zero codes, unit scales), the scales
    column-major with a 16-byte aligned stride: what both block-wise GEMMs (this one and cuBLAS's) read."""
    pad = (-xq.shape[0]) % 4
    if pad:
        xq = F.pad(xq.view(torch.uint8), (0, 0, 0, pad)).view(xq.dtype)
        x_scale = F.pad(x_scale.float(), (0, 0, 0, pad), value=1.0)
    return xq.contiguous(), x_scale.float().t().contiguous().t()  # no copy when act_quant wrote it column-major


# id(w_scale) -> (a weak reference to it, its version counter, its narrow_scales): a layer's scales are expanded
# once, not on every call (a kernel launch as long as a small GEMM); the version notices an in-place
# load_state_dict, and the entry goes with the tensor.
_narrow: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}


def narrow_scales(w_scale: torch.Tensor, n: int) -> torch.Tensor:
    """The 128 x 128 block scales [ceil(n / 128), kb] as the narrow tile reads them, per 64 rows:
    [ceil(n / 64), kb] float32, each block's row twice (once per 64-row half)."""
    def expand() -> torch.Tensor:
        return w_scale.float().repeat_interleave(2, dim=0)[:-(-n // NARROW_ROWS)].contiguous()

    if torch.compiler.is_compiling():
        return expand()
    key = id(w_scale)
    hit = _narrow.get(key)
    if hit is None or hit[0]() is not w_scale or hit[1] != w_scale._version:
        if build.capturing():
            # Under capture the expansion is recorded, not run: cached, it would be unwritten memory until the
            # graph's first replay (an eager call in between read it), so such a graph expands on every replay.
            # Run one eager forward before capturing, as for the weight-only layouts (quantize/linear.py).
            return expand()
        hit = (weakref.ref(w_scale, lambda _, key=key: _narrow.pop(key, None)), w_scale._version, expand())
        _narrow[key] = hit
    return hit[2]


def block_linear(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor, config: int,
                 split: int = 0, pdl: bool = False) -> torch.Tensor:
    """`fp8_block_mm` for any m: bf16 [m, n]; w_scale the stored [ceil(n / 128), k / 128] block scales; pdl: launch
    with programmatic dependent launch (when the kernel before is act_quant, which releases it early)."""
    m = xq.shape[0]
    xq_p, sa = pad_rows(xq, x_scale)
    gemm = fp8_block_mm if torch.compiler.is_compiling() else _run  # eager: no custom-op dispatch (host time)
    ws = narrow_scales(w_scale, wq.shape[0]) if narrow(config) else w_scale.float().contiguous()
    y = gemm(xq_p, sa, wq.contiguous(), ws, config + (PDL if pdl else 0), split)
    return y[:m] if xq_p.shape[0] != m else y
