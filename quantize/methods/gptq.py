"""GPTQ: quantize one linear layer column by column, feeding each column's rounding error forward.

Follows Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (2022), Algorithm 1: with H = 2/n X^T X the layer's Hessian of ||X W^T - X Q^T||^2
and U the upper Cholesky factor of H^-1, column i is rounded and the remaining columns absorb its
error, W[:, i:] -= (w_i - q_i) / U_ii * U[i, i:]. Updates are applied lazily, one block of
columns at a time. Symbols W, H, Hinv are the paper's; the public API spells names out.

Scales: channel, tensor and block strategies, and groups with `static_groups`, are fixed up front
from the original weights. Other groups are chosen when the loop reaches their first column, from
the error-updated weights of that group (with `act_order`, groups are runs of the permuted order,
described by `g_idx`). 1-bit codes take sign(w) * mean|w| of the (updated) group as their rounding.
FP8 formats work the same way: the column's "rounding" is the cast to
E4M3/E5M2 under its scale, and its error is fed forward just the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ..moe import UNROUTED_NOTE
from ..primitives import (
    QTensor,
    choose_qparams,
    expand,
    group_index,
    quantize,
    quantize_weight,
)
from ..scheme import QuantArgs, Strategy
from ..timeline import phase
from . import gptq_columns


@dataclass(frozen=True)
class GPTQSettings:
    """What `quantize_block` accepts: `method_args` of gptq in recipes, `--damp` etc. on the command line.

    act_order, static_groups: by default columns go in descending Hessian diagonal order with group
    scales fixed up front (static_groups=None follows act_order), as llm-compressor does; on SmolLM2
    W4 g64 this took perplexity from about 40 to 37.6 and needs no g_idx (BENCHMARKS.md).
    true_sequential: quantize q/k/v, then o, then gate/up, then down, gathering each group's
    Hessians with the earlier groups already quantized (inputs as in deployment).
    """

    damp: float = 0.01  # a fraction of the mean Hessian diagonal
    act_order: bool = True
    static_groups: bool | None = None
    true_sequential: bool = True
    block_size: int = 128  # columns per lazy update

    def __post_init__(self) -> None:
        if not self.damp >= 0:
            raise ValueError(f"damp must be >= 0, got {self.damp}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")

    @property
    def static(self) -> bool:
        return self.act_order if self.static_groups is None else self.static_groups

    def stores_g_idx(self, weights: QuantArgs) -> bool:
        """Act-order with group scales chosen in the loop makes groups non-contiguous: the layer stores g_idx."""
        return self.act_order and not self.static and weights.strategy is Strategy.GROUP


MAX_DAMP_RETRIES = 4  # each multiplies damp by 10: 0.01 -> 100; a Hessian that needs more is broken
FIRST_RETRY_DAMP = 0.01  # the retry after a failure at damp=0 (10 * 0 would not help)


class Hessian:
    """Running H = 2/n * sum over tokens of x^T x for one linear layer's inputs x [..., K].

    The running-mean update keeps H at the scale of one token whatever the number of batches.
    float32 suffices: entries stay O(E[x^2]) instead of growing with n, so each update rounds at
    ~1e-7 relative, far below the 1% dampening GPTQ adds, and GPTQ itself runs in float32.
    float64 (`dtype=`) halves speed on CPUs and is far slower on most GPUs.
    The matrix lives on the device of the first batch.
    """

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float32) -> None:
        self.in_features = in_features
        self.dtype = dtype
        self.num_tokens = 0
        self._matrix: torch.Tensor | None = None

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Add a batch of inputs [..., K]; every leading index is one token."""
        if inputs.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs [..., {self.in_features}], got {tuple(inputs.shape)}")
        x = inputs.detach().reshape(-1, self.in_features)
        m = x.shape[0]
        if m == 0:
            return
        if self._matrix is None:
            self._matrix = torch.zeros(self.in_features, self.in_features, dtype=self.dtype, device=x.device)
        n = self.num_tokens
        x = x.to(device=self._matrix.device)
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and self.dtype == torch.float32:
            # Products of 16-bit values are exact in float32 and the tensor cores accumulate in
            # float32: the H of float32 inputs at ~10x the speed of a float32 GEMM (on an 8B-shaped
            # block, down_proj's 14336 x 14336 Hessian over 262k tokens took ~2 s in float32).
            self._matrix = torch.addmm(self._matrix, x.T, x, beta=n / (n + m), alpha=2 / (n + m),
                                       out_dtype=torch.float32)
        else:
            x = x.to(self.dtype) * math.sqrt(2 / (n + m))
            self._matrix.mul_(n / (n + m))
            self._matrix.addmm_(x.T, x)
        # On a GPU the check waits for the device, once per batch and linear, and the host stops
        # queueing work ahead; a NaN stays in H, so checking when H is read catches it as well.
        if not self._matrix.is_cuda:
            self._check_finite()
        self.num_tokens = n + m

    def merge(self, group) -> None:
        """Combine the Hessians of all ranks (group: distributed.Collective): each rank's running mean
        weighted by its token count, so H is the mean over every token as one process computes it.
        Nothing happens with one process."""
        if not group.active:
            return
        total = group.count(self.num_tokens)
        if self._matrix is None:  # this rank saw no token of this layer
            self._matrix = torch.zeros(self.in_features, self.in_features, dtype=self.dtype, device=group.device)
        self._matrix.mul_(self.num_tokens / total if total else 0.0)
        group.sum_(self._matrix)
        self.num_tokens = int(total)

    def _check_finite(self) -> None:
        # diag(H) sums squares of every input, so it is finite iff all inputs were (checking K
        # numbers instead of every token's: the isfinite pass over x cost ~5% of a CPU GPTQ run).
        if not torch.isfinite(torch.diagonal(self._matrix)).all():
            raise ValueError("calibration inputs contain NaN or Inf (or values whose squares overflow float32)")

    @property
    def matrix(self) -> torch.Tensor:
        """H [K, K]."""
        if self._matrix is None:
            raise ValueError("no inputs were added to this Hessian")
        self._check_finite()
        return self._matrix


