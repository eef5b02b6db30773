"""Mixture of experts (quantize/moe.py): tiny random Mixtral and Qwen3-MoE built in-process, quantized
from their directories (streamed, as `qtool quantize` runs), saved, loaded and evaluated."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_tokenizer
from quantize.evaluate import evaluate
from quantize.loading import load_checkpoint
from quantize.mappings import find_architecture
from quantize.moe import LinearExperts, calibrating_all_experts, split_expert_tensors, unfuse_experts
from quantize.primitives import quantize_weight
from quantize.quantizer import quantize_to_directory
from quantize.recipe import Recipe
from quantize.scheme import preset

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=256, tie_word_embeddings=False)


def tiny_moe(kind: str, seed: int = 0, **overrides):
    from transformers import MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(seed)
    if kind == "mixtral":
        cfg = MixtralConfig(**COMMON, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2)
        model_class = MixtralForCausalLM
    else:
        cfg = Qwen3MoeConfig(**COMMON, head_dim=16, intermediate_size=96, moe_intermediate_size=64, num_experts=4,
                             num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1])
        model_class = Qwen3MoeForCausalLM
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return model_class(cfg).eval()


def never_route_expert_zero(model) -> None:
    """Router rows [0, v, -v, 2v, -2v]: expert 0's logit is 0 and the two largest are |x.v| and 2|x.v| > 0,
    so the top-2 never contains expert 0."""
    for layer in model.model.layers:
        router = getattr(layer.mlp, "gate", None)
        if router is None or not hasattr(router, "top_k"):
            continue
        v = torch.randn(router.weight.shape[1])
        with torch.no_grad():
            router.weight.copy_(torch.stack([0 * v, v, -v, 2 * v, -2 * v]))


def save(model, path):
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def calibration(n: int = 4, seq: int = 32):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 128, (2, seq), generator=g) for _ in range(n)]


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_linear_experts_compute_what_transformers_computes(kind):
    model = tiny_moe(kind)
    ids = calibration(1)[0]
    with torch.no_grad():
        ref = model(ids).logits
        assert unfuse_experts(model) >= 1
        assert unfuse_experts(model) == 0  # already per-expert linears
        got = model(ids).logits
        experts = [m for m in model.modules() if isinstance(m, LinearExperts)]
        with calibrating_all_experts(model):
            assert all(m.calibrate_all for m in experts)
            all_tokens = model(ids).logits  # statistics only: the output still follows the router
    assert not any(m.calibrate_all for m in experts)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(all_tokens, ref, rtol=1e-4, atol=1e-4)
    assert isinstance(model.get_submodule("model.layers.0.mlp.experts.3.down_proj"), torch.nn.Linear)


def test_expert_patterns_expand_per_block():
    model = tiny_moe("qwen3_moe")
    unfuse_experts(model)
    arch = find_architecture(model)
    assert arch.name == "moe"
    sparse = arch.for_block(model.model.layers[0])
    assert ("mlp.experts.2.gate_proj", "mlp.experts.2.up_proj") in sparse.fusions
    assert any(s.prev == "mlp.experts.1.up_proj" and s.balance == ("mlp.experts.1.down_proj",) for s in sparse.smooth)
    dense = arch.for_block(model.model.layers[1])  # mlp_only_layers: a plain MLP, no experts
    assert not any("experts" in n for g in dense.sequential for n in g)


def _eval(model_or_dir, windows):
    model = load_checkpoint(model_or_dir)[0] if not isinstance(model_or_dir, torch.nn.Module) else model_or_dir
    return evaluate(model, windows, batch_size=2, progress=False)


@pytest.mark.parametrize("kind,method,scheme", [("mixtral", "rtn", "w4a16"), ("mixtral", "gptq", "w4a16"),
                                                ("qwen3_moe", "gptq", "w4a16"), ("qwen3_moe", "awq", "w4a16-asym")])
def test_moe_quantize_save_load_evaluate(tmp_path, kind, method, scheme):
    float_model = tiny_moe(kind)
    src = save(float_model, tmp_path / "src")
    recipe = Recipe.single(preset(scheme).with_weights(group_size=32), method)
    calib = calibration() if method != "rtn" else None
    result = quantize_to_directory(src, tmp_path / "q", recipe, calibration=lambda m, t: calib)
    model, qconfig = load_checkpoint(tmp_path / "q")
    schemes = qconfig.module_schemes()
    assert "model.layers.0.mlp.experts.3.gate_proj" in schemes
    assert not any(n.endswith("mlp.gate") for n in schemes)  # the router stays in float
    assert model.model.layers[0].mlp.gate.weight.dtype == torch.float32
    windows = torch.cat(calibration(2, 48))
    base = _eval(float_model, windows).perplexity
    quantized = _eval(model, windows).perplexity
    assert math.isfinite(quantized) and abs(quantized / base - 1) < 0.2, (quantized, base)
    assert result.report.layers
    if method == "rtn":  # transformers' own loader (quantize/hf.py) reads the per-expert layout too
        from transformers import AutoModelForCausalLM

        with torch.no_grad():
            hf = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
            torch.testing.assert_close(hf(windows).logits, model(windows).logits)


def test_hub_qwen3_moe_layout_is_read_lazily(tmp_path):
    """Hub Qwen3-MoE checkpoints store each expert's projections apart (`mlp.experts.3.up_proj.weight`),
    the layout qtool uses: they stream block by block like the 3-D layout transformers 5 saves."""
    from safetensors.torch import save_file

    from quantize.streaming import open_lazily

    float_model = tiny_moe("qwen3_moe")
    src = save(float_model, tmp_path / "src")
    (src / "model.safetensors").unlink()
    save_file(split_expert_tensors(dict(float_model.state_dict())), src / "model.safetensors")
    assert open_lazily(src) is not None
    recipe = Recipe.single(preset("w4a16").with_weights(group_size=32), "gptq")
    calib = calibration()
    quantize_to_directory(src, tmp_path / "q", recipe, calibration=lambda m, t: calib)
    fused = quantize_to_directory(save(float_model, tmp_path / "fused"), tmp_path / "q2", recipe,
                                  calibration=lambda m, t: calib)
    assert fused.report.layers
    a, b = load_checkpoint(tmp_path / "q")[0], load_checkpoint(tmp_path / "q2")[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _unrouted_run(tmp_path, scheme: str, method: str, **options):
    """A Mixtral whose routers never pick expert 0, quantized from its directory: (model, src, recipe, result)."""
    float_model = tiny_moe("mixtral", num_local_experts=5)
    never_route_expert_zero(float_model)
    src = save(float_model, tmp_path / "src")
    recipe = Recipe.single(preset(scheme).with_weights(group_size=32), method)
    calib = calibration()
    result = quantize_to_directory(src, tmp_path / "q", recipe, calibration=lambda m, t: calib, **options)
    return float_model, src, recipe, result


def test_unrouted_expert_falls_back_to_rtn_with_a_note(tmp_path):
    float_model, src, recipe, result = _unrouted_run(tmp_path, "w4a16", "gptq")
    calib = calibration()
    notes = [m for m in result.report.messages if "no calibration tokens" in m]
    assert any(m.startswith("model.layers.0.mlp.experts.0.gate_proj:") for m in notes), notes
    assert not any(".experts.1." in m for m in notes)
    model, _ = load_checkpoint(tmp_path / "q")
    unfuse_experts(float_model)
    weight = float_model.get_submodule("model.layers.0.mlp.experts.0.down_proj").weight.detach()
    rtn = quantize_weight(weight, preset("w4a16").with_weights(group_size=32).weights)
    assert torch.equal(model.get_submodule("model.layers.0.mlp.experts.0.down_proj").codes(), rtn.values)
    assert math.isfinite(_eval(model, torch.cat(calibration(2, 48))).perplexity)

    again = quantize_to_directory(src, tmp_path / "all", recipe, calibration=lambda m, t: calib, all_experts=True)
    assert not any("no calibration tokens" in m for m in again.report.messages)
    gptq_loss = {e["name"]: e["method_stats"] for e in again.report.layers}
    assert "gptq_loss" in gptq_loss["model.layers.0.mlp.experts.0.gate_proj"]


def test_awq_notes_unrouted_experts(tmp_path):
    result = _unrouted_run(tmp_path, "w4a16-asym", "awq")[3]
    noted = {m.partition(":")[0] for m in result.report.messages if "no calibration tokens" in m}
    assert {f"model.layers.{i}.mlp.experts.0.{p}_proj" for i in (0, 1) for p in ("gate", "up", "down")} == noted
    assert math.isfinite(_eval(load_checkpoint(tmp_path / "q")[0], torch.cat(calibration(2, 48))).perplexity)
