"""Shared fixtures: tiny models built from a config (no downloads), real text from ../shared when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=128, max_position_embeddings=256, tie_word_embeddings=True)
    cfg.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def calib_ids():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 128, (2, 32), generator=g) for _ in range(3)]


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/wikitext-2 not present")
    return SHARED_DATA
