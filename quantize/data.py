"""Calibration and evaluation token data, from a Hugging Face dataset or local files.

Text comes in as rows (`load_texts`) and leaves as token windows:
- `calibration_batches`: random windows of the joined text, as GPTQ and AWQ draw them;
- `synthetic_texts`: data-free calibration, text sampled from the model itself
  (LLM-QAT, Liu et al. 2023, "Data-Free Quantization Aware Training for Large Language Models");
- `evaluation_windows`: the standard perplexity protocol, non-overlapping windows of the joined text.

Rows are always joined with "\\n\\n" and tokenized once without special tokens, which is how the
WikiText-2 perplexity figures in the literature are computed; no BOS is inserted per window.

Local files never touch the network: they go to the packaged `datasets` builders (json,
csv, parquet) or are read directly (plain text); only a bare name goes to the hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Config used when a hub dataset is named without one; "wikitext" alone is ambiguous on the hub.
DEFAULT_CONFIGS = {"wikitext": "wikitext-2-raw-v1"}

# Local file suffix -> how to read it. `.tokens` and `.raw` are WikiText's own plain-text layouts.
TEXT_SUFFIXES = {".txt", ".tokens", ".raw"}
BUILDER_FOR_SUFFIX = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SEPARATOR = "\n\n"


class DataError(ValueError):
    """Data that cannot be loaded or is unusable; the one-line message names the value."""


@dataclass(frozen=True)
class DatasetSource:
    """Where rows come from: a hub dataset, a local data file, a data folder, or a `save_to_disk` folder."""

    kind: str  # "hub" | "text" | "file" | "folder" | "saved"
    location: str  # hub name or local path
    config: str | None = None  # hub config (subset); None for local sources


def resolve_dataset(spec: str, config: str | None = None) -> DatasetSource:
    """Decide how `spec` is read, without loading it.

    A local path is anything that exists, or that looks like a file (a known suffix) or a
    path ("/", "./", "../", "~"); a missing local path is a DataError here, before any
    network access. Everything else is a hub name. The name "synthetic" is for callers
    to handle (see `synthetic_texts`) and is refused here.
    """
    if spec == "synthetic":
        raise DataError("'synthetic' is not a dataset; call synthetic_texts(model, tokenizer, ...) instead")
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    looks_local = suffix in TEXT_SUFFIXES or suffix in BUILDER_FOR_SUFFIX or spec.startswith(("/", ".", "~"))
    if not path.exists():
        if looks_local:
            raise DataError(f"dataset file not found: {spec}")
        return DatasetSource("hub", spec, config if config is not None else DEFAULT_CONFIGS.get(spec))
    if path.is_dir():
        saved = (path / "dataset_dict.json").exists() or (path / "state.json").exists()
        return DatasetSource("saved" if saved else "folder", str(path))
    if suffix in TEXT_SUFFIXES:
        return DatasetSource("text", str(path))
    if suffix in BUILDER_FOR_SUFFIX:
        return DatasetSource("file", str(path))
    known = sorted(TEXT_SUFFIXES | set(BUILDER_FOR_SUFFIX))
    raise DataError(f"unsupported dataset file {spec}; use one of {', '.join(known)} or a folder")


def load_texts(dataset: str, *, config: str | None = None, split: str = "train", text_column: str = "text") -> list[str]:
    """Rows of text from a hub dataset or local data (see `resolve_dataset`).

    Plain-text files are read directly, one row per line with its line ending, so
    `"".join(rows)` is the file; the `datasets` "text" builder would drop the newlines.
    A single data file, or a folder saved from one `Dataset`, is the split you name, whatever
    `split` is. A folder of .txt files goes to the "text" builder, newlines lost. Missing
    values read as "".
    """
    source = resolve_dataset(dataset, config)
    if source.kind == "text":
        try:
            rows = Path(source.location).read_text(encoding="utf-8").splitlines(keepends=True)
        except UnicodeDecodeError as err:
            raise DataError(f"dataset file {dataset} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    else:
        rows = _read_column(_load_split(source, split), text_column, dataset)
    if not any(row.strip() for row in rows):
        raise DataError(f"dataset {dataset} (split {split!r}) has no text")
    return rows


def _load_split(source: DatasetSource, split: str):
    """A `datasets.Dataset`; imported here so plain-text files need no `datasets` (or pyarrow) at all."""
    import datasets

    if source.kind == "saved":
        loaded = datasets.load_from_disk(source.location)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"unknown split {split!r} in {source.location}; splits: {', '.join(loaded)}")
            return loaded[split]
        return loaded
    if source.kind == "file" and Path(source.location).suffix.lower() == ".jsonl":
        _check_json_lines(Path(source.location))
    try:
        if source.kind == "file":
            builder = BUILDER_FOR_SUFFIX[Path(source.location).suffix.lower()]
            return datasets.load_dataset(builder, data_files={split: source.location}, split=split)
        return datasets.load_dataset(source.location, source.config, split=split)
    except ValueError as err:
        # datasets words a bad split 'Unknown split "x". Should be one of [...]' or 'Bad split: ...'.
        if str(err).startswith(("Unknown split", "Bad split")):
            raise DataError(f"unknown split {split!r} in {source.location}: {_first_line(err)}") from err
        raise DataError(f"cannot load dataset {source.location}: {_first_line(err)}") from err
    except (ConnectionError, FileNotFoundError) as err:
        raise DataError(f"cannot load dataset {source.location}: {_first_line(err)}") from err
    except datasets.exceptions.DatasetGenerationError as err:
        # The useful part (which file, what parser error) is the cause, 200 lines down the traceback.
        raise DataError(f"cannot read dataset {source.location}: {_first_line(err.__cause__ or err)}") from err


def _check_json_lines(path: Path) -> None:
    """Name the file and line of the first malformed JSON line (datasets buries it in a long traceback)."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object, got {type(row).__name__}")


