"""AWQ: activation-aware weight quantization (Lin et al., 2023), over one decoder block.

For each declarative mapping `prev -> balance` (mappings.py): the input channels of the balance
linears that see large activations matter most, so scale them up by s before quantizing and fold
1/s into `prev`, which leaves the float function unchanged. s = mean|x|^ratio, normalised to a
geometric mean of 1, with ratio picked from a 20-point grid by the MSE of the `inspect` module's
output (the attention or MLP module for norm mappings, the linear itself otherwise) against its
float output, as the reference implementation scores it. Then a clipping search shrinks each
group's range where that lowers the layer's output error, and the weights are rounded.

Search and application are separate: `search_scale` returns data, `apply_scale` folds it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..mappings import Smooth, applicable
from ..pipeline import BlockContext
from ..primitives import QTensor, dequantize, qparams_from_range, quantize, reduce_range
from ..scheme import QuantArgs, QuantScheme, Strategy
from .scaling import apply_scale

GRID = 20


def _fake_quant(w: torch.Tensor, args: QuantArgs) -> torch.Tensor:
    scale, zp = qparams_from_range(*reduce_range(w, args), args)
    return dequantize(quantize(w, scale, zp, args), scale, zp, args, w.dtype)


class _Inputs:
    """Positional args and kwargs of the calls of one module during a block pass, up to `limit` tokens."""

    def __init__(self, limit: int) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.limit, self.tokens = limit, 0

    def hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        if self.calls and self.tokens + x.shape[:-1].numel() > self.limit:
            return
        self.calls.append((args, kwargs))
        self.tokens += x.shape[:-1].numel()


def _capture_calls(ctx: BlockContext, name: str, limit: int) -> list[tuple[tuple, dict]]:
    """The first calls of module `name` holding up to `limit` tokens (at least one call)."""
    rec = _Inputs(limit)
    handle = ctx.block.get_submodule(name).register_forward_pre_hook(rec.hook, with_kwargs=True)
    try:
        ctx.run(keep_outputs=False)
    finally:
        handle.remove()
    return rec.calls


def _mean_abs_input(ctx: BlockContext, name: str) -> torch.Tensor:
    """mean |x| per input channel of module `name` over all calibration tokens, [in_features]."""
    acc: dict = {"sum": 0.0, "tokens": 0}

    def add(_, x, y):
        acc["sum"] = acc["sum"] + x.abs().float().sum(0)
        acc["tokens"] += x.shape[0]
    ctx.capture([name], add)
    return acc["sum"] / acc["tokens"]


def _run(module: nn.Module, calls: list[tuple[tuple, dict]]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for args, kwargs in calls:
            out = module(*args, **kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def search_scale(ctx: BlockContext, smooth: Smooth, args: QuantArgs,
                 search_tokens: int = 16384) -> tuple[torch.Tensor, float, float]:
    """Best per-channel scale s [in_features] for `smooth`, its grid ratio, and the MSE it gives.

    mean|x| comes from all calibration tokens; the 20 candidate scales are scored on the first
    `search_tokens` of them, which bounds the cost of the grid (20 passes of the inspected module).
    """
    block = ctx.block
    balance = [block.get_submodule(n) for n in smooth.balance]
    inspect_name = smooth.inspect or smooth.balance[0]
    inspect = block.get_submodule(inspect_name)
    x_mean = _mean_abs_input(ctx, smooth.balance[0])
    inspect_calls = _capture_calls(ctx, inspect_name, search_tokens)
    reference = _run(inspect, inspect_calls)
    originals = [b.weight.data.clone() for b in balance]
    best = (float("inf"), 0.0, torch.ones_like(x_mean))
    try:
        for i in range(GRID):
            ratio = i / GRID
            s = x_mean.clamp_min(1e-4).pow(ratio)
            s = s / torch.exp(torch.log(s).mean())  # geometric mean 1
            for b, w in zip(balance, originals, strict=True):
                b.weight.data = (_fake_quant(w.float() * s, args) / s).to(w.dtype)
            out = _run(inspect, inspect_calls)
            mse = float(sum(((o - r).float() ** 2).sum() for o, r in zip(out, reference, strict=True)))
            mse /= sum(r.numel() for r in reference)
            if mse < best[0]:
                best = (mse, ratio, s)
    finally:
        for b, w in zip(balance, originals, strict=True):
            b.weight.data = w
    return best[2], best[1], best[0]


def search_clip(weight: torch.Tensor, x: torch.Tensor, args: QuantArgs, *, max_shrink: float = 0.5,
                steps: int = 20, max_tokens: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale range (lo, hi) minimising the layer's output error on sampled inputs.

    weight: [N, K]; x: [tokens, K]. Each group's range is shrunk by 1 - i/steps, i up to max_shrink*steps;
    the error of a group is ||x_g (W_g - Q(W_g))^T||^2 over the sampled tokens.
    """
    x = x[:: max(1, x.shape[0] // max_tokens)][:max_tokens].float()
    w = weight.float()
    lo0, hi0 = reduce_range(w, args)
    n, k = w.shape
    g = args.group_size if args.strategy is Strategy.GROUP else k
    groups = -(-k // g)
    best_err = torch.full((n, groups), float("inf"), device=w.device)
    best_lo, best_hi = lo0.clone(), hi0.clone()
    lo0g, hi0g = lo0.expand(n, groups) if groups > 1 else lo0, hi0.expand(n, groups) if groups > 1 else hi0
    for i in range(int(max_shrink * steps) + 1):
        r = 1 - i / steps
        lo, hi = lo0g * r, hi0g * r
        scale, zp = qparams_from_range(lo, hi, args)
        diff = dequantize(quantize(w, scale, zp, args), scale, zp, args) - w  # [N, K]
        err = torch.stack([((x[:, j * g:(j + 1) * g] @ diff[:, j * g:(j + 1) * g].T) ** 2).sum(0)
                           for j in range(groups)], 1)  # [N, groups]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo, best_lo.expand_as(lo))
        best_hi = torch.where(better, hi, best_hi.expand_as(hi))
    return best_lo.reshape(lo0.shape), best_hi.reshape(hi0.shape)


def quantize_block(ctx: BlockContext, schemes: dict[str, QuantScheme], *, clip: bool = True,
                   search_tokens: int = 16384) -> dict[str, QTensor]:
    """Scale search and folding over every applicable mapping, then clipping search, then rounding."""
    for s in schemes.values():
        w = s.weights
        if w.is_float or w.strategy not in (Strategy.GROUP, Strategy.CHANNEL):
            raise ValueError(f"AWQ quantizes integer weights per group or channel, got {w.describe()}")
    used = set()
    for smooth in ctx.arch.smooth:
        if not all(b in schemes for b in smooth.balance) or not applicable(ctx.block, smooth):
            continue
        args = schemes[smooth.balance[0]].weights
        s, ratio, _ = search_scale(ctx, smooth, args, search_tokens)
        apply_scale(ctx.block, smooth, s, ctx.arch.norm_offset)
        for b in smooth.balance:
            ctx.record(b, "awq_ratio", ratio)
        used.update(smooth.balance)
    if not used:
        raise ValueError(f"no AWQ mapping of architecture {ctx.arch.name!r} applies to {sorted(schemes)}; "
                         "add one in quantize/mappings.py or use --method gptq")
    inputs: dict[str, list[torch.Tensor]] = {}
    if clip:
        ctx.capture(schemes, lambda n, x, y: inputs.setdefault(n, []).append(x[:: max(1, x.shape[0] // 64)]))
    out = {}
    for name, scheme in schemes.items():
        w = ctx.block.get_submodule(name).weight.data.float()
        args = scheme.weights
        # Query and key outputs only enter a softmax through their product: the reference
        # implementation does not clip them, and neither do we.
        if clip and not name.endswith(("q_proj", "k_proj", "qkv_proj")):
            lo, hi = search_clip(w, torch.cat(inputs[name]), args)
        else:
            lo, hi = reduce_range(w, args)
        scale, zp = qparams_from_range(lo, hi, args)
        out[name] = QTensor(quantize(w, scale, zp, args), scale, zp, args)
    return out
