"""Decode attention without copies of the KV cache: grouped-query attention for one query token on the KV heads.

A compiled decode step with a static cache calls transformers' SDPA attention with a mask, and there transformers
expands each layer's cached keys and values to every query head (`repeat_kv`) before SDPA, because SDPA's fused CUDA
kernels take no mask with `enable_gqa`. Those are copies of the whole cache, twice per layer and step: on the 8B
shape (32 query heads on 8 KV heads) four times the cache's bytes written, and four of the ~15 kernels of a block's
step outside the GEMVs (session 24's profile: 169 us of a 2775 us step at a 160-token cache; they grow with the
context). For one query token transformers itself packs the query instead (`pack_gqa`), but only eagerly.

`decode_attention` does that packing under torch.compile too: query [B, H, 1, D] becomes [B, KV, H / KV, D], the
query heads of a group as the rows of one SDPA over that group's cached keys and values (not copied), and the mask
[B, 1, 1, L], shared by all heads, broadcasts over the rows. The same scores and the same softmax: the outputs
equal transformers' up to the order of float reductions. Anything else (prefill, a per-head mask, position bias,
soft-capping, attention sinks) goes to transformers' own `sdpa_attention_forward`.

With BACKEND "kernel" the packed query goes to qtool's decode attention kernel instead (qtool_kernels/attention.py:
one block per KV head and piece of the cache, no memset, ~2x cuDNN's SDPA at the 8B decode's shapes) where it takes the
shapes and was measured faster (`attention.preferred`), and SDPA keeps the rest.

It is registered with transformers' `AttentionInterface` (and the SDPA mask with `AttentionMaskInterface`) under
NAME, and a model opts in by its config's attention implementation: no model code is replaced or forked.
`qtool bench` sets it with --fuse (the quantized model) and --fuse-baseline (the bf16 one), like the other fusions.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .rotary import PendingStep, take_step

NAME = "qtool_sdpa"
# Where the packed query meets qtool's decode attention kernel (qtool_kernels/attention.py): "kernel" runs it on CUDA
# where it takes the shapes and was measured faster, "sdpa" keeps SDPA (cuDNN's flash kernel on Hopper) everywhere.
# QTOOL_DECODE_ATTENTION overrides. "kernel" since session 32: `qtool bench llama-8b --random-weights` decode steps
# (H200, bf16 in the same process) w8a8-int8 1.58x -> 1.64x at batch 1 (two runs) and 1.55x -> 1.61x at 16, fp8
# 1.64x / 1.66x, fp8-block 1.58x / 1.61x, w4a16 2.05x -> 2.17x / 1.74x.
BACKEND = os.environ.get("QTOOL_DECODE_ATTENTION", "kernel")
# keyword arguments that change the attention's arithmetic beyond scores, mask and softmax: transformers' path
_SPECIAL = ("position_bias", "softcap", "s_aux", "sinks")


def decode_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Attention output [B, 1, H, D] for query [B, H, 1, D] over key, value [B, KV, L, D] (H a multiple of KV) and
    a mask [B, 1, 1, L] or None; transformers' SDPA attention for everything else (the module docstring)."""
    step = take_step(module)
    if step is not None:  # this layer left its rotary and cache write to the attention (quantize/rotary.py)
        out, query, attention_mask = _rope_attention(step, key, value, attention_mask, scaling, query.shape)
        if out is not None:
            return out, None
    batch, heads, q_len, dim = query.shape
    groups = getattr(module, "num_key_value_groups", 1)
    special = any(kwargs.get(k) is not None for k in _SPECIAL)
    shared_mask = attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1:3] == (1, 1))
    if q_len != 1 or groups == 1 or special or not shared_mask or key.shape[1] * groups != heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if BACKEND == "kernel" and not dropout:
        out = _kernel_attention(query, key, value, attention_mask, scaling)
        if out is not None:
            return out, None
    packed = query.reshape(batch, heads // groups, groups, dim)  # [B, KV, H / KV, D]: a group's heads as rows
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling)
    return out.reshape(batch, 1, heads, value.shape[-1]), None


def _kernel_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                      scaling: float | None) -> torch.Tensor | None:
    """[B, 1, H, D] from qtool's kernel for query [B, H, 1, D], key and value [B, KV, L, D] and a bool mask
    [B, 1, 1, L] or None; None where the kernel does not take them (a float mask, another head size)."""
    from qtool_kernels import attention

    takes, flat_mask = _kernel_mask(mask, query.shape[0], key.shape[2])
    if not takes or not attention.preferred(query.shape[0], key.shape[1], key.shape[2]):
        return None
    q = query[:, :, 0, :]  # [B, H, D], a view
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = attention.kernel_attention(q, key, value, flat_mask, scale)  # (never builds the extension from here)
    return None if out is None else out.reshape(query.shape[0], 1, query.shape[1], value.shape[-1])


def _kernel_mask(mask: torch.Tensor | None, batch: int, length: int) -> tuple[bool, torch.Tensor | None]:
    """(whether qtool's kernel takes `mask`, its [B, L] view): a bool [B, 1, 1, L] mask or None does."""
    if mask is None:
        return True, None
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[-1] != length:
        return False, None
    return True, mask[:, 0, 0, :].expand(batch, length)


def _rope_attention(step: PendingStep, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                    scaling: float | None, query_shape: torch.Size) -> tuple:
    """A layer's deferred step (rotary.take_step) over the caches key, value [B, KV, L, D], whose row `step.slot` is
    not yet written, and transformers' mask [B, 1, 1, L] (ignored where step.causal_only):
    (output [B, 1, H, D], None, None) from the rotary-and-write kernel where the attention kernel is preferred, takes
    the tensors and the batch reaches attention.ROPE_MIN_BATCH; else (None, rotated query [B, H, 1, D], mask) with
    the row written, for the plain path."""
    from qtool_kernels import attention

    batch, heads, _, dim = query_shape
    length = key.shape[2]
    cos, sin = step.cos.expand(batch, -1), step.sin.expand(batch, -1)  # one position for the batch: stride 0
    mask = None if step.causal_only else mask
    takes, flat = _kernel_mask(mask, batch, length)
    if (BACKEND == "kernel" and takes and batch >= attention.ROPE_MIN_BATCH
            and attention.preferred(batch, key.shape[1], length)):
        scale = scaling if scaling is not None else dim ** -0.5
        out = attention.rope_kernel_attention(step.qkv, cos, sin, key, value, step.slot, flat, scale, heads)
        if out is not None:  # (rows after the slot bounded by the kernel)
            return out.reshape(batch, 1, heads, value.shape[-1]), None, None
    query = attention.rotate_and_write(step.qkv, cos, sin, key, value, step.slot, heads)[:, :, None, :]
    if mask is None:  # the rows up to the slot, which transformers' mask would have said
        mask = attention.causal_mask(None, step.slot, batch, length)[:, None, None, :]
    return None, query, mask


def register() -> None:
    """Make NAME an attention implementation transformers knows (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def use_decode_attention(model: nn.Module) -> bool:
    """Switch `model` from transformers' SDPA attention to `decode_attention`; False (nothing changed) when the
    model runs another implementation (eager, flash attention, flex) or has no grouped KV heads."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    heads, kv_heads = getattr(config, "num_attention_heads", 0), getattr(config, "num_key_value_heads", None)
    if not kv_heads or heads == kv_heads:
        return False
    register()
    config._attn_implementation = NAME
    return True
