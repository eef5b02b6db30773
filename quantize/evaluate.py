"""Perplexity, KL divergence and top-1 agreement of a causal LM over fixed token windows.

Protocol: every window of L tokens is one independent forward pass (no BOS added, no
overlap), and predicts its L-1 next tokens. Perplexity is exp of the mean next-token
negative log-likelihood over all predicted tokens of all windows. Against a base model,
KL(base || model) of the next-token distributions and the fraction of positions where the
two argmaxes agree are averaged over the same tokens. Dettmers & Zettlemoyer ("The case for
4-bit precision", 2023) and Dutta et al. ("Accuracy is not all you need", 2024) argue that
KL and agreement ("flips") expose quantization damage that perplexity averages away.

The base model can be resident (both models in memory, one pass) or streamed: run
`save_base_logits` once with the base model, free it, then `evaluate(..., base_logits_dir=)`.
All losses use float32 log-softmax whatever the model's dtype; sums are accumulated in float64.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

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
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

# Positions scored at a time: bounds the float32 [positions, vocab] temporaries to
# 2^24 elements (64 MiB each) even for 128k vocabularies and long windows.
_CHUNK_ELEMENTS = 1 << 24
_MANIFEST = "manifest.json"

# Relative rounding error of a float16 value (unit roundoff, half an ulp).
FLOAT16_UNIT_ROUNDOFF = 2.0**-11


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
    base_logits_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score `model` on token windows in one pass.

    windows: LongTensor [W, L], W windows of L tokens each (L >= 2).
    batch_size: windows per forward pass; results do not depend on it beyond float rounding.
    base: a resident reference model (same tokenizer); adds KL, top-1 agreement, base perplexity.
    base_logits_dir: a directory written by `save_base_logits` for these same windows; gives
        the same extra scores without the base in memory (KL within the float16 bound of
        `save_base_logits`). Mutually exclusive with `base`.
    device: where the windows are sent; defaults to the device of the model's first parameter.
    Models are put in eval mode; no gradients are kept.
    """
    _check_windows(windows, batch_size)
    if base is not None and base_logits_dir is not None:
        raise ValueError("give either `base` or `base_logits_dir`, not both")
    reader = _BaseLogitsReader(base_logits_dir, windows) if base_logits_dir is not None else None
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
            base_logits = stored = None
            if base is not None:
                base_logits = _forward_logits(base, ids.to(_first_device(base)))
            if reader is not None:
                stored = reader.read(start, start + ids.shape[0])
            logits = _forward_logits(model, ids)
            totals.add(_score_batch(logits, ids, base_logits, stored))
            bar.advance(task, ids.numel())

    nll = totals.nll / totals.tokens
    result = EvalResult(
        perplexity=math.exp(nll),
        nll=nll,
        num_tokens=totals.tokens,
        num_windows=num_windows,
        seq_len=seq_len,
    )
    if base is not None or reader is not None:
        result.kl_divergence = totals.kl / totals.tokens
        result.top1_agreement = totals.agree / totals.tokens
        result.base_perplexity = math.exp(totals.base_nll / totals.tokens)
    return result


