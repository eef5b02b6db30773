"""Broken inputs for the reliability tests: models with NaN weights, checkpoints damaged on disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from conftest import save_tiny, tiny_llama, tiny_tokenizer

# Words the tiny tokenizer knows, so calibration and evaluation text is not all <unk>.
TEXT = ("the city of the world was one of the first and the most used in the state . " * 400).strip()


def text_file(path: Path) -> Path:
    path.write_text(TEXT + "\n")
    return path


def model_with(path: Path, value: float, name: str = "model.layers.0.mlp.down_proj.weight") -> Path:
    """A tiny float model directory whose parameter `name` holds one `value` (NaN, Inf)."""
    model = tiny_llama()
    with torch.no_grad():
        model.get_parameter(name)[3, 5] = value
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def copy_with_tensor(src: Path, dst: Path, name: str, change) -> Path:
    """A copy of checkpoint `src` whose tensor `name` is replaced by `change(tensor)`."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    tensors[name] = change(tensors[name])
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def copy_with_config(src: Path, dst: Path, **weights) -> Path:
    """A copy of checkpoint `src` whose first scheme's weight arguments are edited in config.json."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    group = next(iter(config["quantization_config"]["config_groups"].values()))
    group["scheme"]["weights"].update(weights)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary folders a write left behind anywhere under `folder`."""
    return sorted(str(p) for p in Path(folder).rglob(".*") if ".tmp-" in p.name or ".old-" in p.name)


__all__ = ["TEXT", "copy_with_config", "copy_with_tensor", "leftovers", "model_with", "save_tiny", "text_file"]
