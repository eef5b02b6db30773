"""Decode attention on the KV heads (quantize/attention.py): the logits transformers' SDPA attention gives, eager and
compiled, and left alone where it does not apply."""

from __future__ import annotations

import pytest
import torch
from transformers import StaticCache

import quantize.attention as attention
from quantize.attention import NAME, use_decode_attention
from quantize.shapes import TINY, random_model


def _decode_logits(model, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits [steps + 1, B, V] of a static-cache prefill of `prompt` [B, T] and `steps` single-token steps fed the
    prompt's tokens again (fixed inputs: a near tie in an argmax cannot send two runs down different paths)."""
    batch, length = prompt.shape
    cache = StaticCache(config=model.config, max_cache_len=length + steps)
    device = prompt.device

    def forward(ids, positions):
        return model(input_ids=ids, past_key_values=cache, cache_position=positions, use_cache=True).logits[:, -1]

    with torch.no_grad():
        out = [forward(prompt, torch.arange(length, device=device))]
        for i in range(steps):
            out.append(forward(prompt[:, i % length:i % length + 1], torch.tensor([length + i], device=device)))
    return torch.stack(out).float()


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (8, 2), (6, 3)])
def test_decode_logits_equal_transformers_sdpa(heads, kv_heads, monkeypatch):
    """Random fresh weights in float32, batch 2: every step's logits within 1e-5 of transformers' own, the decode
    steps through the packed SDPA (queries [B, KV, H / KV, D]), the prefill through transformers'."""
    model = random_model(dict(TINY, num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_size=16 * heads),
                         dtype=torch.float32, seed=heads)
    prompt = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(heads))
    expected = _decode_logits(model, prompt, 5)
    assert use_decode_attention(model) and model.config._attn_implementation == NAME
    shapes = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda q, *a, **k: shapes.append(tuple(q.shape)) or sdpa(q, *a, **k))
    got = _decode_logits(model, prompt, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    head_dim = model.config.head_dim if getattr(model.config, "head_dim", None) else 16
    assert (2, kv_heads, heads // kv_heads, head_dim) in shapes  # the decode steps took the packed path


def test_compiled_decode_step_equals_eager():
    """The packed path traces in one graph (fullgraph) and gives the eager logits."""
    model = random_model("tiny", dtype=torch.float32)
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    expected = _decode_logits(model, prompt, 3)
    use_decode_attention(model)
    torch._dynamo.reset()
    cache_holder = {}

    def step(ids, positions):
        return model(input_ids=ids, past_key_values=cache_holder["cache"], cache_position=positions,
                     use_cache=True).logits[:, -1]

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    batch, length = prompt.shape
    cache_holder["cache"] = StaticCache(config=model.config, max_cache_len=length + 3)
    with torch.no_grad():
        out = [step(prompt, torch.arange(length))]
        for i in range(3):
            out.append(compiled(prompt[:, i:i + 1], torch.tensor([length + i])))
    torch.testing.assert_close(torch.stack(out), expected, rtol=1e-5, atol=1e-5)


def test_left_alone_without_grouped_heads_or_sdpa():
    """Multi-head attention (as many KV heads as heads) and non-SDPA implementations are not switched."""
    mha = random_model(dict(TINY, num_key_value_heads=4), dtype=torch.float32)
    assert not use_decode_attention(mha) and mha.config._attn_implementation == "sdpa"
    eager = random_model("tiny", dtype=torch.float32)
    eager.config._attn_implementation = "eager"
    assert not use_decode_attention(eager) and eager.config._attn_implementation == "eager"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decode_logits_on_cuda_equal_transformers_sdpa():
    """bf16 on the GPU, a 4-layer SmolLM2-shaped model (9 heads on 3 KV heads, a 40-token cache): the packed SDPA's
    step logits within bf16 rounding of transformers' (different SDPA kernels, so not bit for bit)."""
    from quantize.shapes import SMOLLM2_135M

    model = random_model(dict(SMOLLM2_135M, num_hidden_layers=4), dtype=torch.bfloat16, device="cuda")
    prompt = torch.randint(0, 49152, (2, 24), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    expected = _decode_logits(model, prompt, 16)
    assert use_decode_attention(model)
    got = _decode_logits(model, prompt, 16)
    assert (got - expected).abs().max() <= 2e-2 * expected.abs().max()
