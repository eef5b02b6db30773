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

A decoder block's linears (true-sequential groups, shared Hessians, several ranks) are quantized by
gptq_block.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ..primitives import QTensor, choose_qparams, expand, group_index, quantize
from ..scheme import QuantArgs, Strategy
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
    """H = 2/n * sum over tokens of x^T x for one linear layer's inputs x [..., K].

    The sum is kept and divided when H is read. On the CPU each batch's X^T X (float32, the fast BLAS) is
    added to a float64 sum: the float32 H then comes out the same whatever the order of the batches or
    their split over processes (1 and N data-parallel ranks give the same GPTQ codes: with 255 levels, a
    last-bit difference in H flips codes; a running float32 mean merged across ranks did that). On a GPU
    it accumulates in float32 (float64 is far slower there), on the tensor cores for 16-bit inputs.
    `dtype` is that of the matrix H returned. The sum lives on the device of the first batch.
    """

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float32) -> None:
        self.in_features = in_features
        self.dtype = dtype
        self.num_tokens = 0
        self._sum: torch.Tensor | None = None

    def _zeros(self, device: torch.device) -> torch.Tensor:
        acc = torch.float32 if device.type == "cuda" and self.dtype == torch.float32 else torch.float64
        return torch.zeros(self.in_features, self.in_features, dtype=acc, device=device)

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Add a batch of inputs [..., K]; every leading index is one token."""
        if inputs.shape[-1] != self.in_features:
            raise ValueError(f"expected inputs [..., {self.in_features}], got {tuple(inputs.shape)}")
        x = inputs.detach().reshape(-1, self.in_features)
        if x.shape[0] == 0:
            return
        if self._sum is None:
            self._sum = self._zeros(x.device)
        x = x.to(device=self._sum.device)
        if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and self._sum.dtype == torch.float32:
            # Products of 16-bit values are exact in float32 and the tensor cores accumulate in
            # float32: the H of float32 inputs at ~10x the speed of a float32 GEMM (on an 8B-shaped
            # block, down_proj's 14336 x 14336 Hessian over 262k tokens took ~2 s in float32).
            self._sum = torch.addmm(self._sum, x.T, x, out_dtype=torch.float32)
        else:  # each batch's product at the matrix dtype (float32: the fast BLAS), summed in float64
            x = x.to(self.dtype)
            self._sum.add_(x.T @ x)
        # On a GPU the check waits for the device, once per batch and linear, and the host stops
        # queueing work ahead; a NaN stays in H, so checking when H is read catches it as well.
        if not self._sum.is_cuda:
            self._check_finite()
        self.num_tokens += x.shape[0]

    def merge(self, group) -> None:
        """Combine the Hessians of all ranks (group: distributed.Collective): the sums and token counts
        add up, so H is the mean over every token as one process computes it. Nothing happens with one
        process."""
        if not group.active:
            return
        if self._sum is None:  # this rank saw no token of this layer
            self._sum = self._zeros(group.device)
        group.sum_(self._sum)
        self.num_tokens = int(group.count(self.num_tokens))

    def _check_finite(self) -> None:
        # diag(H) sums squares of every input, so it is finite iff all inputs were (checking K
        # numbers instead of every token's: the isfinite pass over x cost ~5% of a CPU GPTQ run).
        if not torch.isfinite(torch.diagonal(self._sum)).all():
            raise ValueError("calibration inputs contain NaN or Inf (or values whose squares overflow float32)")

    @property
    def matrix(self) -> torch.Tensor:
        """H [K, K] of `dtype`."""
        if self._sum is None:
            raise ValueError("no inputs were added to this Hessian")
        self._check_finite()
        return (self._sum * (2 / max(self.num_tokens, 1))).to(self.dtype)


@dataclass
class GPTQResult:
    """qtensor: codes [N, K] in the original column order, scale/zero_point [N, G] (or the strategy's
    shape), g_idx [K] only for act-order groups whose columns are not contiguous.
    loss: the GPTQ objective over the layer, sum of (w - q)^2 / d^2 / 2 with d the diagonal of the
    upper Cholesky factor of H^-1; equals tr((W - Q) H (W - Q)^T) / 2 for the damped H.
    damp_used: the dampening fraction that worked. messages: what the caller should log (retries).
    row_loss [N]: each row's part of `loss` (rows are independent given H, so linears quantized as one
    stacked matrix recover each one's loss from its rows: gptq_block.py)."""

    qtensor: QTensor
    loss: float
    damp_used: float
    messages: list[str] = field(default_factory=list)
    row_loss: torch.Tensor | None = None


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
    row_loss.mul_(0.5)  # exact (a power of two): the sum is the unhalved sum / 2, as it always was
    loss = float(row_loss.sum())
    if not math.isfinite(loss):
        raise ValueError(f"GPTQ produced a non-finite loss ({loss}) with damp={damp_used}")
    return GPTQResult(QTensor(codes, scale, zero_point, args, g_idx), loss, damp_used, messages, row_loss)


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
    """U with U^T U = (H + damp * mean(diag(H)) I)^-1, raising damp while a factorization fails.

    With P the reversal of the order and L L^T = P H P (one Cholesky), U = P L^-1 P: upper triangular with a positive
    diagonal and U^T U = P L^-T L^-1 P = H^-1, so it is the factor. The usual chain (Cholesky, cholesky_inverse,
    Cholesky again) does twice the O(K^3) work; session 24 (H200) measured that chain at 223 ms of down_proj's 296 ms
    of GPTQ arithmetic on the 8B shape (K = 14336), serial on every GPU. This route is as accurate (float64
    reference, dev/cholesky_probe.py: relative error 7.9e-8 against the chain's 9.6e-8 at K = 4096) and 27% faster
    on the CPU at K = 4096; on the GPU unmeasured."""
    messages = []
    mean_diag = torch.diagonal(H).mean()
    for attempt in range(MAX_DAMP_RETRIES + 1):
        Hd = H.flip(0, 1)  # a reversed copy
        torch.diagonal(Hd).add_(damp * mean_diag)
        L, info = torch.linalg.cholesky_ex(Hd)
        if info == 0:
            Hinv = _lower_triangular_inverse(L).flip(0, 1)
            if torch.isfinite(Hinv).all():
                return Hinv, damp, messages
        if attempt == MAX_DAMP_RETRIES:
            break
        retry = damp * 10 if damp > 0 else FIRST_RETRY_DAMP
        messages.append(f"Cholesky of the Hessian failed with damp={damp:g}; retrying with damp={retry:g}")
        damp = retry
    raise ValueError(f"Cholesky of the Hessian failed even with damp={damp:g} "
                     f"({MAX_DAMP_RETRIES + 1} attempts); it is far from positive definite")


def _lower_triangular_inverse(L: torch.Tensor, base: int = 1024) -> torch.Tensor:
    """L^-1 [K, K] of a lower-triangular L [K, K] with a positive diagonal: halves recursively, [[A, 0], [C, D]]^-1 =
    [[A^-1, 0], [-D^-1 C A^-1, D^-1]] (two matmuls per level, K^3 / 3 multiply-adds in all, at matmul speed), with
    triangular solves against the identity below `base`. Float32 matmuls at full precision (no TF32 even where the
    process allows it: these products set the error feedback of every later column)."""
    n = L.shape[0]
    if n <= base:
        return torch.linalg.solve_triangular(L, torch.eye(n, device=L.device, dtype=L.dtype), upper=False)
    h = n // 2
    A_inv, D_inv = _lower_triangular_inverse(L[:h, :h], base), _lower_triangular_inverse(L[h:, h:], base)
    out = torch.zeros_like(L)
    out[:h, :h], out[h:, h:] = A_inv, D_inv
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        out[h:, :h] = -(D_inv @ (L[h:, :h] @ A_inv))
    finally:
        torch.set_float32_matmul_precision(precision)
    return out
