"""Mixture-of-experts blocks as per-expert linears, so every method and QuantLinear applies to experts.

transformers 5 stores a block's experts as 3-D parameters (Mixtral, Qwen3-MoE: `mlp.experts.gate_up_proj`
[E, 2I, H], gate rows first, and `mlp.experts.down_proj` [E, H, I]) and loops over the experts the router
chose. `unfuse_experts` replaces such a module by `LinearExperts`, which holds expert e's projections as
`mlp.experts.e.gate_proj` / `up_proj` / `down_proj` (nn.Linear, then QuantLinear: the same kernels as
any layer) and routes exactly as transformers does. The router (`mlp.gate`) is not a Linear and stays in
the model's float dtype. `split_expert_tensors` renames stored 3-D tensors the same way for lazy loading;
checkpoints store the per-expert layout.

An expert the router never picks for a calibration token has no statistics: `calibrating_all_experts`
sends every token through every expert while methods gather statistics (the block output still follows
the router), otherwise GPTQ and AWQ quantize such an expert by round-to-nearest and say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn


class Expert(nn.Module):
    """One expert: down(act(gate(x)) * up(x)), as transformers' expert loop computes it."""

    def __init__(self, hidden: int, intermediate: int, act_fn: nn.Module, *, dtype: torch.dtype,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False, dtype=dtype, device=device)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False, dtype=dtype, device=device)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False, dtype=dtype, device=device)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LinearExperts(nn.Module):
    """Drop-in for transformers' experts module: forward(hidden_states [T, H], top_k_index [T, k],
    top_k_weights [T, k]) -> [T, H]; children "0" .. "E-1" are `Expert`s.

    calibrate_all: every token runs through every expert (what hooks on the linears see), the output
    still adds only the routed tokens, weighted by the router.
    """

    def __init__(self, num_experts: int, hidden: int, intermediate: int, act_fn: nn.Module, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.num_experts = num_experts
        for e in range(num_experts):
            self.add_module(str(e), Expert(hidden, intermediate, act_fn, dtype=dtype, device=device))
        self.calibrate_all = False

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        chosen = top_k_index.T  # [k, T]: positions then tokens, the order transformers adds them in
        for e, expert in enumerate(self.children()):
            pos, token = torch.where(chosen == e)
            if self.calibrate_all:
                y = expert(hidden_states)[token]
            elif token.numel() == 0:
                continue
            else:
                y = expert(hidden_states[token])
            out.index_add_(0, token, (y * top_k_weights[token, pos, None]).to(out.dtype))
        return out


def _fused_experts(module: nn.Module) -> bool:
    """transformers' 3-D experts layout: gate_up_proj [E, 2I, H] and down_proj [E, H, I] parameters."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter) and gate_up.dim() == 3


def unfuse_experts(model: nn.Module) -> int:
    """Replace every 3-D experts module of `model` by `LinearExperts` holding the same weights (on the
    meta device too); returns how many were replaced (0 for dense models, or when already done)."""
    found = [(name, m) for name, m in model.named_modules() if _fused_experts(m)]
    for name, old in found:
        if getattr(old, "is_transposed", False) or not getattr(old, "is_concatenated", True) \
                or getattr(old, "has_bias", False):
            raise ValueError(f"{name}: experts stored transposed, interleaved or with biases are not supported "
                             f"({type(old).__name__})")
        num, two_i, hidden = old.gate_up_proj.shape
        inter = two_i // 2
        new = LinearExperts(num, hidden, inter, old.act_fn, dtype=old.gate_up_proj.dtype,
                            device=old.gate_up_proj.device)
        if old.gate_up_proj.device.type != "meta":
            new.load_state_dict(split_expert_tensors({"gate_up_proj": old.gate_up_proj.data,
                                                      "down_proj": old.down_proj.data}))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return len(found)


def split_expert_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored tensors with each 3-D `...gate_up_proj` [E, 2I, H] / `...down_proj` [E, H, I] of an experts
    module renamed to `...E.gate_proj.weight`, `...E.up_proj.weight`, `...E.down_proj.weight`."""
    out = {}
    for key, t in tensors.items():
        head, _, leaf = key.rpartition(".")
        prefix = f"{head}." if head else ""
        if leaf == "gate_up_proj" and t.dim() == 3:
            inter = t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = t[e, :inter]
                out[f"{prefix}{e}.up_proj.weight"] = t[e, inter:]
        elif leaf == "down_proj" and t.dim() == 3:
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.down_proj.weight"] = t[e]
        else:
            out[key] = t
    return out


# The note GPTQ and AWQ leave for a linear no calibration token reached.
UNROUTED_NOTE = ("no calibration tokens reached this layer (an expert the router never chose); quantized by "
                 "round-to-nearest instead (--moe-calibrate-all-experts gives every expert data)")


@contextmanager
def calibrating_all_experts(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every `LinearExperts` runs every token through every expert (statistics only)."""
    experts = [m for m in module.modules() if isinstance(m, LinearExperts)] if enabled else []
    for m in experts:
        m.calibrate_all = True
    try:
        yield
    finally:
        for m in experts:
            m.calibrate_all = False
