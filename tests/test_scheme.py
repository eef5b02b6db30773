from __future__ import annotations

import pytest

from quantize.recipe import Recipe
from quantize.scheme import (
    PRESETS,
    Assignment,
    QuantArgs,
    QuantizationConfig,
    QuantScheme,
    SchemeError,
    preset,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_json(name):
    scheme = preset(name)
    assert QuantScheme.from_json(scheme.to_json()) == scheme


def test_required_presets_exist():
    for name in ("w4a16", "w4a16-asym", "w3a16", "w8a16", "w8a8-int8", "fp8", "fp8-dynamic", "fp8-block"):
        assert name in PRESETS


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(num_bits=9), "1..8"),
    (dict(num_bits=0), "1..8"),
    (dict(type="float", fp_format="e3m4"), "e3m4"),
    (dict(strategy="group", group_size=0), "group_size"),
    (dict(strategy="block"), "block_structure"),
    (dict(num_bits=8, type="float", symmetric=False), "symmetric"),
])
def test_bad_args_name_the_value(kwargs, fragment):
    with pytest.raises(SchemeError, match=fragment):
        QuantArgs(**kwargs)


def test_unknown_preset_lists_names():
    with pytest.raises(SchemeError, match="w4a16"):
        preset("w5a16")


def test_quantization_config_round_trip():
    cfg = QuantizationConfig({"g": Assignment(preset("fp8-block"), ("model.layers.0.mlp.up_proj",))}, "fp8")
    back = QuantizationConfig.from_dict(cfg.to_dict())
    assert back.scheme_for("model.layers.0.mlp.up_proj") == preset("fp8-block")
    with pytest.raises(SchemeError, match="quant_method"):
        QuantizationConfig.from_dict({**cfg.to_dict(), "quant_method": "gptq"})


def test_recipe_first_match_wins(llama):
    recipe = Recipe.from_dict({
        "method": "rtn",
        "entries": [{"scheme": "w8a16", "targets": [r"layers\.0\.", r"down_proj$"]}, {"scheme": "w4a16", "group_size": 32}],
    })
    assigned = recipe.assign(llama)
    assert assigned["model.layers.0.self_attn.q_proj"].scheme.weights.num_bits == 8
    assert assigned["model.layers.1.mlp.down_proj"].scheme.weights.num_bits == 8
    assert assigned["model.layers.1.mlp.up_proj"].scheme.weights.group_size == 32
    assert "lm_head" not in assigned


def test_recipe_rejects_unknown_keys():
    with pytest.raises(SchemeError, match="colour"):
        Recipe.from_dict({"entries": [{"scheme": "w4a16", "colour": 1}]})
