"""Perplexity, KL divergence and top-1 agreement of a causal LM over fixed token windows.

Protocol: every window of L tokens is one independent forward pass (no BOS added, no
overlap), and predicts its L-1 next tokens. Perplexity is exp of the mean next-token
negative log-likelihood over all predicted tokens of all windows. Against a base model,
KL(base || model) of the next-token distributions and the fraction of positions where the
two argmaxes agree are averaged over the same tokens. Dettmers & Zettlemoyer ("The case for
4-bit precision", 2023) and Dutta et al. ("Accuracy is not all you need", 2024) argue that
KL and agreement ("flips") expose quantization damage that perplexity averages away.

The base model is resident: both models in memory, one pass.
All losses use float32 log-softmax whatever the model's dtype; sums are accumulated in float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from torch import nn

# Positions scored at a time: bounds the float32 [positions, vocab] temporaries to
# 2^24 elements (64 MiB each) even for 128k vocabularies and long windows.
_CHUNK_ELEMENTS = 1 << 24


@dataclass
class EvalResult:
    """Scores over `num_tokens` = num_windows * (seq_len - 1) predicted tokens.

    nll is the mean negative log-likelihood in nats; perplexity = exp(nll). The optional
    fields are set when a base model (resident or streamed) was given.
    """

    perplexity: float
    nll: float
    num_tokens: int
    num_windows: int
    seq_len: int
    kl_divergence: float | None = None  # mean KL(base || model), nats per token
    top1_agreement: float | None = None  # fraction of positions whose argmax matches the base's
    base_perplexity: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Sums:
    """Running float64 totals over predicted tokens."""

    nll: float = 0.0
    base_nll: float = 0.0
    kl: float = 0.0
    agree: int = 0
    tokens: int = 0

    def add(self, other: _Sums) -> None:
        self.nll += other.nll
        self.base_nll += other.base_nll
        self.kl += other.kl
        self.agree += other.agree
        self.tokens += other.tokens


def evaluate(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 1,
    base: nn.Module | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score `model` on token windows in one pass.

    windows: LongTensor [W, L], W windows of L tokens each (L >= 2).
    batch_size: windows per forward pass; results do not depend on it beyond float rounding.
    base: a resident reference model (same tokenizer); adds KL, top-1 agreement, base perplexity.
    device: where the windows are sent; defaults to the device of the model's first parameter.
    Models are put in eval mode; no gradients are kept.
    """
    _check_windows(windows, batch_size)
    device = torch.device(device) if device is not None else _first_device(model)
    model.eval()
    if base is not None:
        base.eval()

    num_windows, seq_len = windows.shape
    totals = _Sums()
    with _progress_bar(progress) as bar, torch.inference_mode():
        task = bar.add_task("evaluate", total=windows.numel())
        for start in range(0, num_windows, batch_size):
            ids = windows[start : start + batch_size].to(device, torch.int64)
            base_logits = None if base is None else _forward_logits(base, ids.to(_first_device(base)))
            logits = _forward_logits(model, ids)
            totals.add(_score_batch(logits, ids, base_logits))
            bar.advance(task, ids.numel())

    nll = totals.nll / totals.tokens
    result = EvalResult(
        perplexity=math.exp(nll),
        nll=nll,
        num_tokens=totals.tokens,
        num_windows=num_windows,
        seq_len=seq_len,
    )
    if base is not None:
        result.kl_divergence = totals.kl / totals.tokens
        result.top1_agreement = totals.agree / totals.tokens
        result.base_perplexity = math.exp(totals.base_nll / totals.tokens)
    return result


def print_table(result: EvalResult, title: str = "evaluation", console: Console | None = None) -> None:
    """Print the scores as a two-column rich table."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("perplexity", f"{result.perplexity:.4f}")
    table.add_row("mean NLL (nats)", f"{result.nll:.5f}")
    if result.base_perplexity is not None:
        table.add_row("base perplexity", f"{result.base_perplexity:.4f}")
        table.add_row("KL(base || model) (nats/token)", f"{result.kl_divergence:.3e}")
        table.add_row("top-1 agreement", f"{100 * result.top1_agreement:.2f} %")
    table.add_row("tokens scored", f"{result.num_tokens:,}")
    table.add_row("windows x length", f"{result.num_windows} x {result.seq_len}")
    (console or Console()).print(table)


def _score_batch(
    logits: torch.Tensor,
    ids: torch.Tensor,
    base_logits: torch.Tensor | None,
) -> _Sums:
    """Totals for one batch.

    logits, base_logits: [B, L, V] in any dtype; ids: [B, L].
    """
    # [nll, base_nll, kl, agreeing positions], kept on the device so that a GPU
    # synchronises once per batch rather than once per chunk.
    totals = torch.zeros(4, dtype=torch.float64, device=logits.device)
    for row, cols in _chunks(logits):
        targets = ids[row, 1:][cols, None]
        lp = F.log_softmax(logits[row, cols].float(), dim=-1)
        totals[0] -= lp.gather(-1, targets).double().sum()
        if base_logits is None:
            continue
        base_lp = F.log_softmax(base_logits[row, cols].to(lp.device, torch.float32), dim=-1)
        totals[1] -= base_lp.gather(-1, targets).double().sum()
        p = base_lp.exp()
        # p == 0 (underflow or a masked token) contributes nothing, not 0 * -inf = nan.
        kl_terms = torch.where(p > 0, p * (base_lp - lp), 0)
        totals[2] += kl_terms.sum(-1).double().sum()
        totals[3] += (lp.argmax(-1) == base_lp.argmax(-1)).sum()
    nll, base_nll, kl, agree = totals.tolist()
    return _Sums(nll, base_nll, kl, round(agree), tokens=ids.shape[0] * (ids.shape[1] - 1))


def _chunks(logits: torch.Tensor):
    """Yield (row, positions) slices covering the L-1 predicting positions of [B, L, V] logits."""
    step = max(1, _CHUNK_ELEMENTS // logits.shape[-1])
    for row in range(logits.shape[0]):
        for start in range(0, logits.shape[1] - 1, step):
            yield row, slice(start, min(start + step, logits.shape[1] - 1))


def _forward_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, L, V] of one forward pass without a KV cache."""
    return model(input_ids=ids, use_cache=False).logits


def _check_windows(windows: torch.Tensor, batch_size: int) -> None:
    if windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be [W >= 1, L >= 2] token ids, got shape {tuple(windows.shape)}")
    if windows.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"windows must hold integer token ids, got {windows.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _first_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class _TokensPerSecond(ProgressColumn):
    """Throughput of a task whose completed count is tokens."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} tok/s" if speed else "- tok/s", style="cyan")


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens"),
        _TokensPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