def save_base_logits(
    base: nn.Module,
    windows: torch.Tensor,
    out_dir: str | Path,
    *,
    batch_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Path:
    """Write the base model's next-token log-probabilities for later `evaluate(base_logits_dir=)`.

    windows: LongTensor [W, L]. One safetensors file per batch holds
      log_probs  float16 [B, L-1, V]  log-softmax of the float32 logits
      nll        float32 [B, L-1]     the base's exact per-token NLL (so base perplexity is exact)
    plus `manifest.json` with the shapes and a SHA-256 of `windows`, checked when reading.

    Size: W * (L-1) * V * 2 bytes. Llama-3 (V = 128256) with 40 windows of 2048 tokens
    needs 40 * 2047 * 128256 * 2 B = 21 GB; 256 windows of 2048 tokens need 134 GB.

    Float16 error bound: each stored log-prob l_v = log p_v carries a relative rounding error
    of at most u = 2^-11, so to first order in u the KL at one position changes by at most
        u * sum_v p_v * |l_v| * (1 + |l_v - log q_v|)
    (q: the model's distribution), i.e. about u * entropy for close models: ~1e-3 nats for a
    2-nat entropy, far below the gaps between quantization methods. `kl_rounding_bound`
    computes this per position. It is a worst case: the roundings have both signs and
    mostly cancel (the tests see 1.5e-6 against a bound of 2.8e-3). Top-1 agreement can only differ at positions where the
    base's two largest log-probs round to the same float16 value (rounding is monotone).
    """
    _check_windows(windows, batch_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else _first_device(base)
    base.eval()
    files = []
    with _progress_bar(progress) as bar, torch.inference_mode():
        task = bar.add_task("base logits", total=windows.numel())
        for index, start in enumerate(range(0, windows.shape[0], batch_size)):
            ids = windows[start : start + batch_size].to(device, torch.int64)
            logits = _forward_logits(base, ids)
            rows, length, vocab = logits.shape
            log_probs = torch.empty(rows, length - 1, vocab, dtype=torch.float16)
            nll = torch.empty(rows, length - 1, dtype=torch.float32)
            for row, cols in _chunks(logits):
                lp = F.log_softmax(logits[row, cols].float(), dim=-1)
                log_probs[row, cols] = lp.to(torch.float16).cpu()
                nll[row, cols] = -lp.gather(-1, ids[row, 1:][cols, None]).squeeze(-1).cpu()
            name = f"batch_{index:05d}.safetensors"
            save_file({"log_probs": log_probs, "nll": nll}, str(out_dir / name))
            files.append({"file": name, "start": start, "end": start + ids.shape[0]})
            bar.advance(task, ids.numel())

    manifest = {
        "num_windows": windows.shape[0],
        "seq_len": windows.shape[1],
        "vocab_size": vocab,
        "windows_sha256": _fingerprint(windows),
        "files": files,
    }
    (out_dir / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    return out_dir


def kl_rounding_bound(base_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """First-order bound on how much float16 storage of `base_log_probs` can move the KL.

    base_log_probs, log_probs: [..., V] exact (float32/64) log-probs of base and model.
    Returns [...]: u * sum_v p_v |l_v| (1 + |l_v - log q_v|) with u = 2^-11.
    """
    p = base_log_probs.exp()
    terms = p * base_log_probs.abs() * (1 + (base_log_probs - log_probs).abs())
    return FLOAT16_UNIT_ROUNDOFF * torch.where(p > 0, terms, 0).sum(-1)


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
    stored: dict[str, torch.Tensor] | None,
) -> _Sums:
    """Totals for one batch.

    logits, base_logits: [B, L, V] in any dtype; ids: [B, L].
    stored: {"log_probs": float16 [B, L-1, V], "nll": float32 [B, L-1]} from `save_base_logits`.
    """
    # [nll, base_nll, kl, agreeing positions], kept on the device so that a GPU
    # synchronises once per batch rather than once per chunk.
    totals = torch.zeros(4, dtype=torch.float64, device=logits.device)
    for row, cols in _chunks(logits):
        targets = ids[row, 1:][cols, None]
        lp = F.log_softmax(logits[row, cols].float(), dim=-1)
        totals[0] -= lp.gather(-1, targets).double().sum()
        if base_logits is not None:
            base_lp = F.log_softmax(base_logits[row, cols].to(lp.device, torch.float32), dim=-1)
            totals[1] -= base_lp.gather(-1, targets).double().sum()
        elif stored is not None:
            base_lp = stored["log_probs"][row, cols].to(lp.device, torch.float32)
        else:
            continue
        p = base_lp.exp()
        # p == 0 (underflow or a masked token) contributes nothing, not 0 * -inf = nan.
        kl_terms = torch.where(p > 0, p * (base_lp - lp), 0)
        totals[2] += kl_terms.sum(-1).double().sum()
        totals[3] += (lp.argmax(-1) == base_lp.argmax(-1)).sum()
    nll, base_nll, kl, agree = totals.tolist()
    if stored is not None:
        base_nll = stored["nll"].double().sum().item()
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


class _BaseLogitsReader:
    """Rows of stored base log-probs for any window range, whatever batch size wrote them."""

    def __init__(self, directory: str | Path, windows: torch.Tensor):
        self.directory = Path(directory)
        manifest_path = self.directory / _MANIFEST
        if not manifest_path.is_file():
            raise ValueError(f"{manifest_path}: not found; write it with save_base_logits")
        manifest = json.loads(manifest_path.read_text())
        if manifest["windows_sha256"] != _fingerprint(windows) or list(windows.shape) != [
            manifest["num_windows"],
            manifest["seq_len"],
        ]:
            raise ValueError(f"{manifest_path}: stored for different windows than the ones evaluated")
        self.files = manifest["files"]

    def read(self, start: int, end: int) -> dict[str, torch.Tensor]:
        """{"log_probs": float16 [end-start, L-1, V], "nll": float32 [end-start, L-1]}."""
        parts: dict[str, list[torch.Tensor]] = {"log_probs": [], "nll": []}
        for entry in self.files:
            lo, hi = max(start, entry["start"]), min(end, entry["end"])
            if lo >= hi:
                continue
            with safe_open(str(self.directory / entry["file"]), framework="pt") as f:
                for key, chunks in parts.items():
                    chunks.append(f.get_slice(key)[lo - entry["start"] : hi - entry["start"]])
        return {key: torch.cat(chunks) for key, chunks in parts.items()}


def _fingerprint(windows: torch.Tensor) -> str:
    return hashlib.sha256(windows.to(torch.int64).cpu().contiguous().numpy().tobytes()).hexdigest()


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
