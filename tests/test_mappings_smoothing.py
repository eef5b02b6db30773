"""Architecture mappings across families, and scale folding that leaves the float model unchanged."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from quantize.mappings import ArchitectureError, applicable, find_architecture, find_blocks
from quantize.methods import smoothquant
from quantize.methods.scaling import apply_scale
from quantize.methods.smoothquant import smoothing_factors
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import preset

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=128)


def build(family: str):
    import transformers as tf

    torch.manual_seed(0)
    configs = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {"head_dim": 16}),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, {"head_dim": 16}),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, {"head_dim": 16}),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, {"pad_token_id": 0}),
    }
    cfg_cls, model_cls, extra = configs[family]
    model = model_cls(cfg_cls(**SMALL, **extra)).eval()
    # Norm weights of a fresh model are all ones (or zeros for Gemma): make them informative.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.rand_like(p))
    return model


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_blocks_and_mappings(family):
    model = build(family)
    arch = find_architecture(model)
    _, blocks = find_blocks(model, arch)
    assert len(blocks) == 2
    usable = [m for m in arch.smooth if applicable(blocks[0], m)]
    assert usable, f"no applicable smoothing mapping for {family}"
    for group in arch.sequential:
        for name in group:
            assert isinstance(blocks[0].get_submodule(name), torch.nn.Linear)


@pytest.mark.parametrize("family", FAMILIES)
def test_folding_scales_keeps_the_float_function(family):
    """Every applicable mapping, folded with random scales, leaves the logits unchanged (sandwich norms included)."""
    model = build(family)
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        arch = find_architecture(model)
        _, blocks = find_blocks(model, arch)
        for block in blocks:
            for m in arch.smooth:
                if applicable(block, m):
                    width = block.get_submodule(m.balance[0]).in_features
                    apply_scale(block, m, torch.rand(width) * 3 + 0.2, arch.norm_offset)
        after = model(ids).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_gemma_mlp_is_fed_by_pre_feedforward_norm():
    arch = find_architecture(build("gemma2"))
    mlp = next(m for m in arch.smooth if "mlp.gate_proj" in m.balance)
    assert mlp.prev == "pre_feedforward_layernorm"


def test_unknown_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ArchitectureError, match="gpt2"):
        find_architecture(model)


def test_smoothing_factors_formula():
    act = torch.tensor([4.0, 1.0])
    w = [torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, 0.5]])]
    s = smoothing_factors(act, w, alpha=0.5)
    torch.testing.assert_close(s, torch.tensor([4.0 ** 0.5 / 3.0 ** 0.5, 1.0 / 2.0 ** 0.5]))


def outlier_llama():
    model = tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[5] = 25.0
            layer.post_attention_layernorm.weight[7] = 40.0
    return model


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_smoothquant_beats_plain_int8_on_outliers(family, calib_ids):
    def run(method):
        model = outlier_llama() if family == "llama" else build(family)
        if family == "gemma2":
            with torch.no_grad():
                for layer in model.model.layers:
                    layer.input_layernorm.weight[5] = 25.0
                    layer.pre_feedforward_layernorm.weight[7] = 40.0
        ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            ref = model(ids).logits
            quantize_model(model, Recipe.single(preset("w8a8-int8"), method), calibration=calib_ids, progress=False)
            return float((model(ids).logits - ref).norm() / ref.norm())
    assert run("smoothquant") < run("int8")


def test_smoothquant_auto_alpha(calib_ids):
    """alpha='auto' picks a grid alpha per mapping, records it, and does no worse than 0.5 on the logits."""
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(3))

    def run(alpha):
        model = outlier_llama()
        with torch.no_grad():
            ref = model(ids).logits
            result = quantize_model(model, Recipe.single(preset("w8a8-int8"), "smoothquant", {"alpha": alpha}),
                                    calibration=calib_ids, progress=False)
            return float((model(ids).logits - ref).norm() / ref.norm()), result.report.layers

    auto_err, layers = run("auto")
    fixed_err, _ = run(0.5)
    alphas = {e["name"]: e["method_stats"]["smooth_alpha"] for e in layers if "smooth_alpha" in e["method_stats"]}
    assert alphas and all(a in smoothquant.ALPHA_GRID for a in alphas.values())
    assert auto_err <= fixed_err * 1.05, (auto_err, fixed_err)


def test_search_alpha_prefers_smoothing_for_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    x[:, 3] *= 60.0  # one outlier channel, as in SmoothQuant's figure 4
    w = [torch.randn(48, 64, generator=g) / 8]
    scheme = preset("w8a8-int8")
    alpha, errors = smoothquant.search_alpha(x, x.abs().amax(0), w, [scheme])
    assert alpha >= 0.3 and errors[alpha] < errors[0.2] and set(errors) == set(smoothquant.ALPHA_GRID)


@pytest.mark.parametrize("alpha", [1.5, "half", -0.1])
def test_smoothquant_rejects_bad_alpha(alpha, calib_ids):
    with pytest.raises(ValueError, match="alpha"):
        quantize_model(tiny_llama(), Recipe.single(preset("w8a8-int8"), "smoothquant", {"alpha": alpha}),
                       calibration=calib_ids, progress=False)


@pytest.mark.parametrize("duo_scaling", [False, True])
def test_awq_folded_model_equals_unscaled_before_quantization(calib_ids, duo_scaling):
    """AWQ's search + folding, with rounding switched off, must not change the float model."""
    from quantize.methods import awq
    from quantize.pipeline import BlockContext, capture_block_inputs

    model = tiny_llama(num_key_value_heads=4)  # v -> o applies without grouped-query attention
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        before = model(ids).logits
    arch = find_architecture(model)
    _, blocks = find_blocks(model, arch)
    inputs = capture_block_inputs(model, blocks, calib_ids, torch.device("cpu"), "cpu")
    ctx = BlockContext(0, "model.layers.0.", blocks[0], inputs, arch, torch.device("cpu"))
    args = preset("w4a16").weights.__class__(num_bits=4, strategy="group", group_size=32)
    mappings = [m for m in arch.smooth if applicable(blocks[0], m)]
    assert len(mappings) == 4
    for m, inputs in zip(mappings, awq.gather_inputs(ctx, mappings, 10_000), strict=True):
        inspect = blocks[0].get_submodule(m.inspect or m.balance[0])
        balance = [blocks[0].get_submodule(b) for b in m.balance]
        s, ratio, _ = awq.search_scale(inspect, balance, inputs, args, duo_scaling=duo_scaling)
        assert 0.0 <= ratio < 1.0
        w_mean = awq.weight_mean(balance, args) if duo_scaling else None
        torch.testing.assert_close(s, awq.candidate_scale(inputs.x_mean, ratio, w_mean))
        apply_scale(blocks[0], m, s, arch.norm_offset)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-4, atol=1e-4)


