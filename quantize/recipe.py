"""Recipes: which linear layers get which scheme and which method, as data (YAML or Python).

A recipe is an ordered list of entries; each module takes the FIRST entry whose scheme's
`targets` match its full name and whose `ignore` does not, so fragile layers are listed first
(see configs/mixed-w4a16-w8a16.yaml). The recipe-wide `ignore` list always wins.

YAML form:
    method: gptq                 # default method of every entry
    method_args: {damp: 0.01}
    ignore: ['(^|\\.)lm_head$']
    entries:
      - scheme: w8a16            # a preset name, or an inline scheme dict (see scheme.py)
        targets: ['model\\.layers\\.0\\.']
        method: rtn              # optional per-entry method
      - scheme: w4a16
        group_size: 64           # optional overrides of the weight arguments (group_size -1: per channel)
        method_args: {damp: 0.1} # per-entry settings, merged over the recipe's
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch.nn as nn
import yaml

from .scheme import LM_HEAD, QuantScheme, SchemeError, preset


@dataclass(frozen=True)
class RecipeEntry:
    scheme: QuantScheme
    method: str = "rtn"
    method_args: dict[str, Any] = field(default_factory=dict)

    def matches(self, name: str) -> bool:
        return (any(re.search(t, name) for t in self.scheme.targets)
                and not any(re.search(i, name) for i in self.scheme.ignore))


@dataclass(frozen=True)
class Recipe:
    entries: tuple[RecipeEntry, ...]
    ignore: tuple[str, ...] = ()

    def assign(self, model: nn.Module) -> dict[str, RecipeEntry]:
        """Full module name -> entry for every nn.Linear the recipe quantizes."""
        out = {}
        for name, module in model.named_modules():
            if not isinstance(module, nn.Linear) or any(re.search(i, name) for i in self.ignore):
                continue
            entry = next((e for e in self.entries if e.matches(name)), None)
            if entry is not None:
                out[name] = entry
        if not out:
            raise SchemeError("the recipe matches no Linear layer of this model; check its targets")
        return out

    def with_lm_head(self) -> Recipe:
        """This recipe with lm_head quantized too: the default LM_HEAD pattern dropped from every ignore list (any
        other pattern stays). The layers outside the decoder blocks get round-to-nearest weights (pipeline.py)."""
        entries = tuple(replace(e, scheme=replace(e.scheme, ignore=_without_lm_head(e.scheme.ignore)))
                        for e in self.entries)
        return Recipe(entries, _without_lm_head(self.ignore))

    @property
    def methods(self) -> list[str]:
        return sorted({e.method for e in self.entries})

    @classmethod
    def single(cls, scheme: QuantScheme, method: str, method_args: dict[str, Any] | None = None) -> Recipe:
        return cls((RecipeEntry(scheme, method, dict(method_args or {})),))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        known = {"method", "method_args", "ignore", "entries"}
        if unknown := set(d) - known:
            raise SchemeError(f"unknown recipe key(s) {sorted(unknown)}; expected {sorted(known)}")
        if not d.get("entries"):
            raise SchemeError("a recipe needs at least one entry under 'entries'")
        default_method = d.get("method", "rtn")
        default_args = d.get("method_args") or {}
        entries = []
        for i, e in enumerate(d["entries"]):
            e = dict(e)
            spec = e.pop("scheme", None)
            if spec is None:
                raise SchemeError(f"recipe entry {i} has no 'scheme'")
            scheme = preset(spec) if isinstance(spec, str) else QuantScheme.from_dict(spec)
            if "targets" in e:
                scheme = replace(scheme, targets=tuple(e.pop("targets")))
            if "ignore" in e:
                scheme = replace(scheme, ignore=tuple(e.pop("ignore")))
            method = e.pop("method", default_method)
            args = {**default_args, **(e.pop("method_args", None) or {})}
            if "group_size" in e:  # -1 or null: per channel, as on the command line
                scheme = replace(scheme, weights=scheme.weights.with_group_size(e.pop("group_size")))
            weight_overrides = {k: e.pop(k) for k in list(e) if k in scheme.weights.__dataclass_fields__}
            if weight_overrides:
                scheme = scheme.with_weights(**weight_overrides)
            if e:
                raise SchemeError(f"recipe entry {i}: unknown key(s) {sorted(e)}")
            entries.append(RecipeEntry(scheme, method, args))
        return cls(tuple(entries), tuple(d.get("ignore", ())))

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise SchemeError(f"recipe file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise SchemeError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise SchemeError(f"recipe {path} must be a mapping with 'entries'")
        return cls.from_dict(data)


def _without_lm_head(patterns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p for p in patterns if p != LM_HEAD)
