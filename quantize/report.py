"""Per-layer quantization error: load `layer_errors.json`, list the worst layers, draw a heatmap.

The quantization step writes, into the checkpoint directory,
    {"layers": [{"name": "model.layers.0.self_attn.q_proj", "block": 0,
                 "kind": "self_attn.q_proj", "rel_error": 0.012,
                 "method_stats": {"gptq_loss": 1.2}}, ...]}
where rel_error is the layer's relative output error and method_stats holds whatever the
method reports (GPTQ's loss, AWQ's chosen ratio, or nothing). Without calibration data (RTN with
no --dataset) there is no output error: rel_error is null and method_stats holds
"weight_rel_error", ||W - Q|| / ||W||, which is then what this module ranks and draws.
`block` is the decoder block index, or null for a layer outside the blocks (e.g. lm_head).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

# Grids of at most this many cells get the value written in each cell; beyond that the
# numbers overlap and the colour alone has to speak.
_ANNOTATE_MAX_CELLS = 96


@dataclass(frozen=True)
class LayerError:
    name: str  # full module path
    block: int | None  # decoder block index; None outside the blocks
    kind: str  # the module path inside its block, e.g. "mlp.down_proj"
    rel_error: float | None  # None where no calibration data was run (see `measure`)
    method_stats: dict[str, float] = field(default_factory=dict)
    measure: str = "output"  # what rel_error measures: "output" error, or "weight" error without data


def load_errors(path: str | Path) -> list[LayerError]:
    """Read `layer_errors.json`, or the checkpoint directory holding it.

    Raises ValueError naming the file if it is not valid JSON or does not have the format
    in this module's docstring.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "layer_errors.json"
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
        raise ValueError(f'{path}: expected an object with a "layers" list')
    return _known_errors([_parse_record(entry, path, index) for index, entry in enumerate(data["layers"])], path)


def _known_errors(records: list[LayerError], path: Path) -> list[LayerError]:
    """The records with the output error, or where none was measured, with the weight error."""
    if all(r.rel_error is not None for r in records):
        return records
    if all(r.rel_error is None and "weight_rel_error" in r.method_stats for r in records):
        return [replace(r, rel_error=r.method_stats["weight_rel_error"], measure="weight") for r in records]
    unknown = next(r for r in records if r.rel_error is None)
    raise ValueError(f"{path}: no error recorded for {unknown.name}: the checkpoint was quantized without "
                     "calibration data (no --dataset), and by a qtool that did not record the weight error; "
                     "quantize again to get one")


def summarize_notes(messages: list[str], details: str | Path) -> list[str]:
    """One line per kind of note: per-layer notes ("<layer>: <text>") that differ only in their
    numbers are counted rather than repeated (GPTQ notes one per layer); all stay in `details`."""
    groups: dict[str, list[str]] = {}
    for message in messages:
        text = message.partition(": ")[2] or message
        groups.setdefault(re.sub(r"\d+(\.\d+)?", "#", text), []).append(message)
    return [found[0] if len(found) == 1 else f"{len(found)} layers like {found[0]} (each one in {details})"
            for found in groups.values()]


def worst(records: list[LayerError], n: int = 10) -> list[LayerError]:
    """The `n` records with the largest relative error, largest first (NaN counts as largest)."""
    return sorted(records, key=lambda r: math.inf if math.isnan(r.rel_error) else r.rel_error,
                  reverse=True)[:n]


def print_worst(records: list[LayerError], n: int = 10, console: Console | None = None) -> None:
    """Print the `n` worst layers as a rich table, with each method's statistics."""
    rows = worst(records, n)
    measure = rows[0].measure if rows else "output"
    stat_names = sorted({key for r in rows for key in r.method_stats} - {f"{measure}_rel_error"})
    table = Table(title=f"{len(rows)} worst of {len(records)} layers by relative {measure} error")
    table.add_column("#", justify="right")
    table.add_column("layer", overflow="fold")  # long module names wrap at 80 columns, never cut
    table.add_column(f"relative {measure} error", justify="right")
    for name in stat_names:
        table.add_column(name, justify="right")
    for rank, r in enumerate(rows, 1):
        stats = [f"{r.method_stats[s]:.4g}" if s in r.method_stats else "-" for s in stat_names]
        table.add_row(str(rank), r.name, f"{r.rel_error:.4g}", *stats)
    (console or Console()).print(table)


