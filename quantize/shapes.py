"""Model shapes for speed measurements: built-in configs and models with random weights.

Speed depends on shapes, not on weight values, so `qtool bench --random-weights` and
benchmarks/profile_method.py build models from these configs (or any local config) without downloading
a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

# Shapes of Meta-Llama-3-8B (config.json on the hub); weights are random.
LLAMA_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}

# Same layout at toy size, for tests and smoke runs on CPU.
TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}

# SmolLM2-135M's shapes (the model of the quality tables), for timing methods without its weights.
SMOLLM2_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    "tie_word_embeddings": True,
}

CONFIGS: dict[str, dict] = {"llama-8b": LLAMA_8B, "smollm2-135m": SMOLLM2_135M, "tiny": TINY}


def random_model(
    config: str | Path | dict,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    *,
    seed: int = 0,
) -> PreTrainedModel:
    """A causal LM with randomly initialised weights, in eval mode.

    config: a name in CONFIGS ("llama-8b", "tiny"), a local model directory or config.json,
        or a config dict with a "model_type" key.
    The weights are allocated directly on `device`, so an 8B model never passes through host
    memory (and initialises in seconds on a GPU rather than minutes on a CPU).
    """
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(_resolve_config(config), dtype=dtype)
    return model.eval()


def _resolve_config(config: str | Path | dict):
    """A transformers config from a CONFIGS name, a local path, or a dict with "model_type"."""
    if isinstance(config, str) and config in CONFIGS:
        config = CONFIGS[config]
    elif isinstance(config, str | Path):
        path = Path(config)
        if path.is_dir():
            return AutoConfig.from_pretrained(path)
        if not path.is_file():
            raise ValueError(f"{config!r} is neither a built-in config {sorted(CONFIGS)} nor a local path")
        config = json.loads(path.read_text())
    if "model_type" not in config:
        raise ValueError("a config dict needs a 'model_type' key, e.g. 'llama'")
    options = dict(config)
    return AutoConfig.for_model(options.pop("model_type"), **options)
