"""The L2 prefetch chain of a decode step: each GEMV pulls the start of the next layer's weight into L2.

Between two GEMVs of a decode step run small kernels (RMSNorm, rotary and the cache write, attention,
SiLU-and-multiply) that leave DRAM idle. Our GEMVs (`wo_gemv` for weight-only layers, `w8_gemv` for W8A8
layers and 8-bit row-major weight-only ones) take a `prefetch` tensor and, once a block's own weight loads have
landed, ask for its slice of that tensor to be brought into L2 (`cp.async.bulk.prefetch.L2`, csrc/wo_common.cuh),
so the next GEMV starts with part of its weight on chip. The chain follows the order a forward pass calls the
layers and wraps from the last to the first (the next token starts there). Other kernels ignore the hint.

How much: `QTOOL_PREFETCH_MB` (default DEFAULT_PREFETCH_MB) of each next weight; the link is a view of that many
bytes, so the kernels need no setting of their own. Measured: on the H100 (BENCHMARKS.md, third session) 4 MB
beat 0, 8 and 24 in an 8B W4A16 decode (+2%, near the spread); on the H200 (session 21, one process, the same
model fused) every size lost, the more the larger: batch-1 steps 1.98x bf16 without, 1.95x at 4 MB, 1.87x at 16,
1.86x at 32 (batch 16, whose layers run the GEMM, not the GEMV, flat at 1.49-1.50x). So it is off by default.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn as nn

from .linear import QuantLinear, prepared_weight

PREFETCH_MB_ENV = "QTOOL_PREFETCH_MB"
DEFAULT_PREFETCH_MB = 0.0
_CODE_DTYPES = (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)


def prefetch_bytes() -> int:
    """Bytes of the next weight each GEMV pulls into L2: QTOOL_PREFETCH_MB (MiB, >= 0; 0 turns it off)."""
    raw = os.environ.get(PREFETCH_MB_ENV, "").strip()
    try:
        mib = float(raw) if raw else DEFAULT_PREFETCH_MB
    except ValueError:
        raise ValueError(f"{PREFETCH_MB_ENV}={raw!r}: expected a number of MiB >= 0") from None
    if not mib >= 0:  # also refuses nan
        raise ValueError(f"{PREFETCH_MB_ENV}={raw!r}: expected a number of MiB >= 0")
    return int(mib * (1 << 20)) & ~15  # the bulk prefetch moves multiples of 16 bytes


def call_order(model: nn.Module, forward: Callable[[], object]) -> list[QuantLinear]:
    """The QuantLinear layers of `model` in the order `forward()` first calls them."""
    order: dict[int, QuantLinear] = {}

    def record(module: nn.Module, args: tuple) -> None:
        order.setdefault(id(module), module)

    handles = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, QuantLinear)]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return list(order.values())


def link_weight_prefetch(model: nn.Module, forward: Callable[[], object], max_bytes: int | None = None) -> int:
    """Run `forward()` (one eager pass, which also prepares the CUDA layouts) and chain the layers it
    called so each GEMV prefetches the next one's weight into L2 (`link_prefetch`).
    Returns the number of linked layers (0 off CUDA)."""
    return link_prefetch(call_order(model, forward), max_bytes)


def prefetch_source(layer: QuantLinear) -> torch.Tensor | None:
    """The weight tensor `layer`'s CUDA GEMV streams (what a prefetch of it should pull), or None when the
    layer has none: a W8A8 layer's 8-bit codes [N, K], a prepared weight-only layer's packed codes."""
    acts = layer.scheme.input_activations
    if acts is not None:
        w = layer.weight
        usable = not acts.binary and w.is_cuda and w.dtype in _CODE_DTYPES and w.is_contiguous()
        return w if usable else None
    packed = prepared_weight(layer)
    return None if packed is None else packed.codes_tensor


def link_prefetch(layers: list[QuantLinear], max_bytes: int | None = None) -> int:
    """Make each of `layers` (QuantLinears in the order a forward pass calls them) prefetch the first
    `max_bytes` (default `prefetch_bytes()`) of the next one's weight into L2 during its GEMV, and the
    last one the first's. Layers without a CUDA GEMV weight are skipped; with max_bytes 0 every link is
    removed. Returns the number of links.

    The link is a plain attribute (a byte view of the next weight, not a buffer), so state_dict and .to()
    are unchanged; run after one eager forward has prepared the layers (prepare_for_cuda), and again after
    moving or reloading them: a link keeps the weight it points to alive.
    """
    budget = prefetch_bytes() if max_bytes is None else max_bytes
    ready = [(layer, src) for layer in layers if (src := prefetch_source(layer)) is not None]
    for layer in layers:
        layer.__dict__.pop("cuda_prefetch", None)
    if len(ready) < 2 or budget <= 0:
        return 0
    for (layer, _), (_, src) in zip(ready, ready[1:] + ready[:1], strict=True):
        layer.cuda_prefetch = src.reshape(-1).view(torch.uint8)[:budget]
    return len(ready)
