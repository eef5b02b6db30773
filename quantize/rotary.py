"""The rotary embedding and the KV-cache write inside the decode attention: one launch per layer and step where a
compiled transformers step runs the rotary of q and k, the cache write and the attention as separate kernels.

Why: in the 8B W4A16 decode step at batch 1, the rotary + cache-write kernels took 150-220 us of a ~2.2 ms step
(kernels/NOTES.md, sessions 30 and 32), the largest piece outside the GEMVs, lm_head and attention.
Measured (session 50, H100, `qtool bench`): the batch-16 step gained 3.7%, the batch-1 step nothing (1% lost on
the kernel's mode, none on PyTorch ops): under PDL those kernels' spans overlap their neighbours, so little of the
150-220 us was on the step's critical path at batch 1.

How, without forking transformers' model code (three hooks, each a public object qtool already owns or may wrap):
- the fused q/k/v projection (quantize/fusion.py) keeps its output [B, 1, (H + 2 KV) D], before any rotation, on
  its group (`_FusedGroup.output`) for the attention to take;
- the model's rotary module is wrapped (`RotaryStash`) to keep the step's (cos, sin) [B, 1, D] on a shared state;
- each static cache layer is switched to `DeferredLayer`, whose update for one token returns the cache buffers
  without writing them and leaves the row (`slot`) to write on the shared state.
The attention function (quantize/attention.py) then finds the pending step for its layer and, where qtool's
attention kernel runs, calls its rotary-and-write mode on the raw projection (`qtool_cuda::rope_decode_attention`:
rotate q and k, write k and v at `slot`, attend, in one launch). transformers' own rotation of q and k becomes dead
code in the compiled graph (nothing reads it), so Inductor drops it (checked on the CPU: tests/test_rotary.py).

The write is never skipped: once a layer deferred it, the attention either runs that kernel or rotates and writes
with PyTorch ops (`rotate_and_write`: on the CPU, where the kernel does not take the tensors, below
kernels/attention.py ROPE_MIN_BATCH, with QTOOL_ROPE_KERNEL=0) before attending as usual. Prefill (more than one
token) and every cache other than a static one keep transformers' path. Architectures: those whose attention rotates
the raw projections (`ARCHITECTURES`); Qwen3 normalizes q and k per head before the rotation and is not one of them.

Numerics: the rotation in float32 rounded once, as Inductor computes transformers' formula; eagerly transformers
rounds each product (at most one unit in the last place apart).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
from torch import nn

from .fusion import FusedHead

# `qtool bench` installs it unless QTOOL_ROPE_ATTENTION=0. Session 50 (H100, 8B W4A16; kernels/attention.py
# ROPE_MIN_BATCH): the batch-16 step +3.7% on the kernel's mode, the batch-1 step unchanged on PyTorch ops.
ENABLED = os.environ.get("QTOOL_ROPE_ATTENTION", "1") != "0"
# attention classes whose forward rotates q and k straight from q_proj / k_proj (no per-head norm, full rotary)
ARCHITECTURES = ("LlamaAttention", "MistralAttention", "Qwen2Attention")


class StepState:
    """What the hooks of one model share within a forward pass: the rotary output and the rows to write.

    causal_only: set by a caller that passes no attention mask (no padding, as `qtool bench`'s loop): each sequence
    attends to every row up to the new one, so the attention ignores transformers' mask (whose computation then
    drops out of a compiled step) and the kernel bounds the rows by the slot."""

    def __init__(self) -> None:
        self.cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None
        self.slots: dict[int, torch.Tensor] = {}  # layer index -> [1] int64 cache row
        self.causal_only = False
        self.step_slot: torch.Tensor | None = None  # [1] int64: this step's row, read once by its first layer
        self.pending = 0  # deferring layers yet to update in this step (0: the next update starts a step)


class PendingStep(NamedTuple):
    """One layer's deferred step, for the attention (`take_step`)."""

    qkv: torch.Tensor  # [B, (H + 2 KV) D]: the raw projection
    cos: torch.Tensor  # [B or 1, D]
    sin: torch.Tensor  # [B or 1, D]
    slot: torch.Tensor  # [1] int64: the cache row to write
    causal_only: bool  # StepState.causal_only


class RotaryStash(nn.Module):
    """Wraps a model's rotary module: returns its (cos, sin) and keeps them on the state."""

    def __init__(self, inner: nn.Module, state: StepState) -> None:
        super().__init__()
        self.inner = inner
        self.state = state

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.inner(x, position_ids)
        self.state.cos_sin = (cos, sin)
        self.state.pending = 0  # a new forward pass: its first deferring layer starts the step
        return cos, sin


