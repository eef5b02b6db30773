"""Decode attention on qtool's kernel: one query token per sequence over a KV cache, the query heads of each KV head
together (`qtool_cuda::decode_attention`, csrc/decode_attention.cu), or its PyTorch reference (the CPU path and the
test oracle). quantize/attention.py calls it from a compiled decode step.

Both compute scores, softmax and the weighted sum in float32 and round once. A masked position contributes nothing,
even where the cache holds values that are not finite there; a sequence with every position masked gets zeros
(SDPA gives NaN there).
"""

from __future__ import annotations

import os

import torch

from . import build
from .layout import KERNEL_DTYPES
from .reference import causal_mask, rotate_and_write
from .reference import decode_attention as reference  # the CPU path and the test oracle

HEAD_DIMS = (64, 128)  # what the kernel takes
MAX_GROUP = 16  # query heads per KV head (csrc/attention.h, kDecodeAttentionMaxGroup)
# The kernel's launch with PDL (pdl.cuh): it waits for the cache write on the device and lets the output projection's
# GEMV launch at once.
PDL = True
# Which kernel (csrc/attention.h, variant): 0 the build's default (QTOOL_DECODE_ATTENTION_KERNEL, else the online
# kernel), 1 the online kernel, 2 the two-pass kernel. The two-pass kernel is the default: session 32 (H200,
# dev/attn_probe.py) timed it 4-10% faster than the online one at every batch and length (batch 1, 161 positions
# 7.1 against 7.7 us; cuDNN's SDPA 16.5). A/B runs set it per process (dev/prefetch_sweep.py --attention).
VARIANT = 2
# rope_decode_attention on the kernel that also rotates and writes the new rows (the two-pass kernel in its
# rotary-and-write mode); QTOOL_ROPE_KERNEL=0: PyTorch ops for those, then the kernel (an A/B)
ROPE_KERNEL = os.environ.get("QTOOL_ROPE_KERNEL", "1") != "0"
# The model's decode step takes that mode from this batch up (quantize/attention.py), PyTorch ops below it. Session 50
# (H100, 8B W4A16, two alternated A/Bs): batch 16 steps 4624-4631 -> 4802-4807 tokens/s with the mode (PyTorch ops:
# 4670); batch 1 385-390 -> 382-384 (ops: 390). Batches 2-15 and 32+ not yet measured.
ROPE_MIN_BATCH = int(os.environ.get("QTOOL_ROPE_MIN_BATCH", "16"))


