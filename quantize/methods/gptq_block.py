"""GPTQ over one decoder block: true-sequential groups, shared Hessians, stacked linears, several ranks.

Linears that read the same tensor (the architecture's `fusions`: q/k/v, gate/up) have one Hessian,
gathered once. GPTQ treats the rows of W independently given H (the Cholesky factor of H^-1, the
column order and the lazy updates depend on H alone; per-row scales are chosen per row), so such
linears with the same per-row-scaled QuantArgs are quantized as one matrix, their weights stacked
by rows: one factorization and one column loop instead of one per linear. That loop is bound by its
launches on a GPU, so q/k/v cost about what q alone did. The rows are then split back per linear,
with each one's share of the GPTQ loss: the codes and losses of each linear alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..moe import UNROUTED_NOTE
from ..primitives import QTensor, quantize_weight
from ..scheme import QuantArgs, Strategy
from ..timeline import phase
from .gptq import GPTQSettings, Hessian, gptq_quantize

FUSE_SHARED = True  # stack linears that share a Hessian (tests switch it off to compare)
PER_ROW = (Strategy.CHANNEL, Strategy.GROUP)  # tensor and 2-D block scales tie rows together


@dataclass(frozen=True)
class _Unit:
    """Linears quantized as one matrix, their weights stacked by rows in `names` order: one linear, or
    several that share a Hessian and QuantArgs with per-row scales."""

    names: tuple[str, ...]
    rows: tuple[int, ...]  # each one's out_features
    in_features: int
    args: QuantArgs

    @property
    def key(self) -> str:
        return "+".join(self.names)

    def name_of_row(self, row: int) -> str:
        return self.names[next(i for i, end in enumerate(itertools.accumulate(self.rows)) if row < end)]


def quantize_block(ctx, schemes: dict, *, damp: float = 0.01, block_size: int = 128, act_order: bool = True,
                   static_groups: bool | None = None, true_sequential: bool = True,
                   min_tokens_per_feature: float = 1.0) -> dict[str, QTensor]:
    """GPTQ every named linear of the block (ctx: pipeline.BlockContext, schemes: {name: QuantScheme});
    settings as in `GPTQSettings`.

    min_tokens_per_feature: warn when fewer calibration tokens than this many per input feature
    were seen, as the Hessian is then poorly conditioned.
    """
    settings = GPTQSettings(damp, act_order, static_groups, true_sequential, block_size)
    for name, scheme in schemes.items():
        wants_gidx = settings.stores_g_idx(scheme.weights)
        if wants_gidx != scheme.weights.actorder:
            raise ValueError(f"{ctx.prefix}{name}: act_order without static_groups stores g_idx, so the scheme "
                             f"needs actorder={wants_gidx} (got {scheme.weights.actorder})")
    out: dict[str, QTensor] = {}
    for group in _groups(ctx, list(schemes), true_sequential):
        owner = _input_owners(ctx.arch, group)
        hessians = _gather_hessians(ctx, group, owner)
        layers = {name: ctx.block.get_submodule(name) for name in group}

        def one(unit, rows=slice(None), hessians=hessians, layers=layers, owner=owner):
            weights = [layers[n].weight.data for n in unit.names]
            weight = weights[0] if len(weights) == 1 else torch.cat(weights)
            return _quantize_unit(ctx, unit, weight[rows], rows.start or 0, hessians[owner[unit.names[0]]],
                                  settings, min_tokens_per_feature)
        with phase("gptq quantize", ctx.device):
            found = _quantize_shared(ctx, layers, _units(layers, schemes, owner), one)
        for name, (qtensor, loss, messages) in found.items():
            ctx.messages.extend(messages)
            if loss is not None:
                ctx.record(name, "gptq_loss", loss)
            out[name] = qtensor
            # Later groups must see this layer's quantized output.
            layers[name].weight.data = qtensor.dequantize(layers[name].weight.dtype)
    return out


def _groups(ctx, names: list[str], true_sequential: bool) -> list[list[str]]:
    """Linears in the order they are quantized: the architecture's sequential groups, or all at once."""
    if not true_sequential:
        return [names]
    order = [[n for n in group if n in names] for group in ctx.arch.sequential]
    order = [g for g in order if g]
    rest = [n for n in names if not any(n in g for g in order)]
    return order + ([rest] if rest else [])


