"""quantize/norms.py: transformers' RMSNorms replaced by F.rms_norm. Checked against the modules they replace
(same formula, one rounding instead of two: at most one bf16 unit in the last place apart, and no farther than
them from the float64 value), on a tiny Llama and a tiny Qwen3-MoE (whose per-head q/k norms are RMSNorms too),
with state dicts unchanged and Gemma's (1 + weight) norm left alone (tests/test_fusion.py checks what `qtool
bench` fuses)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from quantize.norms import RMS_NORMS, FusedRMSNorm, fuse_norms
from quantize.shapes import random_model


def test_fused_norm_matches_the_module_it_replaces():
    g = torch.Generator().manual_seed(0)
    norm = LlamaRMSNorm(256, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(256, generator=g))
    x = 3 * torch.randn(64, 256, generator=g)
    exact = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    fused = FusedRMSNorm(norm.weight, 1e-5)
    torch.testing.assert_close(fused(x), norm(x), rtol=1e-6, atol=1e-6)  # float32: the same arithmetic
    torch.testing.assert_close(fused(x).double(), exact, rtol=1e-5, atol=1e-6)
    xb, nb = x.bfloat16(), LlamaRMSNorm(256, eps=1e-5).bfloat16()
    with torch.no_grad():
        nb.weight.copy_(norm.weight)
    out, theirs = FusedRMSNorm(nb.weight, 1e-5)(xb), nb(xb)
    exact_b = xb.double() * torch.rsqrt(xb.double().pow(2).mean(-1, keepdim=True) + 1e-5) * nb.weight.double()
    assert out.dtype == torch.bfloat16
    ulp = 2.0 ** (torch.floor(torch.log2(exact_b.abs().clamp_min(1e-30))) - 7)
    assert ((out.double() - theirs.double()).abs() <= ulp * 1.01).all()  # one unit in the last place at most
    assert (out.double() - exact_b).abs().max() <= (theirs.double() - exact_b).abs().max()


@pytest.mark.parametrize("config,per_block", [("tiny", 2), ("tiny-moe", 4)])
def test_fuse_norms_keeps_weights_and_logits(config, per_block):
    torch.manual_seed(0)
    model = random_model(config, dtype=torch.float32, device="cpu").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        want = model(ids).logits
        count = fuse_norms(model)
        got = model(ids).logits
    assert count == per_block * model.config.num_hidden_layers + 1  # + the final norm
    assert not any(type(m).__name__ in RMS_NORMS for m in model.modules())
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gemma_norm_is_not_replaced():
    class GemmaRMSNorm(nn.Module):  # computes with (1 + weight): not the formula F.rms_norm applies
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8))
            self.eps = 1e-6

    model = nn.Sequential(GemmaRMSNorm(), LlamaRMSNorm(8))
    assert fuse_norms(model) == 1
    assert type(model[0]).__name__ == "GemmaRMSNorm" and isinstance(model[1], FusedRMSNorm)
