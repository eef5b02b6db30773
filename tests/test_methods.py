"""Methods over whole blocks: GPTQ beats RTN, act-order checkpoints load back, errors are clear."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama
from quantize.checkpoint import save_checkpoint
from quantize.loading import load_checkpoint
from quantize.methods import METHODS
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import SchemeError, preset


def logits_error(method, scheme, calib, settings=None):
    model = tiny_llama()
    ids = torch.randint(0, 128, (4, 48), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(ids).logits
    result = quantize_model(model, Recipe.single(scheme, method, settings), calibration=calib, progress=False)
    with torch.no_grad():
        return float((model(ids).logits - ref).norm() / ref.norm()), model, result


@pytest.fixture
def calib():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 128, (4, 48), generator=g) for _ in range(4)]


@pytest.mark.parametrize("bits, group", [(4, 32), (3, 64), (4, None)])
def test_gptq_beats_rtn_on_a_model(calib, bits, group):
    scheme = preset("w4a16").with_weights(num_bits=bits, **({"group_size": group} if group else {"strategy": "channel"}))
    rtn, _, _ = logits_error("rtn", scheme, calib)
    gptq, _, result = logits_error("gptq", scheme, calib)
    assert gptq < rtn
    assert all(layer["method_stats"]["gptq_loss"] >= 0 for layer in result.report.layers)


def test_gptq_defaults_to_static_act_order(calib):
    scheme = preset("w4a16").with_weights(group_size=32)
    default, model, _ = logits_error("gptq", scheme, calib)
    static, _, _ = logits_error("gptq", scheme, calib, {"act_order": True, "static_groups": True})
    plain, _, _ = logits_error("gptq", scheme, calib, {"act_order": False})
    assert default == static != plain
    assert not hasattr(model.get_submodule("model.layers.0.mlp.down_proj"), "weight_g_idx")


def test_act_order_checkpoint_round_trip(calib, tmp_path):
    scheme = preset("w4a16").with_weights(group_size=32, actorder=True)
    _, model, result = logits_error("gptq", scheme, calib, {"act_order": True, "static_groups": False})
    layer = model.get_submodule("model.layers.0.mlp.down_proj")
    assert layer.weight_g_idx.shape == (160,)
    assert not torch.equal(layer.weight_g_idx, torch.arange(160, dtype=torch.int32) // 32)
    save_checkpoint(model, result.config, tmp_path / "ck")
    loaded, _ = load_checkpoint(tmp_path / "ck")
    ids = torch.randint(0, 128, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_act_order_rule_is_derived_for_python_api_users(calib):
    """Act-order with dynamic groups stores g_idx: the gptq record sets actorder on the scheme (and
    clears it where static groups store none), so API users need not know the rule."""
    _, model, result = logits_error("gptq", preset("w4a16").with_weights(group_size=32), calib,
                                    {"act_order": True, "static_groups": False})
    assert model.get_submodule("model.layers.0.mlp.down_proj").weight_g_idx.shape == (160,)
    assert all(s.weights.actorder for s in result.config.module_schemes().values())
    gptq = METHODS["gptq"]
    assert not gptq.resolve(preset("w4a16").with_weights(actorder=True), gptq.parse_settings({})).weights.actorder
    with pytest.raises(SchemeError, match="accepts: damp, act_order"):
        gptq.parse_settings({"dampening": 0.1})


def test_methods_needing_data_say_so():
    with pytest.raises(SchemeError, match="calibration data"):
        quantize_model(tiny_llama(), Recipe.single(preset("w4a16").with_weights(group_size=32), "gptq"),
                       progress=False)


def test_awq_rejects_fp8():
    with pytest.raises(ValueError, match="AWQ"):
        g = torch.Generator().manual_seed(1)
        quantize_model(tiny_llama(), Recipe.single(preset("fp8"), "awq"),
                       calibration=[torch.randint(0, 128, (2, 16), generator=g)], progress=False)


@pytest.mark.parametrize("true_sequential", [True, False])
def test_gptq_shares_hessians_of_linears_reading_one_tensor(calib, monkeypatch, true_sequential):
    """q/k/v (and gate/up) read the same tensor, so GPTQ accumulates one Hessian for each such set
    (Architecture.fusions); the codes, scales and losses equal those of one Hessian per linear."""
    import dataclasses

    import quantize.pipeline as pipeline

    scheme = preset("w4a16").with_weights(group_size=32)
    settings = {"true_sequential": true_sequential}
    _, shared, shared_result = logits_error("gptq", scheme, calib, settings)
    real = pipeline.find_architecture
    monkeypatch.setattr(pipeline, "find_architecture", lambda m: dataclasses.replace(real(m), fusions=()))
    _, separate, separate_result = logits_error("gptq", scheme, calib, settings)
    for (name, a), (_, b) in zip(shared.state_dict().items(), separate.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    losses = [[layer["method_stats"]["gptq_loss"] for layer in r.report.layers] for r in (shared_result, separate_result)]
    assert losses[0] == losses[1]
