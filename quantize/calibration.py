"""`qtool calibrate`: observe every target linear's inputs block by block, save the statistics.

A statistics directory holds `stats.safetensors` (per layer: the observer's state, e.g. running
min/max or its histogram) and `stats.json` (the observer, its target format, and per layer the
chosen range and scale). Static activation scales for `qtool quantize --calibration` are recomputed
from the saved observer state for each layer's own scheme, so one calibration serves INT8 and
FP8 alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from .checkpoint import atomic_directory
from .observers import make_observer
from .pipeline import BlockContext, run_sequential
from .primitives import qparams_from_range
from .scheme import QuantArgs, QuantScheme, SchemeError

STATS_TENSORS = "stats.safetensors"
STATS_JSON = "stats.json"


@dataclass
class CalibrationStats:
    """observer: its name; target: the format ranges were chosen for; layers: name -> tensors and meta."""

    observer: str
    target: QuantArgs
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        with atomic_directory(out_dir, overwrite) as tmp:
            flat = {f"{layer}::{key}": t.contiguous() for layer, ts in self.tensors.items() for key, t in ts.items()}
            save_file(flat, tmp / STATS_TENSORS)
            doc = {"observer": self.observer, "target": self.target.to_dict(), "settings": self.settings,
                   "layers": self.meta}
            (tmp / STATS_JSON).write_text(json.dumps(doc, indent=2))
        return Path(out_dir)

    def input_scales(self, schemes: dict[str, QuantScheme]) -> dict[str, torch.Tensor]:
        """Static activation scale [1] for every layer (full name -> scheme) whose scheme quantizes its
        inputs statically."""
        scales = {}
        for name, scheme in schemes.items():
            act = scheme.input_activations
            if act is None or act.dynamic:
                continue
            if name not in self.tensors:
                raise ValueError(f"the calibration statistics have no entry for {name}; re-run `qtool calibrate`")
            obs = make_observer(self.observer, act)
            state = {k[len("input."):]: v for k, v in self.tensors[name].items() if k.startswith("input.")}
            obs.load_state_dict(state, self.meta[name]["input"])
            lo, hi = obs.result()
            scales[name] = qparams_from_range(lo.reshape(1), hi.reshape(1), act)[0]
        return scales


def load_stats(path: str | Path) -> CalibrationStats:
    path = Path(path)
    if not (path / STATS_JSON).is_file() or not (path / STATS_TENSORS).is_file():
        raise ValueError(f"not a calibration statistics directory (needs {STATS_JSON} and {STATS_TENSORS}): {path}")
    try:
        doc = json.loads((path / STATS_JSON).read_text())
        flat = load_file(path / STATS_TENSORS)
        target = QuantArgs.from_dict(doc["target"])
    except (json.JSONDecodeError, KeyError, SchemeError, OSError) as err:
        raise ValueError(f"corrupt calibration statistics in {path}: {err}") from None
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        layer, _, name = key.partition("::")
        tensors.setdefault(layer, {})[name] = t
    return CalibrationStats(doc["observer"], target, tensors, doc["layers"], doc.get("settings", {}))


def calibrate(model: nn.Module, batches: list[torch.Tensor], *, observer: str = "minmax", target: QuantArgs,
              device: str | torch.device = "cpu", progress: bool = True,
              observer_args: dict[str, Any] | None = None) -> CalibrationStats:
    """Observe the inputs of every linear inside the decoder blocks, one block on `device` at a time."""
    make_observer(observer, target, **(observer_args or {}))  # fail early on an unknown observer
    stats = CalibrationStats(observer, target, settings=dict(observer_args or {}))

    def process(ctx: BlockContext) -> None:
        names = [n for n, m in ctx.block.named_modules() if isinstance(m, nn.Linear)]
        observers = {n: make_observer(observer, target, **(observer_args or {})) for n in names}

        def hook(name, x, y):
            try:
                observers[name].observe(x)
            except ValueError as err:
                raise ValueError(f"{ctx.prefix}{name}: {err}") from None
        ctx.capture(names, hook)
        for n in names:
            full = ctx.prefix + n
            tensors, meta = observers[n].state_dict()
            lo, hi = observers[n].result()
            scale, _ = qparams_from_range(lo, hi, target)
            stats.tensors[full] = {f"input.{k}": v.cpu() for k, v in tensors.items()}
            stats.meta[full] = {"input": meta, "range": [float(lo.min()), float(hi.max())],
                                "scale": float(scale.max()), "tokens": observers[n].num_observed}
        return None

    run_sequential(model, batches, process, device=device, progress=progress, description="calibrating")
    return stats
