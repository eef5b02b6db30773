"""evaluate(): perplexity, KL and top-1 agreement against independent float64 computations."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from transformers import LlamaConfig, LlamaForCausalLM

from quantize.evaluate import EvalResult, evaluate, print_table

VOCAB = 256


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
    )
    return LlamaForCausalLM(config).eval()


def perturbed(model: torch.nn.Module, scale: float = 0.3, seed: int = 1) -> torch.nn.Module:
    """A copy with Gaussian noise on every linear weight, standing in for a quantized model."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in other.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                w += scale * w.std() * torch.randn(w.shape, generator=generator)
    return other


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def other(model):
    return perturbed(model)


@pytest.fixture(scope="module")
def windows():
    # 5 windows so that batch_size 3 leaves a partial last batch.
    return torch.randint(0, VOCAB, (5, 33), generator=torch.Generator().manual_seed(2))


def reference_log_probs(model, windows) -> torch.Tensor:
    """float64 next-token log-probs [W, L-1, V], one window per forward pass."""
    with torch.no_grad():
        logits = torch.cat([model(input_ids=w[None]).logits for w in windows])
    return F.log_softmax(logits[:, :-1].double(), dim=-1)


def test_perplexity_matches_transformers_loss(model, windows):
    with torch.no_grad():
        losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    # Every window predicts the same number of tokens, so the token mean is the window mean.
    expected_nll = sum(losses) / len(losses)
    result = evaluate(model, windows, progress=False)
    assert result.nll == pytest.approx(expected_nll, rel=1e-5)
    assert evaluate(model, windows.int(), progress=False).nll == result.nll  # int32 ids work too
    assert result.perplexity == pytest.approx(math.exp(expected_nll), rel=1e-5)
    assert (result.num_tokens, result.num_windows, result.seq_len) == (5 * 32, 5, 33)
    assert result.kl_divergence is result.top1_agreement is result.base_perplexity is None


def test_against_itself_kl_is_zero_and_top1_is_one(model, windows):
    result = evaluate(model, windows, base=copy.deepcopy(model), batch_size=2, progress=False)
    assert result.kl_divergence == pytest.approx(0.0, abs=1e-9)
    assert result.top1_agreement == 1.0
    assert result.base_perplexity == pytest.approx(result.perplexity, rel=1e-6)


def test_kl_and_top1_match_float64_brute_force(model, other, windows):
    base_lp = reference_log_probs(model, windows)
    lp = reference_log_probs(other, windows)
    targets = windows[:, 1:, None]
    expected_kl = (base_lp.exp() * (base_lp - lp)).sum(-1).mean().item()
    expected_top1 = (base_lp.argmax(-1) == lp.argmax(-1)).double().mean().item()
    expected_base_ppl = math.exp(-base_lp.gather(-1, targets).mean().item())
    expected_ppl = math.exp(-lp.gather(-1, targets).mean().item())

    result = evaluate(other, windows, base=model, progress=False)
    assert expected_kl > 1e-3  # the perturbation is visible
    assert result.kl_divergence == pytest.approx(expected_kl, rel=1e-5)
    assert result.top1_agreement == pytest.approx(expected_top1, abs=1e-12)
    assert 0.0 < result.top1_agreement < 1.0
    assert result.base_perplexity == pytest.approx(expected_base_ppl, rel=1e-5)
    assert result.perplexity == pytest.approx(expected_ppl, rel=1e-5)


def test_batch_size_does_not_change_results(model, other, windows):
    one = evaluate(other, windows, base=model, batch_size=1, progress=False)
    three = evaluate(other, windows, base=model, batch_size=3, progress=False)
    assert three.num_tokens == one.num_tokens
    for field in ("perplexity", "nll", "kl_divergence", "base_perplexity"):
        assert getattr(three, field) == pytest.approx(getattr(one, field), rel=1e-5), field
    assert three.top1_agreement == one.top1_agreement


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(4, dtype=torch.long), "shape"),
        (torch.zeros(2, 1, dtype=torch.long), "shape"),
        (torch.zeros(2, 8), "integer"),
    ],
)
def test_rejects_bad_windows(model, bad, match):
    with pytest.raises(ValueError, match=match):
        evaluate(model, bad, progress=False)


def test_bfloat16_model_is_scored_in_float32(model, windows):
    half = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        logits = torch.cat([half(input_ids=w[None]).logits for w in windows]).float()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), windows[:, 1:].reshape(-1)).item()
    result = evaluate(half, windows, batch_size=5, progress=False)
    assert result.nll == pytest.approx(expected, rel=1e-5)


def test_progress_bar_and_table_render(model, windows):
    result = evaluate(model, windows, base=model, progress=True)
    out = io.StringIO()
    print_table(result, "tiny llama", console=Console(file=out, width=100))
    text = out.getvalue()
    assert "tiny llama" in text and "top-1 agreement" in text and "100.00 %" in text
    assert f"{result.perplexity:.4f}" in text


def test_to_dict_round_trips():
    result = EvalResult(perplexity=2.0, nll=math.log(2.0), num_tokens=10, num_windows=1, seq_len=11)
    assert EvalResult(**result.to_dict()) == result