def _read_column(ds, text_column: str, dataset: str) -> list[str]:
    if text_column not in ds.column_names:
        raise DataError(f"dataset {dataset} has no column {text_column!r}; columns: {', '.join(ds.column_names)}")
    rows = ["" if value is None else value for value in ds[text_column]]
    bad = next((value for value in rows if not isinstance(value, str)), None)
    if bad is not None:
        raise DataError(f"column {text_column!r} of {dataset} holds {type(bad).__name__}, not text")
    return rows


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def tokenize_joined(tokenizer, texts: list[str]) -> torch.Tensor:
    """Join `texts` with "\\n\\n" and tokenize once, adding no special tokens. Returns [T] int64."""
    # verbose=False: the text is far longer than model_max_length on purpose; it is cut into windows later.
    ids = tokenizer(SEPARATOR.join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


@dataclass
class CalibrationData:
    """Calibration windows and what is known about their source.

    input_ids: [num_samples, seq_len] int64.
    num_tokens_available: tokens the windows were drawn from.
    warnings: human-readable problems (e.g. overlapping windows) for the caller to show.
    """

    input_ids: torch.Tensor
    num_tokens_available: int
    warnings: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Yield [b, seq_len] slices in order; b == batch_size except possibly the last."""
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        yield from self.input_ids.split(batch_size)


def _check_sizes(num_samples: int, seq_len: int) -> None:
    if num_samples < 1:
        raise DataError(f"num_samples must be positive, got {num_samples}")
    if seq_len < 1:
        raise DataError(f"seq_len must be positive, got {seq_len}")


def calibration_batches(tokenizer, texts: list[str], *, num_samples: int, seq_len: int, seed: int = 0) -> CalibrationData:
    """Draw `num_samples` random windows of `seq_len` tokens from the joined text.

    The text is tokenized once (see `tokenize_joined`); window starts are uniform and
    independent (seeded `torch.Generator`, the global RNG is untouched), so windows may
    overlap. No BOS or other special token is added to a window: a window is a plain slice
    of the token stream. Fewer than seq_len + 1 tokens is a DataError; fewer than
    num_samples * seq_len is allowed and noted in `warnings`.
    """
    _check_sizes(num_samples, seq_len)
    ids = tokenize_joined(tokenizer, texts)
    available = ids.numel()
    if available < seq_len + 1:
        raise DataError(f"calibration text has {available:,} tokens; seq_len={seq_len} needs at least {seq_len + 1:,}")
    notes = []
    wanted = num_samples * seq_len
    if available < wanted:
        notes.append(f"calibration text has {available:,} tokens, fewer than "
                     f"{num_samples} x {seq_len} = {wanted:,}; windows overlap")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, available - seq_len + 1, (num_samples, 1), generator=generator)
    return CalibrationData(ids[starts + torch.arange(seq_len)], available, notes)


def evaluation_windows(tokenizer, texts: list[str], *, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows for perplexity: [W, seq_len] int64.

    The joined text is tokenized once without special tokens and cut into consecutive
    windows; the trailing partial window is dropped. `max_windows` keeps the first ones.
    """
    _check_sizes(1, seq_len)
    ids = tokenize_joined(tokenizer, texts)
    count = ids.numel() // seq_len
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise DataError(f"evaluation text has {ids.numel():,} tokens, less than one window of {seq_len}")
    return ids[: count * seq_len].reshape(count, seq_len)


def _find_start_token(model, tokenizer) -> int:
    for token in (getattr(tokenizer, "bos_token_id", None), getattr(model.config, "bos_token_id", None)):
        if isinstance(token, int):
            return token
    raise DataError("synthetic calibration needs a BOS token; neither the tokenizer nor the model config has one")


@torch.no_grad()
def synthetic_texts(model, tokenizer, *, num_samples: int, seq_len: int, seed: int = 0,
                    temperature: float = 1.0, batch_size: int = 8) -> CalibrationData:
    """Data-free calibration (LLM-QAT): sequences sampled from the model itself.

    Each sequence starts with the BOS token and continues with seq_len - 1 tokens drawn by
    plain multinomial sampling from softmax(logits / temperature): no top-k, top-p or
    repetition penalty, and EOS does not stop a sequence. Sampling uses a seeded generator on
    the model's device, so the global RNG is untouched. The model should be in eval mode.
    Returns input_ids [num_samples, seq_len]; `batch_size` sequences are sampled at a time
    (the KV cache of a batch is what bounds memory), and the samples depend on it as well as
    on `seed`, since the batches draw from one generator in turn.
    """
    _check_sizes(num_samples, seq_len)
    if batch_size < 1:
        raise DataError(f"batch_size must be positive, got {batch_size}")
    if temperature <= 0:
        raise DataError(f"temperature must be positive, got {temperature}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    start = _find_start_token(model, tokenizer)
    rows = []
    for first in range(0, num_samples, batch_size):
        prompt = torch.full((min(batch_size, num_samples - first), 1), start, dtype=torch.long, device=device)
        rows.append(_sample(model, prompt, seq_len - 1, temperature, generator))
    ids = torch.cat(rows).cpu()
    return CalibrationData(ids, ids.numel(), [])


def _sample(model, prompt: torch.Tensor, steps: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Extend prompt [b, 1] by `steps` sampled tokens, reusing the KV cache: [b, 1 + steps]."""
    # (imports transformers, which this module otherwise need not)
    from .compat import CACHE_KWARG, returned_cache

    tokens, past, step_input = [prompt], None, prompt
    for _ in range(steps):
        out = model(input_ids=step_input, **{CACHE_KWARG: past}, use_cache=True)
        past = returned_cache(out)
        probs = torch.softmax(out.logits[:, -1].float() / temperature, dim=-1)
        step_input = torch.multinomial(probs, 1, generator=generator)
        tokens.append(step_input)
    return torch.cat(tokens, dim=1)
