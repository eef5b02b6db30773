"""transformers integration: after `import quantize`, from_pretrained loads qtool checkpoints as they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import quantize  # noqa: F401  (registers quant_method "qtool" with transformers)
from conftest import quantized_checkpoint
from quantize.checkpoint import TRANSFORMERS_GUARD, read_quantization_config, read_tensors
from quantize.linear import QuantLinear
from quantize.loading import load_checkpoint
from quantize.scheme import preset

SCHEMES = {
    "w4a16-g32": preset("w4a16").with_weights(group_size=32),
    "w4a16-asym-g32": preset("w4a16-asym").with_weights(group_size=32),
    "w8a16": preset("w8a16"),
    "w8a8-int8": preset("w8a8-int8"),
    "fp8": preset("fp8"),
    "fp8-block": preset("fp8-block"),  # 128x128 blocks and 1x128 activation groups on 96-wide layers: all partial
}
IDS = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))
REPO = Path(__file__).resolve().parents[1]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture(scope="module", params=SCHEMES)
def checkpoint(request, tmp_path_factory):
    return quantized_checkpoint(tmp_path_factory.mktemp("hf") / request.param, SCHEMES[request.param])


def test_from_pretrained_loads_stored_tensors_and_matches_load_checkpoint(checkpoint):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantLinear)
    assert not isinstance(model.lm_head, QuantLinear)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    stored = read_tensors(checkpoint)
    state = model.state_dict()
    for name, tensor in stored.items():  # loaded as stored: nothing re-quantized, nothing cast
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    reference, _ = load_checkpoint(checkpoint)
    assert torch.equal(logits(model), logits(reference))


def test_save_pretrained_round_trip(checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["quantization_config"] == read_quantization_config(checkpoint).to_dict()
    assert config["transformers_weights"] == TRANSFORMERS_GUARD  # still refused by plain transformers
    expected = logits(model)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "saved")), expected)
    assert torch.equal(logits(load_checkpoint(tmp_path / "saved")[0]), expected)


def test_bfloat16(checkpoint):
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.layers[0].mlp.up_proj.weight_scale.dtype == torch.float32  # scales stay as stored
    assert torch.equal(logits(model), logits(load_checkpoint(checkpoint, dtype=torch.bfloat16)[0]))


def test_device_map_auto(checkpoint):
    model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map="auto")
    assert {t.device.type for t in model.state_dict().values()} == {"cpu"}
    assert torch.equal(logits(model), logits(load_checkpoint(checkpoint)[0]))


def test_float_model_with_qtool_config_is_refused(tiny_model_dir, tmp_path):
    from quantize.hf import QtoolConfig

    qconfig = read_quantization_config(quantized_checkpoint(tmp_path / "ck", SCHEMES["w8a16"]))
    with pytest.raises(ValueError, match="pre-quantized"):
        AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=QtoolConfig(qconfig))


PLAIN_TRANSFORMERS = """
import sys
from transformers import AutoModelForCausalLM

for path in sys.argv[1:]:
    try:
        AutoModelForCausalLM.from_pretrained(path)
    except ValueError as err:
        print(err)
    else:
        print("LOADED", path)
assert "quantize" not in sys.modules
"""


def _clean_env() -> dict[str, str]:
    # Without the repository on the path: a process that has never seen this checkout, like a user of
    # plain transformers.
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_plain_transformers_refuses_qtool_checkpoints(tmp_path):
    """Without `import quantize`, loading fails with instructions instead of running random weights."""
    written = quantized_checkpoint(tmp_path / "ck", SCHEMES["w8a16"])  # int8 weights would even load silently
    AutoModelForCausalLM.from_pretrained(written).save_pretrained(tmp_path / "saved")
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_TRANSFORMERS)
    proc = subprocess.run([sys.executable, script, written, tmp_path / "saved"], capture_output=True, text=True,
                          cwd=tmp_path, env=_clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2 and not any(line.startswith("LOADED") for line in lines), proc.stdout
    for line in lines:
        assert "qtool checkpoint" in line and "pip install qtool" in line and "import quantize" in line


def test_import_quantize_defers_registration_until_transformers_needs_it(tmp_path):
    script = ("import sys, quantize\n"
              "assert 'transformers.quantizers.auto' not in sys.modules\n"
              "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING\n"
              "print(AUTO_QUANTIZER_MAPPING['qtool'].__name__)\n")
    env = _clean_env() | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "QtoolHfQuantizer"
