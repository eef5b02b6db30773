"""Load any checkpoint qtool reads into a model with QuantLinear modules: qtool's own format
(checkpoint.py) and compressed-tensors (converted by compressed.py); and conversions that start by
loading one (`export_compressed_tensors`).

Above both format modules, so that neither imports the other's reader.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import (
    CheckpointError,
    empty_model,
    raw_quantization_config,
    read_quantization_config,
    read_tensors,
)
from .compressed import import_compressed_tensors, write_compressed_tensors
from .linear import replace_linears
from .moe import unfuse_experts
from .scheme import QuantizationConfig
from .validation import check_layer_sizes, check_tensor_layouts


def read_checkpoint(path: str | Path) -> tuple[QuantizationConfig, dict[str, torch.Tensor]]:
    """A checkpoint's config and tensors in qtool's layout; compressed-tensors checkpoints are converted."""
    if raw_quantization_config(path).get("quant_method") == "compressed-tensors":
        return import_compressed_tensors(path)
    return read_quantization_config(path), read_tensors(path)


def read_validated(path: str | Path, dtype: torch.dtype | None = None
                   ) -> tuple[nn.Module, QuantizationConfig, dict[str, torch.Tensor]]:
    """A checkpoint's config and tensors, checked against the model its config describes.

    Returns that model on the meta device with QuantLinear modules (no memory), the config and
    the tensors. Raises CheckpointError naming the first tensor that is missing, unexpected, or
    of another dtype or shape than the config implies (quantize/validation.py).
    """
    path = Path(path)
    qconfig, tensors = read_checkpoint(path)
    model = empty_model(path, dtype)
    unfuse_experts(model)  # checkpoints store experts as per-expert linears (moe.py)
    replace_linears(model, qconfig.module_schemes(), device="meta")
    slots = model.state_dict()
    expected = set(slots)
    tied = set(tied_names(model))
    missing = sorted(expected - set(tensors) - tied)
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match its config: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    try:
        check_tensor_layouts(slots, tensors, f"checkpoint {path}")
        check_layer_sizes(model, tensors, f"checkpoint {path}")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return model, qconfig, tensors


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[nn.Module, QuantizationConfig]:
    """Build the model of a checkpoint with QuantLinear modules and load its tensors.

    Reads qtool checkpoints and compressed-tensors ones (converted by `compressed.import_compressed_tensors`),
    checked first by `read_validated`.
    """
    path = Path(path)
    model, qconfig, tensors = read_validated(path, dtype)
    slots = model.state_dict()
    expected, tied = set(slots), set(tied_names(model))
    # assign=True keeps each tensor's dtype: cast floats to the model's (scales and FP8 codes keep theirs).
    tensors = {k: t.to(slots[k].dtype) if t.is_floating_point() else t for k, t in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=False, assign=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path}: {str(err).splitlines()[-1].strip()}") from None
    if tied & (expected - set(tensors)):
        model.tie_weights()
    for name, param in list(model.named_parameters()):
        if param.device.type == "meta":
            raise CheckpointError(f"checkpoint {path} has no tensor for {name}")
    model.to(device).eval()
    return model, qconfig


def tied_names(model: nn.Module) -> list[str]:
    """Names of parameters that are filled by weight tying rather than stored (lm_head.weight)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return []
    keys = getattr(model, "_tied_weights_keys", None) or []
    return list(keys.keys() if isinstance(keys, dict) else keys)


def export_compressed_tensors(checkpoint_dir: str | Path, out_dir: str | Path, *,
                              overwrite: bool = False) -> Path:
    """Convert a qtool checkpoint directory into a compressed-tensors one; returns `out_dir`."""
    model, _ = load_checkpoint(checkpoint_dir)
    return write_compressed_tensors(model, out_dir, source_dir=checkpoint_dir, overwrite=overwrite)