@dataclass
class GPTQResult:
    """qtensor: codes [N, K] in the original column order, scale/zero_point [N, G] (or the strategy's
    shape), g_idx [K] only for act-order groups whose columns are not contiguous.
    loss: the GPTQ objective over the layer, sum of (w - q)^2 / d^2 / 2 with d the diagonal of the
    upper Cholesky factor of H^-1; equals tr((W - Q) H (W - Q)^T) / 2 for the damped H.
    damp_used: the dampening fraction that worked. messages: what the caller should log (retries)."""

    qtensor: QTensor
    loss: float
    damp_used: float
    messages: list[str] = field(default_factory=list)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, args: QuantArgs, *, damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False, static_groups: bool = False) -> GPTQResult:
    """Quantize weight [N, K] given its inputs' Hessian [K, K] (see `Hessian`).

    damp: fraction of mean(diag(H)) added to H's diagonal; multiplied by 10 (up to
        MAX_DAMP_RETRIES times) while the Cholesky factorization fails.
    block_size: columns per lazy update; only speed depends on it (blocks are cut so that a
        group starting inside a block ends in it, which keeps group scales from current weights).
    act_order: process columns by descending diag(H).
    static_groups: group scales from the original weights, so act_order needs no g_idx.
    Computes in float32 on weight's device.
    """
    _check_inputs(weight, hessian, args, damp, block_size)
    W = weight.detach().to(torch.float32, copy=True)
    H = hessian.detach().to(device=W.device, dtype=torch.float32, copy=True)
    N, K = W.shape

    dead = torch.nonzero(torch.diagonal(H) == 0).flatten()  # inputs that were always zero
    H[dead, dead] = 1
    W[:, dead] = 0

    group = args.group_size if args.strategy is Strategy.GROUP else None
    dynamic = group is not None and not static_groups  # scales chosen inside the loop
    scale, zero_point, column_scale, column_zero = _initial_qparams(W, args, group if dynamic else None)

    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
        if not dynamic:
            column_scale = column_scale[:, perm]
            column_zero = None if column_zero is None else column_zero[:, perm]

    Hinv, damp_used, messages = _upper_cholesky_of_inverse(H, damp)
    loop = gptq_columns.ColumnLoop(W, Hinv, args, scale, zero_point, column_scale, column_zero, group if dynamic else None)
    row_loss = torch.zeros(N, device=W.device)
    i1 = 0
    while i1 < K:
        i2 = loop.block_end(i1, block_size)
        Err1 = loop.run_block(i1, i2)
        row_loss += Err1.square().sum(1)
        W[:, i2:].addmm_(Err1, Hinv[i1:i2, i2:], alpha=-1)
        i1 = i2

    # W now holds the rounded weights in processing order; their codes, with the scales used.
    if dynamic:
        column_scale = expand(scale, W.shape, args).expand(N, K)
        column_zero = None if zero_point is None else expand(zero_point, W.shape, args).expand(N, K)
    codes = quantize(W, column_scale, column_zero, replace(args, strategy=Strategy.CHANNEL))
    codes, g_idx = _original_order(codes, perm, group if dynamic else None, args)
    loss = float(row_loss.sum()) / 2
    if not math.isfinite(loss):
        raise ValueError(f"GPTQ produced a non-finite loss ({loss}) with damp={damp_used}")
    return GPTQResult(QTensor(codes, scale, zero_point, args, g_idx), loss, damp_used, messages)


