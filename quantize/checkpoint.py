"""qtool checkpoints: safetensors shards plus config.json with a typed `quantization_config`.

Layout of a checkpoint directory:
  config.json                      the model's config plus `quantization_config` (scheme.QuantizationConfig)
  model.safetensors                or model-0000i-of-0000n.safetensors + model.safetensors.index.json
  layer_errors.json                per-layer relative output error and method statistics
  tokenizer files, generation_config.json   copied from the source model
Every file is written into a temporary directory beside the target, which is renamed into
place only when complete: a crash never leaves a half-written checkpoint (quantize/destination.py).

This module writes and reads qtool's own format; loading.py loads any checkpoint qtool reads
(this format and compressed-tensors, which compressed.py converts) into a model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .destination import atomic_directory
from .linear import QuantLinear
from .scheme import QuantizationConfig, SchemeError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit its config; the message names the file."""


def unique_state_dict(model: nn.Module, dtype: torch.dtype | None = None,
                      prefix: str = "") -> dict[str, torch.Tensor]:
    """State dict without aliases: a tensor shared by several names (tied embeddings) is written once.

    dtype: floating parameters (embeddings, norms, biases: what stays unquantized) are stored in it;
    buffers (scales) keep theirs. Tensors on the meta device (not loaded: a released block) are left out.
    """
    params = {prefix + n for n, _ in model.named_parameters(remove_duplicate=False)}
    seen: dict[tuple[int, int], str] = {}
    out = {}
    for name, t in model.state_dict(prefix=prefix).items():
        if t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen[key] = name
        t = t.detach()
        if dtype is not None and name in params and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t.contiguous().cpu()
    return out


def _shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    return shards


# transformers reads this config.json field as the name of the weights file and refuses any name
# that is not *.safetensors, quoting it: plain transformers, which does not know quant_method "qtool"
# (it warns and would load random weights), stops with this message instead. quantize.hf removes it
# before transformers resolves the files.
TRANSFORMERS_GUARD_KEY = "transformers_weights"
TRANSFORMERS_GUARD = ("this is a qtool checkpoint (quant_method 'qtool') that transformers cannot load by itself: "
                      "pip install qtool, then `import quantize` before from_pretrained")


def write_checkpoint(tensors: dict[str, torch.Tensor], config: dict[str, Any], out_dir: str | Path, *,
                     source_dir: str | Path | None = None, overwrite: bool = False, max_shard_bytes: int = 4 << 30,
                     extra_json: dict[str, Any] | None = None, producer: str = "qtool") -> Path:
    """Write safetensors shards, config.json and the source's tokenizer files via a temporary directory."""
    with atomic_directory(out_dir, overwrite) as tmp:
        shards = _shard(tensors, max_shard_bytes)
        meta = {"format": "pt", "producer": producer}
        if len(shards) == 1:
            save_file(shards[0], tmp / SINGLE_NAME, metadata=meta)
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, tmp / fname, metadata=meta)
                weight_map.update(dict.fromkeys(shard, fname))
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            write_index(tmp, weight_map, total)
        write_metadata(tmp, config, extra_json, source_dir)
    return Path(out_dir)


def write_index(directory: Path, weight_map: dict[str, str], total_bytes: int) -> None:
    (directory / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total_bytes},
                                                    "weight_map": weight_map}, indent=2))


def write_metadata(directory: Path, config: dict[str, Any], extra_json: dict[str, Any] | None,
                   source_dir: str | Path | None) -> None:
    """config.json, the extra JSON files and the source's tokenizer files."""
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    for name, data in (extra_json or {}).items():
        (directory / name).write_text(json.dumps(data, indent=2))
    if source_dir is not None:
        for fname in COPIED_FILES:
            if (Path(source_dir) / fname).is_file():
                shutil.copy2(Path(source_dir) / fname, directory / fname)


def save_checkpoint(model: nn.Module, qconfig: QuantizationConfig, out_dir: str | Path, *,
                    source_dir: str | Path | None = None, overwrite: bool = False,
                    max_shard_bytes: int = 4 << 30, extra_json: dict[str, Any] | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write `model` (with QuantLinear modules) as a qtool checkpoint; returns the directory.
    dtype: of the unquantized float tensors (default: as they are in `model`)."""
    config = checkpoint_config(model.config, qconfig, dtype)
    return write_checkpoint(unique_state_dict(model, dtype), config, out_dir, source_dir=source_dir,
                            overwrite=overwrite, max_shard_bytes=max_shard_bytes, extra_json=extra_json)


def checkpoint_config(model_config: Any, qconfig: QuantizationConfig, dtype: torch.dtype | None) -> dict[str, Any]:
    """config.json of a checkpoint: the model's, its quantization_config, the guard, the stored float dtype."""
    config = model_config.to_dict()
    config["quantization_config"] = qconfig.to_dict()
    config[TRANSFORMERS_GUARD_KEY] = TRANSFORMERS_GUARD
    if dtype is not None:
        config["dtype"] = str(dtype).removeprefix("torch.")
    return config


def raw_quantization_config(path: str | Path) -> dict[str, Any]:
    """config.json's `quantization_config` as stored (qtool's or compressed-tensors')."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"not a model directory (no config.json): {path}")
    try:
        raw = json.loads(cfg_file.read_text()).get("quantization_config")
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt {cfg_file}: {err}") from None
    if raw is None:
        raise CheckpointError(f"{path} is not quantized (config.json has no quantization_config)")
    return raw


def read_quantization_config(path: str | Path) -> QuantizationConfig:
    raw = raw_quantization_config(path)
    try:
        return QuantizationConfig.from_dict(raw)
    except (SchemeError, KeyError, TypeError) as err:
        raise CheckpointError(f"corrupt quantization_config in {Path(path) / 'config.json'}: {err}") from None


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or sharded with an index)."""
    path = Path(path)
    if (path / INDEX_NAME).is_file():
        files = sorted(set(json.loads((path / INDEX_NAME).read_text())["weight_map"].values()))
    elif (path / SINGLE_NAME).is_file():
        files = [SINGLE_NAME]
    else:
        raise CheckpointError(f"no safetensors weights in {path}")
    tensors = {}
    for fname in files:
        if not (path / fname).is_file():
            raise CheckpointError(f"checkpoint shard missing: {path / fname}")
        try:
            tensors.update(load_file(path / fname))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"corrupt checkpoint file {path / fname}: {err}") from None
    return tensors


def empty_model(path: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """The float model of a checkpoint's config on the meta device (parameters only; no memory, no weights)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    for key in ("quantization_config", TRANSFORMERS_GUARD_KEY):
        if hasattr(config, key):
            delattr(config, key)
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or getattr(config, "dtype", None))


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
