"""Weight-only GEMMs at 9-128 tokens on Hopper's wgmma, the weights read straight from their own layout:
libqtool_sm90_wgmma (csrc/sm90/wo_wgmma_sm90.cu) behind `qtool_cuda_wgmma::w4_mm` (the 4-bit kernel layout) and
`qtool_cuda_wgmma::w8_mm` (8-bit codes row-major, int8, FP8 E4M3 or E5M2, per-channel or per-tensor scales, or
E4M3 with 128 x 128 block scales: W8A16's `pack_rows` weights and the W8A8 layers' own, run with 16-bit activations
as w8_gemv runs them below 17 tokens).

The weights are wgmma's A operand from registers: each lane's 16-byte word of the int4 kernel layout
(layout.py, the A fragments of mma.m16n8k16, which wgmma repeats per warp of a warpgroup) goes through a
lane-private cp.async ring in shared memory into registers, is converted to bf16 ((q - z) * s)
and multiplied against the activations (B: up to 128 tokens x 64 k per stage, a ring of TMA copies in
wgmma's 128-byte swizzle; QTOOL_WGMMA_STAGES sets its depth). No second copy of the weight (the CUTLASS mixed-input GEMM of
mixed_mm.py keeps one in its shuffled layout), split-K over a thread block cluster reduced through
distributed shared memory, PDL.

A call's schedule is a `Plan`: the token tile (16 / 32 / 64 / 128: the wgmma's n, so m <= tile), 64-row
warpgroups per CTA (1, 2 or 4: each CTA reads its tokens' activations once for all its rows) and the split of K
(1-8, the cluster). `plan` keeps the grid within one wave of clusters (the occupancy API's count) and spreads it
over the SMs;
QTOOL_WGMMA_PLAN="tile,warpgroups,split" forces one (A/Bs). Numerics: float32 sums of bf16 products, the
scale and the product (q - z) * s each rounded to bf16 (relative error <= 2^-8 of each weight, as the Hopper
GEMM's bf16 scales give), bf16 output. Two forms a measured route may name (kernels/tuning.py): the tall tile (128
rows a warpgroup) and the post-scale form (at <= 32 tokens the wgmma sums the codes q - z, exact for symmetric
weights, and each g128 group's float32 partial sums take its float32 scale after it; ~130-156 registers
against ~80, so the one-wave schedules differ).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable
from dataclasses import astuple, dataclass

import torch

from . import sm90
from .layout import PackedWeight

TILES = (16, 32, 64, 128)  # token tiles (the wgmma's n)
WARPGROUPS = (1, 2, 4)  # 64 weight rows each per CTA; 4 not at tile 128 (its accumulators leave too few registers)
MAX_SPLIT = 8  # the portable cluster size
CHUNK_K = 64  # k per lane's 16-byte word: groups must be multiples of it


@dataclass(frozen=True)
class Plan:
    tile: int  # tokens per CTA: m <= tile
    warpgroups: int  # 64 weight rows each: 1, 2 or 4 (128 each when tall)
    split: int  # CTAs along K, one cluster
    tall: bool = False  # 128 rows a warpgroup (each warp two stripes): 4-bit, tile <= 64, 1 or 2 warpgroups
    post: bool = False  # the post-scale form: g128 / per-channel scales after the MMA; 4-bit, tile <= 32, 1-2 wgs


def takes_tall(tile: int, warpgroups: int) -> bool:
    """Whether the tall tile has a kernel for this schedule (4-bit weights)."""
    return tile <= 64 and warpgroups <= 2


def takes_post(tile: int, warpgroups: int) -> bool:
    """Whether the post-scale form has a kernel for this schedule (4-bit weights; csrc/sm90/wgmma_groups.cuh: the
    wgmma sums the codes q - z, each g128 group's float32 partial sums are scaled after it, two sets alternating)."""
    return tile <= 32 and warpgroups <= 2


def launch_bits(tall: bool = False, post: bool = False) -> int:
    """Args.launch without PDL (bit 0): bit 1 the tall tile, bit 2 the post-scale form."""
    return 2 * tall + 4 * post


class _Args(ctypes.Structure):  # csrc/sm90/wgmma_lanes.cuh, Args (tests/test_abi_mirrors.py)
    _fields_ = [("qweight", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("zero", ctypes.c_void_p),
                ("bias", ctypes.c_void_p), ("x", ctypes.c_void_p), ("y", ctypes.c_void_p),
                ("m", ctypes.c_int), ("n", ctypes.c_int), ("n_pad", ctypes.c_int), ("k", ctypes.c_int),
                ("k_pad", ctypes.c_int), ("group", ctypes.c_int), ("tile", ctypes.c_int),
                ("warpgroups", ctypes.c_int), ("split", ctypes.c_int), ("launch", ctypes.c_int),
                ("kind", ctypes.c_int), ("scale_stride", ctypes.c_int), ("stages", ctypes.c_int)]


# 8-bit row-major codes -> the kernel's `kind` (0: 4-bit)
ROWS_KINDS = {torch.int8: 1, torch.float8_e4m3fn: 2, torch.float8_e5m2: 4}
BLOCKS_KIND, BLOCK = 3, 128  # E4M3 codes with a float32 scale per 128 x 128 block (fp8-block)


_entry: list = []


def _library():
    if not _entry:
        # QTOOL_WGMMA_LIBRARY: a variant build of the same source (an A/B of compile-time constants, dev/)
        lib = ctypes.CDLL(os.environ.get("QTOOL_WGMMA_LIBRARY") or str(sm90.wgmma.path()))
        lib.qtool_sm90_wgmma_mm.restype = ctypes.c_char_p
        lib.qtool_sm90_wgmma_mm.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p]
        lib.qtool_sm90_wgmma_clusters.restype = ctypes.c_char_p
        lib.qtool_sm90_wgmma_clusters.argtypes = [ctypes.POINTER(_Args), ctypes.POINTER(ctypes.c_int)]
        _entry.append(lib)
    return _entry[0]


def _function():
    return _library().qtool_sm90_wgmma_mm


def parse_stages(text: str) -> int:
    """QTOOL_WGMMA_STAGES's value -> the activation ring's stages: 2-16, or 0 for 32 KB of them (4-8)."""
    try:
        stages = int(text)
    except ValueError:
        raise ValueError(f"QTOOL_WGMMA_STAGES={text!r}: expected an integer, 0 or 2..16") from None
    if stages not in (0, *range(2, 17)):
        raise ValueError(f"QTOOL_WGMMA_STAGES={text!r}: 0 (the default) or 2..16")
    return stages


# The activation ring's stages for every call (session 67: 4, 8 and 12 ran alike once TMA fed them); dev/wgmma_ab.py
# sets it between captures (A/Bs).
STAGES = parse_stages(os.environ.get("QTOOL_WGMMA_STAGES", "0"))


@functools.cache
def max_clusters(device: int, tile: int, warpgroups: int, split: int, kind: int = 0, asym: bool = False,
                 stages: int = 0, tall: bool = False, post: bool = False) -> int:
    """How many (1, split, 1) clusters of the kernel with this schedule, weight kind and stage count GPU `device`
    holds at once (cudaOccupancyMaxActiveClusters: SMs, CTAs per SM, and GPCs, which a cluster may not straddle)."""
    args = _Args(tile=tile, warpgroups=warpgroups, split=split, kind=kind, zero=1 if asym else None, stages=stages,
                 launch=launch_bits(tall, post))
    count = ctypes.c_int(0)
    with torch.cuda.device(device):
        err = _library().qtool_sm90_wgmma_clusters(ctypes.byref(args), ctypes.byref(count))
    if err is not None:
        raise RuntimeError(f"wgmma clusters (tile={tile}, warpgroups={warpgroups}, split={split}): {err.decode()}")
    return count.value


def available() -> bool:
    """Whether the kernel can run here (a Hopper GPU and its library built or buildable)."""
    return torch.cuda.is_available() and sm90.wgmma.load()


def takes(w: PackedWeight, m: int, dtype: torch.dtype) -> bool:
    """Whether m tokens of `dtype` on this packed weight fit the kernel: 4-bit codes in the kernel layout, bf16,
    groups a multiple of 64 (or per channel), 1 <= m <= 128."""
    return (w.num_bits == 4 and w.qweight is not None and dtype == torch.bfloat16 and 1 <= m <= TILES[-1]
            and (w.group_size <= 0 or w.group_size % CHUNK_K == 0))


def takes_rows(weight: torch.Tensor, scale: torch.Tensor, m: int, dtype: torch.dtype, blocks: bool = False) -> bool:
    """Whether m tokens of `dtype` fit the kernel on 8-bit row-major codes: weight int8 / float8_e4m3fn / e5m2 [N, K],
    contiguous, K % 16 == 0; scale one per output channel or one per tensor, or with `blocks` (E4M3 only) one per
    128 x 128 block [ceil(N / 128), ceil(K / 128)]; bf16; 1 <= m <= 128."""
    if not (weight.dtype in ROWS_KINDS and weight.dim() == 2 and weight.is_contiguous() and weight.shape[1] % 16 == 0
            and dtype == torch.bfloat16 and 1 <= m <= TILES[-1]):
        return False
    n, k = weight.shape
    if blocks:
        return weight.dtype == torch.float8_e4m3fn and tuple(scale.shape) == (-(-n // BLOCK), -(-k // BLOCK))
    return scale.numel() in (1, n)


def parse_plan(text: str) -> Plan | None:
    """QTOOL_WGMMA_PLAN's value ("" for none) -> a Plan."""
    if not text.strip():
        return None
    try:
        tile, warpgroups, split = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"QTOOL_WGMMA_PLAN={text!r}: expected 'tile,warpgroups,split', e.g. '64,2,4'") from None
    if tile not in TILES or warpgroups not in WARPGROUPS or not 1 <= split <= MAX_SPLIT or (tile, warpgroups) == (128, 4):
        raise ValueError(f"QTOOL_WGMMA_PLAN={text!r}: tile in {TILES}, warpgroups in {WARPGROUPS} (not 4 at tile 128), "
                         f"split 1..{MAX_SPLIT}")
    return Plan(tile, warpgroups, split)


FORCED = parse_plan(os.environ.get("QTOOL_WGMMA_PLAN", ""))


def names_kernel(route) -> bool:
    """Whether a measured route of tuning.py (a string, or a schedule dict of the mixed GEMM) names this kernel."""
    return isinstance(route, str) and route.split()[0] == "wgmma"


def for_weight(route: str, asymmetric: bool, m: int | None = None) -> str:
    """A measured route naming this kernel, made fit for a weight with or without zero points and (given m) for m
    tokens. The tall tile's cells were measured on symmetric weights, and zero points double its lane rings: the
    cells' schedules then no longer fit one wave (session 70, H100: dev/wgmma_ab.py's occupancy filter dropped `w1s8t`
    and `w1s3t` for asymmetric weights, which ran 1.24-1.30x bf16 at 16 tokens where the plan ran 1.69-1.83x), so an
    asymmetric weight takes the plan ("wgmma") there. The post-scale form's occupancy is set by its registers, the same
    with zero points, so its cells hold for both. A form whose kernel lacks m's token tile (a cell met past its row's
    last batch) gives way to the same schedule's plain kernel, and a schedule the tile lacks to the plan: the route
    stays one `route_plan` accepts. A wave check per call would need the occupancy query, a ctypes call, on the
    traced route."""
    words = route.split()
    if len(words) not in (3, 4):
        return route
    if words[3:] == ["tall"] and asymmetric:
        return "wgmma"
    tile = None if m is None else next((t for t in TILES if t >= m), None)
    if tile is None:
        return route
    wg = int(words[1].removeprefix("w"))
    if (tile, wg) == (128, 4):
        return "wgmma"
    if words[3:] == ["tall"] and not takes_tall(tile, wg) or words[3:] == ["post"] and not takes_post(tile, wg):
        return " ".join(words[:3])
    return route


@functools.lru_cache(maxsize=4096)  # on every eager call's path: parsed once per route, batch and weight
def route_plan(route: str, m: int, k_pad: int) -> Plan | None:
    """A measured route of tuning.py naming this kernel -> the schedule for m tokens: "wgmma" None (the plan's),
    "wgmma w1 s6" one warpgroup, split 6 (at most one split per 64-k chunk), the token tile holding m; "wgmma w1 s6
    tall" the tall tile, "wgmma w1 s2 post" the post-scale form."""
    words = route.split()
    if words[0] != "wgmma" or len(words) not in (1, 3, 4) or m > TILES[-1] or words[3:] not in ([], ["tall"], ["post"]):
        raise ValueError(f"not a wgmma route for {m} tokens: {route!r}")
    if len(words) == 1:
        return None
    wg, split = int(words[1].removeprefix("w")), int(words[2].removeprefix("s"))
    tall, post = words[3:] == ["tall"], words[3:] == ["post"]
    tile = next(t for t in TILES if t >= m)
    if wg not in WARPGROUPS or (tile, wg) == (128, 4) or not 1 <= split <= MAX_SPLIT:
        raise ValueError(f"wgmma route {route!r}: warpgroups in {WARPGROUPS} (not 4 at 128 tokens), split 1..8")
    if tall and not takes_tall(tile, wg):
        raise ValueError(f"wgmma route {route!r}: the tall tile takes <= 64 tokens and 1 or 2 warpgroups")
    if post and not takes_post(tile, wg):
        raise ValueError(f"wgmma route {route!r}: the post-scale form takes <= 32 tokens and 1 or 2 warpgroups")
    return Plan(tile, wg, min(split, k_pad // CHUNK_K), tall, post)


def parse_tokens(text: str, name: str = "QTOOL_WGMMA_TOKENS") -> tuple[int, int]:
    """The value of the switch `name` -> (lo, hi), the tokens (inclusive) the dispatcher routes here; "0,0": none."""
    try:
        lo, hi = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected 'lo,hi', e.g. '17,128' ('0,0': off)") from None
    if not (0 <= lo <= hi <= TILES[-1]):
        raise ValueError(f"{name}={text!r}: need 0 <= lo <= hi <= {TILES[-1]}")
    return lo, hi


# 8-bit row-major layers (W8A16 `pack_rows`; W8A8 int8 / E4M3 / E5M2 per channel or tensor, fp8-block) at these tokens
# (inclusive) take w8_mm with 16-bit activations (weight_only._rows_linear, scaled_mm.w8a8_linear_cuda), after
# w8_gemv's tokens.
# QTOOL_WGMMA_W8_TOKENS="lo,hi" ("0,0": off, the default until measured on the device).
W8_TOKENS = parse_tokens(os.environ.get("QTOOL_WGMMA_W8_TOKENS", "0,0"), "QTOOL_WGMMA_W8_TOKENS")


def routes_rows(weight: torch.Tensor, scale: torch.Tensor, m: int, dtype: torch.dtype, blocks: bool = False) -> bool:
    """Whether the dispatchers send m tokens on these 8-bit rows here (W8_TOKENS, `takes_rows`, available)."""
    return W8_TOKENS[0] <= m <= W8_TOKENS[1] and takes_rows(weight, scale, m, dtype, blocks) and available()


MIN_SPLIT_CHUNKS = 8  # chunks (512 k) each split keeps at least: below, the prologue and the cluster's sum dominate


def plan(m: int, n_pad: int, k_pad: int, sms: int, capacity: Callable[[int, int, int], int] | None = None) -> Plan:
    """The smallest token tile holding m; of the (warpgroups, split) whose grid fits in one wave (`capacity(tile,
    warpgroups, split)`: clusters the GPU holds at once; by default one CTA an SM), the one that spreads over the
    most SMs, then runs the most warpgroups at once (the mainloop is a latency chain per warpgroup), then reads
    the activations the fewest times (more rows a CTA). Each split keeps MIN_SPLIT_CHUNKS chunks."""
    if FORCED is not None:
        return FORCED
    tile = next(t for t in TILES if t >= m)
    capacity = capacity or (lambda t, wg, split: sms // split)
    best, best_score = Plan(tile, 2 if tile == 128 else 4, 1), None  # none fits: the fewest CTAs
    for wg in WARPGROUPS:
        if (tile, wg) == (128, 4):
            continue
        row_tiles = -(-n_pad // (64 * wg))
        for split in range(1, min(MAX_SPLIT, max(1, k_pad // CHUNK_K // MIN_SPLIT_CHUNKS)) + 1):
            if row_tiles > capacity(tile, wg, split):
                continue  # a second wave: its clusters wait for the first's
            score = (min(row_tiles * split, sms), row_tiles * split * wg, wg)
            if best_score is None or score > best_score:
                best, best_score = Plan(tile, wg, split), score
    return best


def device_capacity(device: int, kind: int = 0, asym: bool = False, stages: int = 0,
                    tall: bool = False, post: bool = False) -> Callable[[int, int, int], int]:
    """`plan`'s capacity on GPU `device` for this weight kind, stage count and form, by the occupancy API."""
    return lambda tile, wg, split: max_clusters(device, tile, wg, split, kind, asym, stages, tall, post)


@functools.lru_cache(maxsize=4096)
def device_plan(m: int, n_pad: int, k_pad: int, device: int, kind: int = 0, asym: bool = False,
                stages: int = 0) -> Plan:
    """`plan` on GPU `device` (its SMs, its clusters' capacity), once per shape and m: a call's host time stays a
    dictionary lookup. Run inside the ops (not while torch.compile traces: the capacity is a ctypes call)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return plan(m, n_pad, k_pad, sms, device_capacity(device, kind, asym, stages))


def _run(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
         bias: torch.Tensor | None, n: int, n_pad: int, k_pad: int, group: int, kind: int, scale_stride: int,
         tile: int, warpgroups: int, split: int, tall: bool = False, post: bool = False) -> torch.Tensor:
    m, k = x.shape
    if tile == 0:  # the plan's schedule
        tile, warpgroups, split, tall, post = astuple(device_plan(m, n_pad, k_pad, x.device.index or 0, kind,
                                                            zero is not None, STAGES))
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    args = _Args(weight.data_ptr(), scale.data_ptr(), None if zero is None else zero.data_ptr(),
                 None if bias is None else bias.data_ptr(), x.data_ptr(), y.data_ptr(), m, n, n_pad, k, k_pad,
                 group, tile, warpgroups, split, 1 | launch_bits(tall, post), kind, scale_stride, STAGES)
    err = _function()(ctypes.byref(args), torch.cuda.current_stream(x.device).cuda_stream)
    if err is not None:
        raise RuntimeError(f"wgmma {'w4' if kind == 0 else 'w8'}_mm: {err.decode()} (m={m}, n={n}, k={k}, "
                           f"group={group}, tile={tile}, warpgroups={warpgroups}, split={split}, tall={tall}, post={post})")
    return y


def _run_w4(x, qweight, scale, zero, bias, n, group, tile, warpgroups, split, tall=False, post=False) -> torch.Tensor:
    k_pad = qweight.shape[1] * CHUNK_K
    return _run(x, qweight, scale, zero, bias, n, qweight.shape[0] * 16, k_pad, group if group > 0 else k_pad, 0, 1,
                tile, warpgroups, split, tall, post)


def _run_w8(x, weight, scale, bias, tile, warpgroups, split) -> torch.Tensor:
    n, k = weight.shape
    blocks = scale.dim() == 2  # [ceil(N / 128), ceil(K / 128)]: fp8-block; else [N] or [1]
    return _run(x, weight, scale, None, bias, n, -(-n // 16) * 16, -(-k // CHUNK_K) * CHUNK_K, 0,
                BLOCKS_KIND if blocks else ROWS_KINDS[weight.dtype], scale.shape[1] if blocks else int(scale.numel() != 1),
                tile, warpgroups, split)


@torch.library.custom_op("qtool_cuda_wgmma::w4_mm", mutates_args=())
def w4_mm(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
          bias: torch.Tensor | None, n: int, group: int, tile: int, warpgroups: int, split: int,
          tall: bool = False, post: bool = False) -> torch.Tensor:
    """y [m, n] bf16 = x [m, K] bf16 . dequant(qweight)^T (+ bias float32 [n]); qweight int32 [N_pad / 16,
    K_pad / 64, 32, 4] (the int4 kernel layout), scale / zero float32 [G, N_pad]; group: k per scale (<= 0:
    per channel); the schedule as in `Plan` (tile 0: the plan's, `device_plan`)."""
    return _run_w4(x, qweight, scale, zero, bias, n, group, tile, warpgroups, split, tall, post)


@w4_mm.register_fake
def _(x, qweight, scale, zero, bias, n, group, tile, warpgroups, split, tall=False, post=False):
    return x.new_empty(x.shape[0], n)


@torch.library.custom_op("qtool_cuda_wgmma::w8_mm", mutates_args=())
def w8_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, tile: int,
          warpgroups: int, split: int) -> torch.Tensor:
    """y [m, N] bf16 = x [m, K] bf16 . (weight * scale)^T (+ bias float32 [N]); weight int8 / float8 [N, K]
    row-major (K % 16 == 0), scale float32 [N] or [1], or for E4M3 [ceil(N / 128), ceil(K / 128)] (one per 128 x 128
    block), contiguous; the schedule as in `Plan` (tile 0: the plan's, `device_plan`)."""
    return _run_w8(x, weight, scale, bias, tile, warpgroups, split)


@w8_mm.register_fake
def _(x, weight, scale, bias, tile, warpgroups, split):
    return x.new_empty(x.shape[0], weight.shape[0])


def wgmma_linear(x2: torch.Tensor, w: PackedWeight, bias: torch.Tensor | None,
                 schedule: Plan | None = None) -> torch.Tensor:
    """x2 [m, K_pad] bf16, contiguous -> [m, out_features] bf16 (+ bias float32); `schedule` None: the plan's."""
    s = schedule or Plan(0, 0, 0)
    args = (x2, w.qweight, w.scale, w.zero, bias, w.out_features, w.group_size, s.tile, s.warpgroups, s.split, s.tall,
            s.post)
    if not torch.compiler.is_compiling():  # eager: the ctypes call without the custom op's dispatch (host time)
        return _run_w4(*args)
    return torch.ops.qtool_cuda_wgmma.w4_mm(*args)


def rows_linear(x2: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                schedule: Plan | None = None, blocks: bool = False) -> torch.Tensor:
    """x2 [m, K] bf16 times 8-bit codes weight [N, K] (`takes_rows`) scaled per channel (scale [N], [N, 1], [1, N])
    or per tensor ([1]), or with `blocks` per 128 x 128 block ([ceil(N / 128), ceil(K / 128)]) -> [m, N] bf16
    (+ bias [N], added in float32)."""
    s = schedule or Plan(0, 0, 0)  # the plan's, chosen in the op
    x2 = x2.contiguous()
    if not torch.compiler.is_compiling() and x2.data_ptr() % 16:
        x2 = x2.clone()
    scale = scale if blocks else scale.reshape(-1)
    scale = scale if scale.dtype == torch.float32 and scale.is_contiguous() else scale.float().contiguous()
    bias = None if bias is None else bias if bias.dtype == torch.float32 else bias.float()
    args = (x2, weight, scale, bias, s.tile, s.warpgroups, s.split)
    if not torch.compiler.is_compiling():
        return _run_w8(*args)
    return torch.ops.qtool_cuda_wgmma.w8_mm(*args)
