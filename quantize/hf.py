"""transformers integration: `from_pretrained` loads qtool checkpoints into QuantLinear modules.

After `import quantize` (which registers quant_method "qtool" as soon as transformers imports its
quantizer registry, see quantize/_hooks.py):

    model = AutoModelForCausalLM.from_pretrained("out/w4a16", device_map="auto")

This follows transformers 5.x's `HfQuantizer` contract: transformers builds the model on the meta
device, `preprocess_model` swaps the checkpoint's quantized linears for empty QuantLinear modules,
transformers' loader assigns the stored tensors to their buffers as they are (nothing is
re-quantized; `param_needs_quantization` stays False), and `postprocess_model` leaves the model
ready to run. `save_pretrained` writes a qtool checkpoint again.

compressed-tensors checkpoints load the same way inside `compressed_tensors_via_qtool()`, and always
when the compressed-tensors package is not installed (transformers could not load them then): their
config is converted once the model skeleton exists, the stored tensors are loaded into buffers of
their stored shapes, then converted to QuantLinear's layout (quantize/compressed.py).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .checkpoint import TRANSFORMERS_GUARD, TRANSFORMERS_GUARD_KEY
from .compressed import CT_METHOD, CtLayer, layer_to_qtool, plan_import
from .linear import QuantLinear, replace_linears
from .moe import unfuse_experts
from .scheme import QUANT_METHOD, QuantizationConfig
from .validation import check_tensor_layouts

# safetensors dtype names of the integer and FP8 tensors a compressed-tensors layer stores;
# float tensors (scales) are staged as float32 and cast by transformers' loader.
_STORED_DTYPES = {"I8": torch.int8, "I32": torch.int32, "I64": torch.int64, "F8_E4M3": torch.float8_e4m3fn}
# Every safetensors dtype name a qtool checkpoint can hold, to check stored tensors exactly.
_HEADER_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                  "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                  "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


class QtoolConfig(QuantizationConfigMixin):
    """transformers' handle on a checkpoint's quantization_config.

    qconfig: qtool's config; for a compressed-tensors checkpoint it is filled in by the quantizer
    once the model skeleton exists (its targets may name module classes), from `compressed_tensors`.
    """

    def __init__(self, qconfig: QuantizationConfig | None = None,
                 compressed_tensors: dict[str, Any] | None = None):
        if (qconfig is None) == (compressed_tensors is None):
            raise ValueError("QtoolConfig takes a qtool QuantizationConfig or a compressed-tensors config")
        self.quant_method = QUANT_METHOD
        self.qconfig = qconfig
        self.compressed_tensors = compressed_tensors

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs):
        if config_dict.get("quant_method") == CT_METHOD:
            config = cls(compressed_tensors=dict(config_dict))
        else:
            config = cls(QuantizationConfig.from_dict(config_dict))
        return (config, kwargs) if return_unused_kwargs else config

    def to_dict(self) -> dict[str, Any]:
        """config.json's quantization_config: qtool's, converted checkpoints included (they run qtool's layout)."""
        return self.qconfig.to_dict() if self.qconfig is not None else dict(self.compressed_tensors)

    def __iter__(self):
        yield from self.to_dict().items()


class QtoolHfQuantizer(HfQuantizer):
    """Loads qtool (and converted compressed-tensors) checkpoints into QuantLinear modules; never quantizes."""

    # Pre-quantized checkpoints only: a float model with quantization_config=QtoolConfig(...) is refused.
    requires_calibration = True
    quantization_config: QtoolConfig

    def __init__(self, quantization_config: QtoolConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.ct_layers: dict[str, CtLayer] = {}

    # The guard that stops plain transformers (checkpoint.TRANSFORMERS_GUARD) must be gone before
    # transformers resolves the weight files. Which HfQuantizer hook sees the model config before
    # that differs between releases (5.0-5.17: update_tp_plan and update_ep_plan; later:
    # update_attn_implementation), so every config hook drops it and the first one called wins.
    def update_tp_plan(self, config):
        return _drop_guard(config)

    def update_ep_plan(self, config):
        return _drop_guard(config)

    def update_attn_implementation(self, config):
        return _drop_guard(config)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        config = self.quantization_config
        if config.qconfig is None:
            config.qconfig, self.ct_layers = plan_import(model, config.compressed_tensors)
        unfuse_experts(model)  # qtool stores experts as per-expert linears (quantize/moe.py)
        replace_linears(model, config.qconfig.module_schemes(), device="meta")
        if self.ct_layers:
            stored = _stored_layouts(checkpoint_files or [], set(self.ct_layers))
            for name in self.ct_layers:
                if not stored[name]:
                    raise ValueError(f"the compressed-tensors checkpoint has no tensors for {name}")
                empty = {key: torch.empty(shape, dtype=dtype, device="meta")
                         for key, (shape, dtype) in stored[name].items()}
                _replace_buffers(model.get_submodule(name), empty)
        elif checkpoint_files:
            _check_stored(model, checkpoint_files, set(config.qconfig.module_schemes()))
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        for name, layer in self.ct_layers.items():
            module = model.get_submodule(name)
            local = dict(module.named_buffers(recurse=False))
            _replace_buffers(module, layer_to_qtool(local, layer, module.out_features, module.in_features))
        _guard_saves(model)
        return model

    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


# Hooks transformers calls with the model config before resolving the weight files, in some release.
CONFIG_HOOKS = ("update_tp_plan", "update_ep_plan", "update_attn_implementation")


def _drop_guard(config):
    if getattr(config, TRANSFORMERS_GUARD_KEY, None) == TRANSFORMERS_GUARD:
        delattr(config, TRANSFORMERS_GUARD_KEY)
    return config


Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # local tensor name -> (shape, dtype)


def _headers(files: list[str], modules: set[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shape and safetensors dtype name of every stored tensor of `modules`, read from the file headers."""
    out = {}
    for file in files:
        with safe_open(file, framework="pt") as fh:
            for key in fh.keys():
                if key.rpartition(".")[0] in modules:
                    tensor = fh.get_slice(key)
                    out[key] = (tuple(tensor.get_shape()), tensor.get_dtype())
    return out


def _stored_layouts(files: list[str], modules: set[str]) -> dict[str, Layout]:
    """Shape and staging dtype of every stored tensor (but bias) of `modules`."""
    out: dict[str, Layout] = {m: {} for m in modules}
    for key, (shape, dtype) in _headers(files, modules).items():
        module, _, local = key.rpartition(".")
        if local != "bias":
            out[module][local] = (shape, _STORED_DTYPES.get(dtype, torch.float32))
    return out


def _check_stored(model: nn.Module, files: list[str], modules: set[str]) -> None:
    """Refuse a qtool checkpoint whose stored tensors do not have the dtype and shape of the buffers
    its config implies (transformers' loader would cast an int32 code tensor stored as float)."""
    slots = {f"{name}.{key}": t for name in modules for key, t in model.get_submodule(name).state_dict().items()}
    stored = {key: torch.empty(shape, dtype=_HEADER_DTYPES.get(dtype, torch.uint8), device="meta")
              for key, (shape, dtype) in _headers(files, modules).items()}
    check_tensor_layouts(slots, stored, f"checkpoint {Path(files[0]).parent}", values=False)


def _replace_buffers(module: QuantLinear, tensors: dict[str, torch.Tensor]) -> None:
    for name in list(module._buffers):
        delattr(module, name)
    for name, tensor in tensors.items():
        module.register_buffer(name, tensor)


def _guard_saves(model: nn.Module) -> None:
    """Make `model.save_pretrained` put the guard back into config.json.

    transformers' config.save_pretrained drops `transformers_weights` on purpose; without the guard a
    saved qtool checkpoint would load silently wrong in plain transformers.
    """
    save = type(model).save_pretrained

    @functools.wraps(save)
    def save_pretrained(save_directory, *args, **kwargs):
        result = save(model, save_directory, *args, **kwargs)
        config_file = Path(save_directory) / "config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text())
            config[TRANSFORMERS_GUARD_KEY] = TRANSFORMERS_GUARD
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return result

    model.save_pretrained = save_pretrained


def register() -> None:
    """Let transformers load quant_method "qtool", and compressed-tensors too when its package is missing."""
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantization_config(QUANT_METHOD)(QtoolConfig)
        register_quantizer(QUANT_METHOD)(QtoolHfQuantizer)
    if importlib.util.find_spec("compressed_tensors") is None:
        AUTO_QUANTIZATION_CONFIG_MAPPING[CT_METHOD] = QtoolConfig


@contextlib.contextmanager
def compressed_tensors_via_qtool() -> Iterator[None]:
    """Inside this block, from_pretrained loads compressed-tensors checkpoints into QuantLinear modules."""
    register()
    previous = AUTO_QUANTIZATION_CONFIG_MAPPING.get(CT_METHOD)
    AUTO_QUANTIZATION_CONFIG_MAPPING[CT_METHOD] = QtoolConfig
    try:
        yield
    finally:
        AUTO_QUANTIZATION_CONFIG_MAPPING[CT_METHOD] = previous


# Importing this module registers it: quantize/__init__.py imports it once transformers' registry loads.
register()
