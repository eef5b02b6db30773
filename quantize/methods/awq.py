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

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..mappings import Smooth, applicable
from ..moe import UNROUTED_NOTE
from ..pipeline import BlockContext
from ..primitives import (
    QTensor,
    dequantize,
    expand,
    fake_quantize,
    qparams_from_range,
    quantize,
    reduce_range,
)
from ..scheme import QuantArgs, QuantScheme, Strategy
from .scaling import apply_scale

GRID = 20
FINALISTS = 3  # candidates of the scale search's first stage scored on every call (search_scale)


@dataclass
class MappingInputs:
    """What the scale search of one mapping needs, gathered in a single pass over the block.

    x_mean: mean |x| per input channel of the balance linears over all calibration tokens, [K].
    calls: (args, kwargs) of the first calls of the inspected module, up to the token budget.
    """

    x_mean: torch.Tensor
    calls: list[tuple[tuple, dict]] = field(default_factory=list)
    tokens: int = 0
    abs_sum: torch.Tensor | float = 0.0
    count: int = 0


def gather_inputs(ctx: BlockContext, mappings: list[Smooth], search_tokens: int,
                  rows: dict[str, list[torch.Tensor]] | None = None) -> list[MappingInputs]:
    """One float pass over the block recording every mapping's statistics.

    One pass suffices because folding one mapping's scales never changes the inputs another mapping
    inspects: each fold only rescales the output of its own `prev` and the inputs of its own linears.
    With several processes (ctx.group) the sums cover every rank's tokens and the recorded calls are
    the first ones of all ranks in rank order, which is batch order: the calls one process records.
    rows: linear name -> [] to be filled with every 1/64 of each call's input rows (the clipping search's).
    """
    stats = [MappingInputs(torch.empty(0)) for _ in mappings]
    handles = []
    for name, kept in (rows or {}).items():
        def sample(module, args, kept=kept):
            x = args[0].reshape(-1, args[0].shape[-1])
            kept.append(x[:: max(1, x.shape[0] // 64)])
        handles.append(ctx.block.get_submodule(name).register_forward_pre_hook(sample))
    for st, m in zip(stats, mappings, strict=True):
        def record(module, args, kwargs, st=st):
            _keep_call(st, args, kwargs, search_tokens)

        def accumulate(module, args, st=st):
            x = args[0]
            st.abs_sum = st.abs_sum + x.abs().float().reshape(-1, x.shape[-1]).sum(0)
            st.count += x.shape[:-1].numel()
        block = ctx.block
        st.abs_sum = torch.zeros(block.get_submodule(m.balance[0]).in_features, device=ctx.device)
        handles.append(block.get_submodule(m.inspect or m.balance[0]).register_forward_pre_hook(record, with_kwargs=True))
        handles.append(block.get_submodule(m.balance[0]).register_forward_pre_hook(accumulate))
    try:
        ctx.run(keep_outputs=False)
    finally:
        for h in handles:
            h.remove()
    for st in stats:
        st.count = int(ctx.group.count(st.count))
        st.x_mean = ctx.group.sum_(st.abs_sum) / max(st.count, 1)
        if ctx.group.active:
            st.calls, st.tokens = _first_calls(ctx, st.calls, search_tokens)
    return stats


def _keep_call(st: MappingInputs, args: tuple, kwargs: dict, search_tokens: int) -> None:
    """Record a call of the inspected module while the calls stay within `search_tokens` (the first always)."""
    x = args[0] if args else kwargs["hidden_states"]
    n = x.shape[:-1].numel()
    if not st.calls or st.tokens + n <= search_tokens:
        st.calls.append((args, kwargs))
        st.tokens += n


def _first_calls(ctx: BlockContext, local: list, search_tokens: int) -> tuple[list, int]:
    """The calls one process would record over all batches: each rank's, in rank order (the batch order),
    kept by the same rule. A rank's own list holds every call of its batches that the rule can keep."""
    merged = MappingInputs(torch.empty(0))
    for rank in range(ctx.group.size):
        if merged.tokens >= search_tokens:
            break
        for args, kwargs in ctx.group.broadcast(local, src=rank):
            _keep_call(merged, args, kwargs, search_tokens)
    return merged.calls, merged.tokens


def _run(module: nn.Module, calls: list[tuple[tuple, dict]]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for args, kwargs in calls:
            out = module(*args, **kwargs)
            outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


def weight_mean(balance: list[nn.Linear], args: QuantArgs) -> torch.Tensor:
    """Mean over the balance linears' rows of |W| relative to its group's max |W|, per input channel [K]."""
    rows = []
    for b in balance:
        w = b.weight.data.float().abs()
        group_max = expand(reduce_range(w, args)[1], w.shape, args)  # shorter last groups included
        rows.append(w / group_max.clamp_min(1e-12))
    return torch.cat(rows).mean(0)


def candidate_scale(x_mean: torch.Tensor, ratio: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """s = mean|x|^ratio, or with w_mean (duo scaling) mean|x|^ratio / w_mean^(1 - ratio); geometric mean 1.

    x_mean, w_mean: [K] per input channel (MappingInputs.x_mean, weight_mean)."""
    s = x_mean.clamp_min(1e-4).pow(ratio)
    if w_mean is not None:
        s = s / w_mean.clamp_min(1e-4).pow(1 - ratio)
    return s / torch.exp(torch.log(s).mean())


def search_scale(inspect: nn.Module, balance: list[nn.Linear], inputs: MappingInputs,
                 args: QuantArgs, *, duo_scaling: bool = False) -> tuple[torch.Tensor, float, float]:
    """Best per-channel scale s [K] for the balance linears, its grid ratio, and the MSE it gives.

    Each of the 20 candidates (`candidate_scale`; with duo_scaling, weight magnitudes enter too, as
    llm-compressor's default does) is scored by the MSE of `inspect`'s output on the recorded calls
    when the balance weights are replaced by Q(W * s) / s. Weights are restored.
    The forwards are most of AWQ's time, so the scoring has two stages: every candidate on the first
    calls (about half the tokens), then only the best `FINALISTS` on the other calls as well, the choice
    being the least MSE over all calls among those. On SmolLM2 (32 x 512 WikiText-2 tokens, two calls
    of 2048 tokens, blocks 0-3: 12 mappings) the best over all calls was always among the first
    stage's best three. With a single call there is no second stage and every candidate sees all of it.
    """
    split = _half(inputs.calls)
    stages = [inputs.calls[:split], inputs.calls[split:]]
    references = [_run(inspect, calls) for calls in stages]
    originals = [b.weight.data.clone() for b in balance]
    w_mean = weight_mean(balance, args).to(inputs.x_mean.device) if duo_scaling else None
    scales = [candidate_scale(inputs.x_mean, i / GRID, w_mean) for i in range(GRID)]
    errors = [0.0] * GRID
    keep = list(range(GRID))
    try:
        for calls, reference in zip(stages, references, strict=True):
            for i in keep if calls else ():
                for b, w in zip(balance, originals, strict=True):
                    b.weight.data = (fake_quantize(w.float() * scales[i], args) / scales[i]).to(w.dtype)
                errors[i] += _squared_error(_run(inspect, calls), reference)
            keep = sorted(keep, key=errors.__getitem__)[:FINALISTS]  # stable: ties keep the lower ratio
    finally:
        for b, w in zip(balance, originals, strict=True):
            b.weight.data = w
    best = min(keep, key=errors.__getitem__)
    mse = errors[best] / sum(r.numel() for refs in references for r in refs)
    if not mse < float("inf"):  # every candidate non-finite: leave the weights unscaled
        return torch.ones_like(inputs.x_mean), 0.0, float("inf")
    return scales[best], best / GRID, mse


def _half(calls: list[tuple[tuple, dict]]) -> int:
    """How many leading calls hold at most half the calls' tokens (at least one)."""
    sizes = [(a[0] if a else kw["hidden_states"]).shape[:-1].numel() for a, kw in calls]
    first, seen = 0, 0
    while first < len(sizes) and 2 * (seen + sizes[first]) <= sum(sizes):
        seen += sizes[first]
        first += 1
    return max(first, 1)


def _squared_error(out: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    total = 0.0
    for o, r in zip(out, reference, strict=True):
        d = (o - r).float()
        total += float(d.mul_(d).sum())
    return total


def search_clip(weight: torch.Tensor, x: torch.Tensor, args: QuantArgs, *, max_shrink: float = 0.5,
                steps: int = 20, max_tokens: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-scale range (lo, hi) minimising the layer's output error on sampled inputs.

    weight: [N, K]; x: [tokens, K]. Each group's range is shrunk by 1 - i/steps, i up to max_shrink*steps;
    the error of a group is ||x_g (W_g - Q(W_g))^T||^2 over the sampled tokens. Weights and inputs are
    viewed as [groups, ..., group_size] (a short last group zero-padded, which adds no error), so each
    step is one batched matmul over all groups rather than a Python loop of small ones.
    """
    x = x[:: max(1, x.shape[0] // max_tokens)][:max_tokens].float()
    w = weight.float()
    lo0, hi0 = reduce_range(w, args)
    n, k = w.shape
    g = args.group_size if args.strategy is Strategy.GROUP else k
    groups = -(-k // g)
    wb = F.pad(w, (0, groups * g - k)).reshape(n * groups, g)  # row r: group r % groups of output r // groups
    xb = F.pad(x, (0, groups * g - k)).reshape(-1, groups, g).transpose(0, 1)  # [G, T, g]
    per_row = replace(args, strategy=Strategy.CHANNEL, group_size=None)  # one (scale, zero) per row of wb
    lo0g, hi0g = lo0.expand(n, groups).reshape(-1, 1), hi0.expand(n, groups).reshape(-1, 1)
    best_err = torch.full((n * groups, 1), float("inf"), device=w.device)
    best_lo, best_hi = lo0g.clone(), hi0g.clone()
    for i in range(int(max_shrink * steps) + 1):
        r = 1 - i / steps
        lo, hi = lo0g * r, hi0g * r
        scale, zp = qparams_from_range(lo, hi, per_row)
        diff = dequantize(quantize(wb, scale, zp, per_row), scale, zp, per_row) - wb  # [N * G, g]
        diff = diff.reshape(n, groups, g).permute(1, 2, 0)  # [G, g, N]
        err = torch.bmm(xb, diff).pow_(2).sum(1).T.reshape(-1, 1)  # [N * G, 1]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo, best_lo)
        best_hi = torch.where(better, hi, best_hi)
    return best_lo.reshape(lo0.shape), best_hi.reshape(hi0.shape)


@dataclass(frozen=True)
class AWQSettings:
    """What `quantize_block` accepts: `method_args` of awq in recipes, `--clip`, `--duo-scaling` on the command line."""

    clip: bool = True  # search per-group clipping after the scales
    duo_scaling: bool = False  # candidates mean|x|^a / mean|w|^(1-a) (llm-compressor's default)


def quantize_block(ctx: BlockContext, schemes: dict[str, QuantScheme], *, clip: bool = True,
                   duo_scaling: bool = False, search_tokens: int = 4096) -> dict[str, QTensor]:
    """Scale search and folding over every applicable mapping, then clipping search, then rounding.
    duo_scaling: candidates divide by weight magnitudes too (`candidate_scale`).
    search_tokens: calibration tokens the candidate scales are scored on (mean |x| uses all; `search_scale`
    scores all 20 on about half of them and its finalists on all). The search is most of AWQ's time; on
    SmolLM2 (32 x 512 WikiText-2 tokens, blocks 0-1) 4096 tokens chose the same scales and gave the same
    codes as 16384 in a quarter of the search time.
    The clipping search's input rows are sampled in the pass that gathers the search's statistics and
    divided by the folded scales, rather than captured in another pass over the folded block."""
    for s in schemes.values():
        w = s.weights
        if w.is_float or w.strategy not in (Strategy.GROUP, Strategy.CHANNEL):
            raise ValueError(f"AWQ quantizes integer weights per group or channel, got {w.describe()}")
    mappings = [m for m in ctx.arch.smooth
                if all(b in schemes for b in m.balance) and applicable(ctx.block, m)]
    if not mappings:
        raise ValueError(f"no AWQ mapping of architecture {ctx.arch.name!r} applies to {sorted(schemes)}; "
                         "add one in quantize/mappings.py or use --method gptq")
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in schemes} if clip else {}
    inputs = gather_inputs(ctx, mappings, search_tokens, samples)
    # A mapping whose linears saw no token (an expert the router never chose) keeps its weights as they are.
    searched = {str(i): (m, st) for i, (m, st) in enumerate(zip(mappings, inputs, strict=True)) if st.count}
    # Searches are independent (each scores its own module with the weights it had before any fold),
    # so ranks search different mappings and the folds follow in the mappings' order on every rank.
    ranks = ctx.group.assign({k: float(sum(ctx.block.get_submodule(b).weight.numel() for b in m.balance))
                              for k, (m, _) in searched.items()})
    found = {k: _search(ctx, *searched[k], schemes, duo_scaling) for k in ctx.group.mine(ranks)}
    for k, (s, ratio) in ctx.group.share(found, ranks).items():
        smooth, s = searched[k][0], s.to(ctx.device)
        apply_scale(ctx.block, smooth, s, ctx.arch.norm_offset)
        for b in smooth.balance:
            ctx.record(b, "awq_ratio", ratio)
            # The folded block computes these inputs divided by s: so are the rows sampled before the fold
            # (in place of a pass over the block after the folds, which gave them up to rounding).
            if b in samples:
                samples[b] = [x.float() / s for x in samples[b]]
    # Every rank's sampled rows, in batch order, for the clipping search of each linear's owner.
    rows = {n: ctx.group.gather_rows(torch.cat(samples[n]) if samples[n] else _no_rows(ctx, n))
            for n in schemes} if clip else {}
    unrouted = [n for n in schemes if (clip and not rows[n].shape[0])
                or any(n in m.balance for m, st in zip(mappings, inputs, strict=True) if not st.count)]
    ctx.messages.extend(f"{n}: {UNROUTED_NOTE}" for n in unrouted)
    ranks = ctx.group.assign({n: float(ctx.block.get_submodule(n).weight.numel()) for n in schemes})
    mine = {n: _round(ctx, n, schemes[n].weights, rows.get(n)) for n in ctx.group.mine(ranks)}
    return ctx.group.share(mine, ranks)


def _search(ctx: BlockContext, smooth: Smooth, inputs: MappingInputs, schemes: dict[str, QuantScheme],
            duo_scaling: bool) -> tuple[torch.Tensor, float]:
    block = ctx.block
    s, ratio, _ = search_scale(block.get_submodule(smooth.inspect or smooth.balance[0]),
                               [block.get_submodule(b) for b in smooth.balance], inputs,
                               schemes[smooth.balance[0]].weights, duo_scaling=duo_scaling)
    return s, ratio


def _no_rows(ctx: BlockContext, name: str) -> torch.Tensor:
    return torch.empty(0, ctx.block.get_submodule(name).in_features, device=ctx.device)


def _round(ctx: BlockContext, name: str, args: QuantArgs, x: torch.Tensor | None) -> QTensor:
    """The linear's codes: clipping searched on its sampled inputs x [tokens, K] (None: no clipping)."""
    w = ctx.block.get_submodule(name).weight.data.float()
    # Query and key outputs only enter a softmax through their product: the reference
    # implementation does not clip them, and neither do we. A linear without inputs is not clipped.
    if x is not None and x.shape[0] and name not in ctx.arch.attention_scores:
        lo, hi = search_clip(w, x, args)
    else:
        lo, hi = reduce_range(w, args)
    scale, zp = qparams_from_range(lo, hi, args)
    return QTensor(quantize(w, scale, zp, args), scale, zp, args)
