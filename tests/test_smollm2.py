"""End to end on the real SmolLM2-135M (576-wide layers: group 128 ends in a 64-wide group)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from quantize.cli import app
from quantize.loading import load_checkpoint
from quantize.primitives import fake_quantize
from quantize.quantizer import load_model

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("args, bits", [(["--bits", "4", "--group-size", "128"], 4), (["--bits", "8"], 8)])
def test_rtn_checkpoint_matches_fake_quant(smollm2_dir, tmp_path, args, bits):
    out = tmp_path / "q"
    res = CliRunner().invoke(app, ["quantize", str(smollm2_dir), "--method", "rtn", *args, "--output", str(out)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["inspect", str(out), "--json", str(tmp_path / "i.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "i.json").read_text())
    assert summary["quantized_layers"] == 210

    model, qconfig = load_checkpoint(out)
    reference, tokenizer = load_model(smollm2_dir)
    with torch.no_grad():
        for name, scheme in qconfig.module_schemes().items():
            lin = reference.get_submodule(name)
            lin.weight.copy_(fake_quantize(lin.weight, scheme.weights))
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 4, return_tensors="pt").input_ids
    with torch.no_grad():
        got, expected = model(ids).logits, reference(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert model.get_submodule("model.layers.0.mlp.down_proj").weight_scale.shape[-1] == (12 if bits == 4 else 1)
    assert model.get_submodule("model.layers.0.self_attn.q_proj").weight_scale.shape[-1] == (5 if bits == 4 else 1)
