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

# Llama-3-70B's shapes (hidden 8192, intermediate 28672, 64 heads, 8 KV heads, 80 blocks).
LLAMA_70B = {**LLAMA_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
             "num_attention_heads": 64, "num_key_value_heads": 8}

# Llama-3.2-1B's shapes (hidden 2048, intermediate 8192, 16 blocks, 32 heads of 64, 8 KV heads, tied embeddings;
# rotary without the long-context scaling, which changes no shape): the small models served at batch, whose layers
# (2048 x 3072 fused q/k/v, 2048 x 2048, 2048 x 16384 fused gate/up, 8192 x 2048) sit below the 8B's.
LLAMA_1B = {**LLAMA_8B, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "tie_word_embeddings": True}

# Qwen3-30B-A3B's shapes (config.json on the hub): 48 blocks of attention plus 128 experts, 8 per token,
# each 2048 -> 768 -> 2048; `--layers` keeps a few blocks (one is 1.2 GB of experts in bf16).
QWEN3_MOE_30B_A3B = {
    "model_type": "qwen3_moe",
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
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

TINY_MOE = {**QWEN3_MOE_30B_A3B, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
            "num_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256, "max_position_embeddings": 4096,
            "bos_token_id": 1, "eos_token_id": 2}

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

CONFIGS: dict[str, dict] = {"llama-8b": LLAMA_8B, "llama-70b": LLAMA_70B, "llama-1b": LLAMA_1B, "smollm2-135m": SMOLLM2_135M,
                            "qwen3-moe-30b-a3b": QWEN3_MOE_30B_A3B, "tiny": TINY, "tiny-moe": TINY_MOE}


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
    model.tie_weights()  # transformers 5.0 leaves a meta-device model's lm_head untied (later releases tie it)
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


def write_random_model(config: str | Path | dict, out_dir: str | Path, *, layers: int | None = None,
                       dtype: torch.dtype = torch.bfloat16, seed: int = 0, std: float = 0.02,
                       device: torch.device | str = "cpu") -> Path:
    """Write a model with random weights as a sharded safetensors directory (config.json, index, one
    shard per decoder block plus one for the rest), holding one block in memory at a time.

    layers: number of decoder blocks (default: the config's). Linear and embedding weights are
    N(0, std), norm weights 1; transformers loads the result like any checkpoint.
    device: where the random numbers are drawn ("cuda" is much faster for an 8B or 70B model).
    """
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    from .checkpoint import write_index
    from .mappings import find_architecture, find_blocks

    cfg = _resolve_config(config)
    if layers is not None:
        cfg.num_hidden_layers = layers
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    prefix, blocks = find_blocks(model, find_architecture(model))
    params = dict(model.named_parameters())  # tied parameters appear once, under the embedding's name
    groups = [[n for n in params if n.startswith(f"{prefix}.{i}.")] for i in range(len(blocks))]
    groups.append([n for n in params if not n.startswith(prefix + ".")])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device).manual_seed(seed)
    weight_map, total = {}, 0
    for i, names in enumerate(groups):
        tensors = {n: _random_tensor(params[n], gen, std, dtype) for n in names}
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(tensors, out_dir / fname, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, fname))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    write_index(out_dir, weight_map, total)
    cfg.dtype = dtype
    cfg.save_pretrained(out_dir)
    return out_dir


def _random_tensor(param: torch.Tensor, gen: torch.Generator, std: float, dtype: torch.dtype) -> torch.Tensor:
    """N(0, std) for matrices and 3-D experts [E, N, K]; ones for vectors."""
    if param.dim() == 1:  # norm weights and biases
        return torch.ones(param.shape, dtype=dtype)
    return (torch.randn(param.shape, generator=gen, device=gen.device) * std).to(dtype).cpu()