def _initial_qparams(W: torch.Tensor, args: QuantArgs, dynamic_group: int | None) -> tuple:
    """(scale, zero_point, column_scale, column_zero) before the loop. With `dynamic_group` the
    scales [N, G] are placeholders the loop fills and there are no column values yet (None);
    otherwise they come from W [N, K] and are broadcast to one value per column [N, K]."""
    N, K = W.shape
    if dynamic_group is not None:
        scale = torch.ones(N, math.ceil(K / dynamic_group), device=W.device)
        zero_point = None if args.symmetric else torch.zeros(scale.shape, dtype=torch.int8, device=W.device)
        return scale, zero_point, None, None
    scale, zero_point = choose_qparams(W, args)
    column_zero = None if zero_point is None else expand(zero_point, W.shape, args).expand(N, K)
    return scale, zero_point, expand(scale, W.shape, args).expand(N, K), column_zero


def _original_order(codes: torch.Tensor, perm: torch.Tensor | None, dynamic_group: int | None,
                    args: QuantArgs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes [N, K] in processing order -> original column order, and g_idx [K] where act-order with
    groups chosen in the loop left columns outside their natural group (else None)."""
    if perm is None:
        return codes, None
    K = codes.shape[1]
    inverse = torch.argsort(perm)
    # FP8 codes travel as their bytes: indexing float8 tensors is not implemented everywhere.
    codes = codes.view(torch.uint8)[:, inverse].view(codes.dtype) if args.is_float else codes[:, inverse]
    if dynamic_group is None:
        return codes, None
    g_idx = group_index(K, dynamic_group, codes.device)[inverse]
    if torch.equal(g_idx, group_index(K, dynamic_group, codes.device)):
        return codes, None  # the permutation kept every column in its natural group
    return codes, g_idx


def _check_inputs(weight: torch.Tensor, hessian: torch.Tensor, args: QuantArgs, damp: float,
                  block_size: int) -> None:
    if args.strategy is Strategy.TOKEN:
        raise ValueError("the token strategy is for activations; weights use channel, group, tensor or block")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [N, K], got shape {tuple(weight.shape)}")
    k = weight.shape[1]
    if tuple(hessian.shape) != (k, k):
        raise ValueError(f"hessian must be [{k}, {k}] for weight {tuple(weight.shape)}, got {tuple(hessian.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN or Inf")
    if not torch.isfinite(hessian).all():
        raise ValueError("hessian contains NaN or Inf")
    if (torch.diagonal(hessian) < 0).any():
        raise ValueError("hessian has negative diagonal entries; it is not X^T X of any inputs")
    if damp < 0 or block_size < 1:
        raise ValueError(f"need damp >= 0 and block_size >= 1, got damp={damp}, block_size={block_size}")


def _upper_cholesky_of_inverse(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float, list[str]]:
    """U with U^T U = (H + damp * mean(diag(H)) I)^-1, raising damp while a factorization fails."""
    messages = []
    mean_diag = torch.diagonal(H).mean()
    for attempt in range(MAX_DAMP_RETRIES + 1):
        Hd = H.clone()
        torch.diagonal(Hd).add_(damp * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info == 0:
            Hinv, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info == 0 and torch.isfinite(Hinv).all():
                return Hinv, damp, messages
        if attempt == MAX_DAMP_RETRIES:
            break
        retry = damp * 10 if damp > 0 else FIRST_RETRY_DAMP
        messages.append(f"Cholesky of the Hessian failed with damp={damp:g}; retrying with damp={retry:g}")
        damp = retry
    raise ValueError(f"Cholesky of the Hessian failed even with damp={damp:g} "
                     f"({MAX_DAMP_RETRIES + 1} attempts); it is far from positive definite")


# --- over one decoder block ---------------------------------------------------------------------

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
        # An ordered dict, not a set: with several processes every rank must merge in the same order.
        hessians = {n: Hessian(ctx.block.get_submodule(n).in_features) for n in dict.fromkeys(owner.values())}

        def add(name, x, y, hessians=hessians):
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
        layers = {name: ctx.block.get_submodule(name) for name in group}

        def one(name, rows=slice(None), hessians=hessians, layers=layers, owner=owner):
            return _quantize_layer(ctx, name, layers[name].weight.data[rows], hessians[owner[name]],
                                   schemes[name].weights, settings, min_tokens_per_feature)
        with phase("gptq quantize", ctx.device):
            found = _quantize_shared(ctx, layers, schemes, one)
        for name, (qtensor, loss, messages) in found.items():
            ctx.messages.extend(messages)
            if loss is not None:
                ctx.record(name, "gptq_loss", loss)
            out[name] = qtensor
            # Later groups must see this layer's quantized output.
            layers[name].weight.data = qtensor.dequantize(layers[name].weight.dtype)
    return out


def _quantize_shared(ctx, layers: dict, schemes: dict, one) -> dict[str, tuple]:
    """{name: (codes, loss, notes)} of a true-sequential group's linears, `one(name, rows)` quantizing
    the rows `rows` of one. With several processes (distributed.py) every rank quantizes its contiguous
    slice of the rows of each linear whose scales are per row (GPTQ treats rows independently given H,
    and every rank holds the same reduced H), and the slices are exchanged and joined: the work divides
    evenly however few linears the group has (down_proj alone). Linears with per-tensor or 2-D block
    scales, and every linear of a group of many, go whole to one rank each."""
    group = ctx.group
    if not group.active:
        return {name: one(name) for name in layers}
    # Many linears (a mixture of experts' group) divide well whole, without repeating each H's inverse.
    few = len(layers) < 4 * group.size
    split = [n for n, lin in layers.items() if few and lin.out_features >= 16 * group.size
             and schemes[n].weights.strategy in (Strategy.CHANNEL, Strategy.GROUP)]
    whole = group.assign({n: lin.in_features * (lin.in_features + lin.out_features)
                          for n, lin in layers.items() if n not in split})
    owners = {**whole, **{f"{n}@{r}": r for n in split for r in range(group.size)}}
    mine = {n: one(n) for n in group.mine(whole)}
    for n in split:
        rows = layers[n].out_features
        mine[f"{n}@{group.rank}"] = one(n, slice(group.rank * rows // group.size, (group.rank + 1) * rows // group.size))
    with phase("gptq share", ctx.device):
        shared = group.share(mine, owners)
    out = {n: shared[n] for n in whole}
    for n in split:
        parts = [shared[f"{n}@{r}"] for r in range(group.size)]
        out[n] = (_join_rows([p[0] for p in parts]),
                  None if any(p[1] is None for p in parts) else sum(p[1] for p in parts),
                  list(dict.fromkeys(m for p in parts for m in p[2])))  # every slice notes the same things
    return {n: out[n] for n in layers}


def _join_rows(parts: list[QTensor]) -> QTensor:
    """One QTensor from row slices of per-row-scaled codes (g_idx, a property of H, is the same in all)."""
    zero = None if parts[0].zero_point is None else torch.cat([p.zero_point for p in parts])
    return QTensor(torch.cat([p.values for p in parts]), torch.cat([p.scale for p in parts]), zero,
                   parts[0].args, parts[0].g_idx)


def _quantize_layer(ctx, name: str, weight: torch.Tensor, h: Hessian, args: QuantArgs, settings: GPTQSettings,
                    min_tokens_per_feature: float) -> tuple[QTensor, float | None, list[str]]:
    """(codes, GPTQ loss or None, notes) of one linear's weight [N, K] (or a slice of its rows). A linear
    that saw no calibration token (an expert the router never chose) has no Hessian: it gets
    round-to-nearest, and a note naming it."""
    if not torch.isfinite(weight).all():
        raise ValueError(f"{ctx.prefix}{name}: weight contains NaN or Inf")
    if h.num_tokens == 0:
        return quantize_weight(weight.detach().float(), args), None, [f"{name}: {UNROUTED_NOTE}"]
    messages = []
    if h.num_tokens < min_tokens_per_feature * weight.shape[1]:
        messages.append(f"{name}: only {h.num_tokens} calibration tokens for {weight.shape[1]} "
                        "input features; the Hessian is poorly conditioned (use more --num-samples)")
    result = gptq_quantize(weight, h.matrix, args, damp=settings.damp, block_size=settings.block_size,
                           act_order=settings.act_order, static_groups=settings.static)
    return result.qtensor, result.loss, messages + [f"{name}: {m}" for m in result.messages]
