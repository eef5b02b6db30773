"""Every recipe in configs/ parses and quantizes a tiny model from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from quantize.cli import app
from quantize.loading import load_checkpoint
from quantize.methods import METHODS
from quantize.recipe import Recipe

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_runs(path, wide_model_dir, tmp_path):
    recipe = Recipe.load(path)
    args = ["quantize", str(wide_model_dir), "--recipe", str(path), "--output", str(tmp_path / "q")]
    if any(METHODS[m].needs_data for m in recipe.methods):
        args += ["--dataset", "synthetic", "--num-samples", "4", "--seq-len", "16"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    _, qconfig = load_checkpoint(tmp_path / "q")
    schemes = qconfig.module_schemes()
    head = "lm_head" in recipe.assign(AutoModelForCausalLM.from_pretrained(wide_model_dir))  # the recipe's own rule
    assert len(schemes) == 14 + head and ("lm_head" in schemes) == head


def test_mixed_recipe_keeps_fragile_layers_at_8_bits(tiny_model_dir, tmp_path):
    text = (Path(__file__).resolve().parents[1] / "configs" / "mixed-w4a16-w8a16.yaml").read_text()
    path = tmp_path / "mixed.yaml"
    path.write_text(text.replace("layers\\.29", "layers\\.1").replace("group_size: 64", "group_size: 32"))
    res = CliRunner().invoke(app, ["quantize", str(tiny_model_dir), "--recipe", str(path), "--output", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    _, qconfig = load_checkpoint(tmp_path / "q")
    schemes = qconfig.module_schemes()
    assert schemes["model.layers.0.self_attn.q_proj"].weights.num_bits == 8
    assert schemes["model.layers.1.mlp.down_proj"].weights.num_bits == 8
    assert "model.layers.0.mlp.down_proj" in schemes