def plot_errors(records: list[LayerError], out_png: str | Path, title: str | None = None) -> Path:
    """Draw relative error as a heatmap: decoder block across, projection kind down.

    Colour is on a log scale, since errors typically span orders of magnitude between
    layers (down_proj and early blocks stand out). Missing cells (a layer left unquantized)
    are grey; NaN or infinite errors (a broken layer) are red; errors of 0 are drawn at the
    smallest positive error; layers outside the blocks are not drawn (print_worst lists
    them). Small grids are annotated with values.
    """
    try:
        import matplotlib
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'qtool[plot]'") from None

    matplotlib.use("Agg")  # files only: no display on servers and in tests
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    grid, missing, blocks, kinds = _to_grid(records)
    positive = grid[np.isfinite(grid) & (grid > 0)]
    low = positive.min() if positive.size else 1e-12
    # At least one decade, so that a narrow spread of errors is not painted as a dramatic one.
    high = max(positive.max(), low * 10) if positive.size else 1e-11
    # Broken cells go above the colour range, into the colour map's "over" colour (matplotlib
    # would treat NaN or inf as missing).
    shown = np.ma.masked_array(np.where(np.isfinite(grid), np.clip(grid, low, None), high * 10), mask=missing)

    # Cells about 0.32 x 0.42 inches; room on the left for kind names, right for the colorbar.
    fig, ax = plt.subplots(figsize=(max(6.0, 2.8 + 0.32 * len(blocks)), max(3.0, 1.6 + 0.42 * len(kinds))))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85", over="red")
    image = ax.imshow(shown, cmap=cmap, norm=LogNorm(vmin=low, vmax=high), aspect="auto",
                      interpolation="nearest")

    ax.set_xticks(range(len(blocks)), [str(b) for b in blocks], fontsize=8)
    ax.set_yticks(range(len(kinds)), kinds, fontsize=9)
    ax.set_xlabel("decoder block")
    ax.set_title(title or f"Relative error per layer ({len(records)} layers)")
    ax.tick_params(length=0)
    # Thin white lines between cells keep neighbouring cells of similar colour apart.
    ax.set_xticks(np.arange(len(blocks) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(kinds) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)

    if grid.size <= _ANNOTATE_MAX_CELLS:
        _annotate(ax, grid, missing, image)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    colorbar.set_label(f"relative {records[0].measure} error (log scale)")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=150)
    plt.close(fig)
    return out_png


def _to_grid(records: list[LayerError]) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
    """Errors [kinds, blocks], a [kinds, blocks] mask of cells with no record, the block
    indices and the kinds.

    Kinds follow their record order in the block that has the most kinds (the model's module
    order, even when some blocks lack a kind), then any others in order of first appearance.
    """
    in_blocks = [r for r in records if r.block is not None]
    if not in_blocks:
        raise ValueError("no records with a decoder block index to plot")
    blocks = sorted({r.block for r in in_blocks})
    kinds_of = {b: list(dict.fromkeys(r.kind for r in in_blocks if r.block == b)) for b in blocks}
    fullest = max(blocks, key=lambda b: len(kinds_of[b]))  # max() keeps the first of equals
    kinds = list(dict.fromkeys([*kinds_of[fullest], *(r.kind for r in in_blocks)]))
    column = {b: i for i, b in enumerate(blocks)}
    row = {k: i for i, k in enumerate(kinds)}
    grid = np.full((len(kinds), len(blocks)), np.nan)
    missing = np.ones(grid.shape, dtype=bool)
    for r in in_blocks:
        cell = row[r.kind], column[r.block]
        if not missing[cell]:
            raise ValueError(f"two records for block {r.block}, kind {r.kind!r}")
        grid[cell], missing[cell] = r.rel_error, False
    return grid, missing, blocks, kinds


def _annotate(ax, grid: np.ndarray, missing: np.ndarray, image) -> None:
    """Write each cell's value in black or white, whichever reads better on its colour."""
    for (i, j), value in np.ndenumerate(grid):
        if missing[i, j]:
            continue
        shown = max(value, image.norm.vmin) if math.isfinite(value) else 10 * image.norm.vmax
        red, green, blue, _ = image.cmap(image.norm(shown))
        luminance = 0.299 * red + 0.587 * green + 0.114 * blue
        ax.text(j, i, f"{value:.2g}", ha="center", va="center", fontsize=7,
                color="black" if luminance > 0.5 else "white")


def _parse_record(entry: object, path: Path, index: int) -> LayerError:
    where = f"{path}: layers[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = {"name", "kind", "rel_error"} - entry.keys()
    if missing:
        raise ValueError(f"{where}: missing {sorted(missing)}")
    block, rel_error, stats = entry.get("block"), entry["rel_error"], entry.get("method_stats") or {}
    if block is not None and (not isinstance(block, int) or isinstance(block, bool) or block < 0):
        raise ValueError(f"{where}: block must be a non-negative integer or null, got {block!r}")
    if rel_error is not None and (not _is_number(rel_error) or rel_error < 0):
        raise ValueError(f"{where}: rel_error must be a non-negative number or null, got {rel_error!r}")
    if not isinstance(stats, dict) or not all(_is_number(v) for v in stats.values()):
        raise ValueError(f"{where}: method_stats must map names to numbers, got {stats!r}")
    if not isinstance(entry["name"], str) or not isinstance(entry["kind"], str):
        raise ValueError(f"{where}: name and kind must be strings")
    return LayerError(entry["name"], block, entry["kind"], None if rel_error is None else float(rel_error),
                      {k: float(v) for k, v in stats.items()})


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