def _input_owners(arch, group: list[str]) -> dict[str, str]:
    """name -> the linear of `group` whose Hessian it uses: linears that read the same tensor
    (the architecture's `fusions`: q/k/v, gate/up) have the same Hessian, so the first of them present
    accumulates it once for all (the same numbers, a third of the work for q/k/v)."""
    owner = {n: n for n in group}
    for names in arch.fusions:
        present = [n for n in names if n in owner]
        for n in present:
            owner[n] = present[0]
    return owner


def _gather_hessians(ctx, group: list[str], owner: dict[str, str]) -> dict[str, Hessian]:
    """{owner: its Hessian over every rank's batches}."""
    # An ordered dict, not a set: with several processes every rank must merge in the same order.
    hessians = {n: Hessian(ctx.block.get_submodule(n).in_features) for n in dict.fromkeys(owner.values())}

    def add(name, x, y):
        try:
            hessians[name].add_batch(x)
        except ValueError as err:
            raise ValueError(f"{ctx.prefix}{name}: {err}") from None
    # Only the owners run: the pass over each batch stops once they have (q alone for q/k/v).
    with phase("gptq capture", ctx.device):
        ctx.capture([n for n in group if owner[n] == n], add)
    with phase("gptq merge", ctx.device):
        for h in hessians.values():
            h.merge(ctx.group)
    return hessians


def _units(layers: dict, schemes: dict, owner: dict[str, str]) -> list[_Unit]:
    """The group's linears as units, in order of their first linear: those with one owner and equal
    per-row-scaled weight QuantArgs together (with FUSE_SHARED), every other linear alone."""
    members: dict[tuple, list[str]] = {}
    for n in layers:
        args = schemes[n].weights
        together = FUSE_SHARED and args.strategy in PER_ROW
        members.setdefault((owner[n], args) if together else (n,), []).append(n)
    return [_Unit(tuple(names), tuple(layers[n].out_features for n in names), layers[names[0]].in_features,
                  schemes[names[0]].weights) for names in members.values()]


def _quantize_shared(ctx, layers: dict, units: list[_Unit], one) -> dict[str, tuple]:
    """{name: (codes, loss, notes)} of a true-sequential group's linears, `one(unit, rows)` quantizing
    the rows `rows` of a unit's stacked weight."""
    found = _on_ranks(ctx, units, one) if ctx.group.active else {u: [one(u)] for u in units}
    out = {}
    for unit, parts in found.items():
        out.update(_split(unit, parts))
    return {n: out[n] for n in layers}