def test_awq_two_stage_search_matches_every_candidate_on_every_call(calib_ids):
    """search_scale scores all candidates on the first half of the calls and its finalists on all of them:
    with FINALISTS = GRID that is the exhaustive search, and here the three finalists already find its choice."""
    from quantize.methods import awq
    from quantize.pipeline import BlockContext, capture_block_inputs

    model = outlier_llama()
    arch = find_architecture(model)
    _, blocks = find_blocks(model, arch)
    inputs = capture_block_inputs(model, blocks, calib_ids, torch.device("cpu"), "cpu")
    ctx = BlockContext(0, "model.layers.0.", blocks[0], inputs, arch, torch.device("cpu"))
    args = preset("w3a16").with_weights(group_size=32, symmetric=False).weights
    mappings = [m for m in arch.smooth if applicable(blocks[0], m)]
    for m, st in zip(mappings, awq.gather_inputs(ctx, mappings, 10_000), strict=True):
        assert len(st.calls) > 1 and awq._half(st.calls) == len(st.calls) // 2
        inspect = blocks[0].get_submodule(m.inspect or m.balance[0])
        balance = [blocks[0].get_submodule(b) for b in m.balance]
        found = awq.search_scale(inspect, balance, st, args)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(awq, "FINALISTS", awq.GRID)
            exhaustive = awq.search_scale(inspect, balance, st, args)
        assert found[1] == exhaustive[1]
        torch.testing.assert_close(found[2], exhaustive[2])
    assert awq._half([((torch.zeros(1, 8, 4),), {})]) == 1  # one call: every candidate sees all of it


@pytest.mark.parametrize("duo_scaling", [False, True])
def test_awq_beats_rtn_on_activation_outliers(calib_ids, duo_scaling):
    def run(method, args=None):
        model = outlier_llama()
        ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            ref = model(ids).logits
            scheme = preset("w3a16").with_weights(group_size=32, symmetric=False)
            quantize_model(model, Recipe.single(scheme, method, args), calibration=calib_ids, progress=False)
            return float((model(ids).logits - ref).norm() / ref.norm())
    assert run("awq", {"duo_scaling": duo_scaling}) < run("rtn")


def test_awq_weight_mean_and_candidates():
    from quantize.methods import awq

    args = preset("w4a16").weights.__class__(num_bits=4, strategy="group", group_size=4)
    a, b = torch.nn.Linear(6, 3, bias=False), torch.nn.Linear(6, 2, bias=False)  # K = 6: groups of 4 and 2
    for layer in (a, b):
        torch.nn.init.normal_(layer.weight)
    expected = []
    for layer in (a, b):
        w = layer.weight.detach().abs()
        expected.append(torch.cat([w[:, :4] / w[:, :4].amax(1, keepdim=True), w[:, 4:] / w[:, 4:].amax(1, keepdim=True)], 1))
    w_mean = awq.weight_mean([a, b], args)
    torch.testing.assert_close(w_mean, torch.cat(expected).mean(0))
    x_mean = torch.rand(6) + 0.1
    for ratio, w in ((0.0, None), (0.35, None), (0.0, w_mean), (0.35, w_mean)):
        s = awq.candidate_scale(x_mean, ratio, w_mean=w)
        assert abs(float(torch.log(s).mean())) < 1e-6  # geometric mean 1
        raw = x_mean ** ratio / (1 if w is None else w ** (1 - ratio))
        torch.testing.assert_close(s / s[0], raw / raw[0])
