"""One decoder block as methods see it (`BlockContext`: its cached inputs, passes over them, hooks
that capture linears' inputs), and the capture of block 0's inputs that starts the walk (pipeline.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .distributed import LOCAL, Collective
from .mappings import Architecture


class _StopForward(Exception):
    """Raised by a hook once a pass has recorded what it needs (block 0's inputs, a capture's modules)."""


@dataclass
class Cached:
    """One calibration batch at a block boundary: positional args (hidden states first) and kwargs."""

    args: tuple
    kwargs: dict[str, Any]


def _move(obj: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> Any:
    """`obj` with its tensors on `device`; floating tensors cast to `dtype` when one is given."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, dtype) if dtype is not None and obj.is_floating_point() else obj.to(device)
    if isinstance(obj, tuple | list):
        return type(obj)(_move(o, device, dtype) for o in obj)
    if isinstance(obj, dict):
        return {k: _move(v, device, dtype) for k, v in obj.items()}
    return obj


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


@dataclass
class BlockContext:
    """What a method sees of one decoder block.

    block: the block, on `device`; names below are relative to it ("self_attn.q_proj").
    inputs: cached calibration batches at the block's input, each hidden state [B, T, hidden].
    """

    index: int
    prefix: str
    block: nn.Module
    inputs: list[Cached]
    arch: Architecture
    device: torch.device
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    # This process's share of the work when several run (distributed.py): `inputs` are its batches only,
    # and methods reduce what they learn from them through it. LOCAL (one process) reduces nothing.
    group: Collective = LOCAL

    def run(self, keep_outputs: bool = True, batches: int | None = None) -> list[torch.Tensor]:
        """Run the cached batches (the first `batches` of them, or all) through the block; returns
        hidden states [B, T, hidden] on the cache's device."""
        outs = []
        # The cache may hold a narrower dtype than the block computes in (bf16 activations, float32 block).
        dtype = _float_dtype(self.block)
        with torch.no_grad():
            for c in self.inputs[:batches]:
                home = c.args[0]
                try:
                    out = self.block(*_move(c.args, self.device, dtype), **_move(c.kwargs, self.device, dtype))
                except _StopForward:
                    continue  # a capture that has seen all it needs of this batch
                out = out[0] if isinstance(out, tuple) else out
                if keep_outputs:
                    outs.append(out.to(home.device, home.dtype))
        return outs

    def capture(self, names: Iterable[str], fn: Callable[[str, torch.Tensor, torch.Tensor], None],
                keep_outputs: bool = False, batches: int | None = None) -> list[torch.Tensor]:
        """Run the block once, calling fn(name, x, y) with each named module's input x [tokens, in]
        and output y [tokens, out] (the first element where a module returns a tuple); returns the
        block's outputs when `keep_outputs`. Otherwise each batch stops as soon as every named module
        has run once, which skips the rest of the block (true-sequential GPTQ gathers q/k/v inputs
        without running the MLP)."""
        names = list(names)
        handles, seen = [], set()
        for name in names:
            def hook(mod, args, kwargs, out, name=name):
                x = args[0] if args else kwargs["hidden_states"]
                y = out[0] if isinstance(out, tuple) else out
                fn(name, x.detach().reshape(-1, x.shape[-1]), y.detach().reshape(-1, y.shape[-1]))
                seen.add(name)
                if not keep_outputs and len(seen) == len(names):
                    seen.clear()
                    raise _StopForward
            handles.append(self.block.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
        try:
            return self.run(keep_outputs=keep_outputs, batches=batches)
        finally:
            for h in handles:
                h.remove()

    def record(self, name: str, key: str, value: float) -> None:
        self.stats.setdefault(name, {})[key] = float(value)


def capture_block_inputs(model: nn.Module, blocks: nn.ModuleList, batches: Iterable[torch.Tensor],
                         device: torch.device, cache_device: torch.device | str,
                         cache_dtype: torch.dtype | None = None) -> list[Cached]:
    """Run the model up to block 0 for each batch of input ids [B, T] and cache that block's inputs
    (floating tensors in `cache_dtype`, default: as the model computes them)."""
    cached: list[Cached] = []

    def hook(module, args, kwargs):
        # the KV cache (by its name in each transformers release, quantize/compat.py): blocks run without one
        kwargs = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "past_key_value")}
        args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
        cached.append(Cached(_move(args, cache_device, cache_dtype), _move(kwargs, cache_device, cache_dtype)))
        raise _StopForward

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in batches:
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _StopForward:
                    pass
    finally:
        handle.remove()
    return cached


def _cache_fits(model: nn.Module, batches: list[torch.Tensor] | None, device: torch.device,
                cache_dtype: torch.dtype | None = None) -> bool:
    """Whether the cached block inputs and outputs ([B, T, hidden] each, in the cache's dtype) take at most
    a quarter of the free memory of a CUDA `device`; on the CPU, keeping them "on the device" is free."""
    if device.type != "cuda" or not batches:
        return device.type != "cuda"
    hidden = model.get_input_embeddings().embedding_dim
    itemsize = (cache_dtype or next(model.parameters()).dtype).itemsize
    need = 2 * sum(b.numel() for b in batches) * hidden * itemsize
    free, _ = torch.cuda.mem_get_info(device)
    return need <= free / 4