@functools.cache
def deferred_layer_class() -> type:
    """transformers' StaticLayer with an update that leaves one token's write to the attention (module docstring):
    one class, so a compiled step guards on a single type."""
    from transformers.cache_utils import StaticLayer

    class DeferredLayer(StaticLayer):
        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if key_states.shape[-2] != 1 or not self.is_initialized:  # prefill, first use: transformers' write
                return super().update(key_states, value_states, *args, **kwargs)
            if hasattr(self, "cumulative_length"):  # transformers >= 5.5 counts the rows, per layer
                slot = _advance(self.qtool_state, self)
            else:  # 5.0: the caller's cache_kwargs name the row
                cache_kwargs = args[0] if args and isinstance(args[0], dict) else kwargs.get("cache_kwargs")
                position = cache_kwargs.get("cache_position") if isinstance(cache_kwargs, dict) else None
                if position is None:  # a release that names the row another way: transformers' own write
                    return super().update(key_states, value_states, *args, **kwargs)
                slot = position.reshape(1)
            self.qtool_state.slots[self.qtool_index] = slot
            return self.keys, self.values

    return DeferredLayer


def _advance(state: StepState, layer) -> torch.Tensor:
    """The step's cache row [1] for `layer`. The step's first deferring layer reads it from its own count and
    advances the count of every initialized deferring layer of its cache (`qtool_peers`) in one foreach add: one
    kernel per step where a count read and advanced per layer was one tiny kernel per layer in the compiled step
    (session 50's profile: 32 at ~1.4 us). transformers advances every layer's count once per forward pass, so they
    agree."""
    if state.pending == 0:
        ready = [other for other in layer.qtool_peers if other.is_initialized]
        state.step_slot = layer.cumulative_length.reshape(1).clone()
        torch._foreach_add_([other.cumulative_length for other in ready], 1)
        state.pending = len(ready)
    state.pending -= 1
    return state.step_slot


def defer_cache_writes(cache, state: StepState) -> int:
    """Switch each static layer of `cache` (a transformers StaticCache) to deferred writes; how many were."""
    from transformers.cache_utils import StaticLayer

    peers = []  # shared by the cache's deferring layers: whose counts a step advances (_advance)
    for index, layer in enumerate(getattr(cache, "layers", [])):
        if type(layer) is StaticLayer:
            layer.__class__ = deferred_layer_class()
            layer.qtool_state, layer.qtool_index, layer.qtool_peers = state, index, peers
            peers.append(layer)
    state.pending = 0
    return len(peers)


def install(model: nn.Module) -> StepState | None:
    """Prepare `model` (fused q/k/v, qtool's decode attention) for rotary-and-write in the attention: wrap its rotary
    module and mark each attention that qualifies; the state to hand `defer_cache_writes`, or None (nothing changed)
    where the model has no single rotary module or no qualifying attention."""
    owner = next((m for m in model.modules() if isinstance(getattr(m, "rotary_emb", None), nn.Module)), None)
    if owner is None:
        return None
    state = StepState()
    marked = 0
    for module in model.modules():
        q_proj = getattr(module, "q_proj", None)
        if type(module).__name__ in ARCHITECTURES and isinstance(q_proj, FusedHead) and _qualifies(module, q_proj):
            q_proj.group.keep_output = True
            module.qtool_rope = state
            marked += 1
    if not marked:
        return None
    owner.rotary_emb = RotaryStash(owner.rotary_emb, state)
    return state


def state_of(model: nn.Module) -> StepState | None:
    """The state `install` left on `model` (its rotary module's stash), or None where it did not run."""
    return next((m.state for m in model.modules() if isinstance(m, RotaryStash)), None)


def _qualifies(module: nn.Module, q_proj: FusedHead) -> bool:
    """Whether the fused group is exactly [q | k | v] with the attention's head counts."""
    config = module.config
    dim = getattr(module, "head_dim", None)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    return dim is not None and q_proj.group.sizes == (heads * dim, kv_heads * dim, kv_heads * dim)


def take_step(module: nn.Module) -> PendingStep | None:
    """This attention's pending step where its layer deferred the write in this step, taken off the state; else
    None."""
    state = getattr(module, "qtool_rope", None)
    if state is None:
        return None
    group = module.q_proj.group
    qkv, group.output = group.output, None  # taken on every path: a prefill's projection is not held past its layer
    if module.layer_idx not in state.slots:
        return None
    slot = state.slots.pop(module.layer_idx)
    if qkv is None or state.cos_sin is None:  # a caller that skipped the fused q/k/v or the rotary module
        raise RuntimeError(f"layer {module.layer_idx} deferred its cache write, but its q/k/v projection or the "
                           "rotary embedding of this step was not seen (quantize/rotary.py)")
    cos, sin = state.cos_sin
    return PendingStep(qkv.reshape(qkv.shape[0], -1), cos[:, -1], sin[:, -1], slot, state.causal_only)