def preferred(batch: int, kv_heads: int, length: int) -> bool:
    """Whether the kernel beats SDPA on the packed query here, as measured (session 30, H200, 32 query heads on 8 KV
    heads, head size 128, dev/attn_probe.py): it won everywhere at batch 1 (161 positions 7.8 us against cuDNN's
    16.5, 8192 positions 37 against 171) and where the pieces of <= 256 positions fill the SMs once (batch 16, 161
    positions: 10.0 against 23.0), and lost where they take waves (batch 16, 512 positions: 30.7 against 26.1; 2048:
    100 against 57). 132 is the H100 / H200 SM count."""
    pairs = batch * kv_heads
    return pairs <= 64 or pairs * -(-length // 256) <= 132


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether the kernel takes these tensors (shapes as in reference.decode_attention); where not, the caller runs
    the reference or SDPA."""
    if not (q.is_cuda and q.dtype in KERNEL_DTYPES and k.dtype == q.dtype and v.dtype == q.dtype):
        return False
    if q.dim() != 3 or k.dim() != 4 or v.shape != k.shape or v.stride() != k.stride() or k.shape[2] == 0:
        return False
    if q.shape[-1] not in HEAD_DIMS or k.shape[-1] != q.shape[-1] or q.stride(-1) != 1:
        return False
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] or q.shape[1] // k.shape[1] > MAX_GROUP:
        return False
    if k.stride(-1) != 1 or any(s % 8 for s in k.stride()[:3]):
        return False
    if not torch.compiler.is_compiling() and (k.data_ptr() % 16 or v.data_ptr() % 16):  # (a cache's own buffers are)
        return False
    return mask is None or (mask.dtype == torch.bool and mask.shape == (q.shape[0], k.shape[2]))


def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
                     splits: int = 0, variant: int | None = None) -> torch.Tensor | None:
    """The kernel's output (shapes as in reference.decode_attention), or None where it does not take these tensors or
    the extension is not loaded (it never builds it): for callers with their own fallback (quantize/attention.py)."""
    if not (build.loaded() and supported(q, k, v, mask)):
        return None
    return _run(q, k, v, mask, scale, splits, variant)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float,
                     splits: int = 0, variant: int | None = None) -> torch.Tensor:
    """Shapes as in reference.decode_attention; the kernel where `supported` and the extension is loaded (built on
    first eager use), else the reference. splits: pieces of the cache per (sequence, KV head) (0: the kernel's
    choice); variant: the kernel (None: VARIANT); both for A/B runs."""
    if supported(q, k, v, mask) and (build.loaded() if torch.compiler.is_compiling() else build.load_extension()):
        return _run(q, k, v, mask, scale, splits, variant)
    return reference(q, k, v, mask, scale)


def _run(q, k, v, mask, scale: float, splits: int, variant: int | None) -> torch.Tensor:
    return torch.ops.qtool_cuda.decode_attention(q, k, v, mask, float(scale), int(splits), int(PDL),
                                                 VARIANT if variant is None else int(variant))


def rope_supported(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   slot: torch.Tensor, mask: torch.Tensor | None, heads: int) -> bool:
    """Whether the rotary-and-write kernel takes these tensors (shapes as in reference.rope_decode_attention)."""
    if not (qkv.is_cuda and qkv.dim() == 2 and k.dim() == 4 and qkv.stride(1) == 1):
        return False
    batch, kv_heads, dim = qkv.shape[0], k.shape[1], k.shape[3]
    if qkv.shape[1] != (heads + 2 * kv_heads) * dim or slot.dtype != torch.int64 or slot.numel() != 1:
        return False
    if any(t.shape != (batch, dim) or t.dtype != qkv.dtype or t.stride(1) != 1 for t in (cos, sin)):
        return False
    q = qkv[:, :heads * dim].view(batch, heads, dim)  # what the attention reads, for the shared checks
    return cos.stride() == sin.stride() and slot.device == qkv.device and supported(q, k, v, mask)


def rope_kernel_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          slot: torch.Tensor, mask: torch.Tensor | None, scale: float,
                          heads: int) -> torch.Tensor | None:
    """The rotary-and-write kernel's output (shapes as in reference.rope_decode_attention; slot must be a row of the
    cache): the query rows rotated as they are staged, the new key rotated and both new rows written by the block
    whose piece holds them. None (nothing written) where ROPE_KERNEL is off, the kernel does not take the tensors
    or the extension is not loaded (it never builds it): for callers with their own fallback."""
    if not (ROPE_KERNEL and build.loaded() and rope_supported(qkv, cos, sin, k, v, slot, mask, heads)):
        return None
    return torch.ops.qtool_cuda.rope_decode_attention(qkv, cos, sin, k, v, slot, mask, float(scale), int(heads), 0,
                                                      int(PDL))


def rope_decode_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          slot: torch.Tensor, mask: torch.Tensor | None, scale: float, heads: int) -> torch.Tensor:
    """Rotary, cache write and attention for one token (shapes and result as reference.rope_decode_attention, the
    test oracle): `rope_kernel_attention` where it runs (building the extension on first eager use), else
    `rotate_and_write`, then `decode_attention`."""
    if not torch.compiler.is_compiling() and rope_supported(qkv, cos, sin, k, v, slot, mask, heads):
        build.load_extension()  # eagerly, built on first use as decode_attention builds it
    out = rope_kernel_attention(qkv, cos, sin, k, v, slot, mask, scale, heads)
    if out is not None:
        return out
    q = rotate_and_write(qkv, cos, sin, k, v, slot, heads)
    return decode_attention(q, k, v, causal_mask(mask, slot, k.shape[0], k.shape[2]), scale)