def _on_ranks(ctx, units: list[_Unit], one) -> dict[_Unit, list[tuple]]:
    """{unit: results of consecutive slices of its rows} with several processes (distributed.py): every
    rank quantizes its contiguous slice of the rows of each unit whose scales are per row (GPTQ treats
    rows independently given H, and every rank holds the same reduced H), and the slices are exchanged:
    the work divides however few units the group has (down_proj alone). Units with per-tensor or 2-D
    block scales, and every unit of a group with at least one unit per rank, go whole to one rank each."""
    group = ctx.group
    # A unit's column loop is a chain of launches whose time hardly falls with its rows (2 x H200: 16.1 ->
    # 14.4 s for 32 blocks with half the rows each, BENCHMARKS.md), so as soon as every rank can have a
    # unit of its own (the four of a block without true-sequential groups, a mixture of experts' many),
    # whole units run their chains side by side; only a group of fewer units than ranks is cut by rows.
    few = len(units) < group.size
    split = [u for u in units if few and sum(u.rows) >= 16 * group.size and u.args.strategy in PER_ROW]
    whole = group.assign({u.key: u.in_features * (u.in_features + sum(u.rows)) for u in units if u not in split})
    owners = {**whole, **{f"{u.key}@{r}": r for u in split for r in range(group.size)}}
    by_key = {u.key: u for u in units}
    mine = {k: one(by_key[k]) for k in group.mine(whole)}
    for u in split:
        n = sum(u.rows)
        mine[f"{u.key}@{group.rank}"] = one(u, slice(group.rank * n // group.size, (group.rank + 1) * n // group.size))
    with phase("gptq share", ctx.device):
        shared = group.share(mine, owners)
    return {u: [shared[u.key]] if u.key in whole else [shared[f"{u.key}@{r}"] for r in range(group.size)]
            for u in units}


def _split(unit: _Unit, parts: list[tuple]) -> dict[str, tuple]:
    """{name: (codes, loss, notes)} of each linear of `unit` from (codes, per-row losses or None, notes)
    of consecutive slices of its rows. A linear's loss sums its rows' losses slice by slice, as one
    linear's slices always did: with one linear and one slice, exactly gptq_quantize's loss."""
    qtensor = parts[0][0] if len(parts) == 1 else _join_rows([p[0] for p in parts])
    notes = list(dict.fromkeys(m for p in parts for m in p[2]))  # every slice notes the same things
    starts = list(itertools.accumulate((p[0].values.shape[0] for p in parts), initial=0))
    firsts = itertools.accumulate(unit.rows, initial=0)
    out = {}
    for name, first, piece in zip(unit.names, firsts, _split_rows(qtensor, unit.rows), strict=False):
        last = first + piece.values.shape[0]
        loss = None if any(p[1] is None for p in parts) else \
            sum(float(p[1][max(first - a, 0):max(last - a, 0)].sum()) for p, a in zip(parts, starts, strict=False))
        out[name] = (piece, loss, [f"{name}: {m}" for m in notes])
    return out


def _join_rows(parts: list[QTensor]) -> QTensor:
    """One QTensor from row slices of per-row-scaled codes (g_idx, a property of H, is the same in all)."""
    zero = None if parts[0].zero_point is None else torch.cat([p.zero_point for p in parts])
    return QTensor(torch.cat([p.values for p in parts]), torch.cat([p.scale for p in parts]), zero,
                   parts[0].args, parts[0].g_idx)


def _split_rows(qtensor: QTensor, rows: tuple[int, ...]) -> list[QTensor]:
    """`_join_rows` undone: per-row-scaled codes cut into slices of `rows` rows, each with its own copy of
    g_idx. Copies, not views: a checkpoint cannot store tensors that share memory."""
    if len(rows) == 1:
        return [qtensor]
    zeros = [None] * len(rows) if qtensor.zero_point is None else qtensor.zero_point.split(rows)
    return [QTensor(v.clone(), s.clone(), None if z is None else z.clone(), qtensor.args,
                    None if qtensor.g_idx is None else qtensor.g_idx.clone())
            for v, s, z in zip(qtensor.values.split(rows), qtensor.scale.split(rows), zeros, strict=True)]


def _quantize_unit(ctx, unit: _Unit, weight: torch.Tensor, first: int, h: Hessian, settings: GPTQSettings,
                   min_tokens_per_feature: float) -> tuple[QTensor, torch.Tensor | None, list[str]]:
    """(codes, per-row GPTQ losses or None, notes) of rows `first`.. of a unit's stacked weight [N, K]
    (weight holds those rows). A unit that saw no calibration token (an expert the router never chose)
    has no Hessian: it gets round-to-nearest, and a note. Notes do not name the linear: `_split` does."""
    if not torch.isfinite(weight).all():
        row = first + int(torch.nonzero(~torch.isfinite(weight).all(1))[0, 0])
        raise ValueError(f"{ctx.prefix}{unit.name_of_row(row)}: weight contains NaN or Inf")
    if h.num_tokens == 0:
        return quantize_weight(weight.detach().float(), unit.args), None, [UNROUTED_NOTE]
    messages = []
    if h.num_tokens < min_tokens_per_feature * weight.shape[1]:
        messages.append(f"only {h.num_tokens} calibration tokens for {weight.shape[1]} "
                        "input features; the Hessian is poorly conditioned (use more --num-samples)")
    result = gptq_quantize(weight, h.matrix, unit.args, damp=settings.damp, block_size=settings.block_size,
                           act_order=settings.act_order, static_groups=settings.static)
    return result.qtensor, result.row_loss, messages + result.messages
