"""Quantization-aware training (quantize/qat.py, quantize/finetune.py): STE and LSQ gradients, training
that lowers the block loss, and checkpoints whose outputs equal the fake-quantized model's."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_llama
from quantize.cli import app
from quantize.finetune import FinetuneSettings, finetune_model
from quantize.loading import load_checkpoint
from quantize.primitives import dequantize, quantize
from quantize.qat import FakeQuantLinear, fake_layers, fake_quantize_weight, round_ste, sign_ste
from quantize.scheme import QuantArgs, SchemeError, preset


def test_round_ste_passes_gradient_unchanged():
    x = torch.tensor([0.2, 1.7, -2.5], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.round(x.detach()))
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0]))


def test_sign_ste_is_the_clipped_identity():
    x = torch.tensor([-1.5, -0.5, 0.0, 0.5, 1.5], requires_grad=True)
    y = sign_ste(x)
    assert torch.equal(y.detach(), torch.tensor([-1.0, -1.0, 1.0, 1.0, 1.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


@pytest.mark.parametrize("symmetric", [True, False])
def test_forward_equals_quantize_dequantize(symmetric):
    torch.manual_seed(0)
    args = QuantArgs(num_bits=3, symmetric=symmetric, group_size=16)
    w = torch.randn(8, 40)
    scale = torch.rand(8, 3) * 0.5 + 0.1
    zp = None if symmetric else torch.randint(-4, 4, (8, 3)).to(torch.int8)
    fq = fake_quantize_weight(w, scale, None if zp is None else zp.float(), args)
    assert torch.equal(fq, dequantize(quantize(w, scale, zp, args), scale, zp, args))


def test_lsq_scale_gradient():
    """LSQ: d w_hat / d s = round(w/s) - w/s inside the range, qmin or qmax outside, times g."""
    args = QuantArgs(num_bits=3, strategy="channel")
    w = torch.tensor([[0.26, -0.9, 10.0, -10.0]])
    s = torch.tensor([[0.2]], requires_grad=True)
    fake_quantize_weight(w, s, None, args, factor=0.5).sum().backward()
    u = w / 0.2
    inside = torch.round(u[0, :2]) - u[0, :2]
    expected = 0.5 * (inside.sum() + 3 + (-4))  # 3-bit codes: qmax 3, qmin -4
    torch.testing.assert_close(s.grad, expected.reshape(1, 1))


def test_lsq_zero_point_gradient_only_where_clamped():
    args = QuantArgs(num_bits=2, strategy="channel", symmetric=False)
    w = torch.tensor([[0.05, 10.0]])
    s, z = torch.tensor([[0.1]]), torch.tensor([[0.0]], requires_grad=True)
    fake_quantize_weight(w, s, z, args).sum().backward()
    # 0.05 is inside the range (w_hat does not move with z); 10.0 is clamped at qmax: w_hat = (1 - z) * s
    torch.testing.assert_close(z.grad, torch.tensor([[-0.1]]))


def test_binary_scale_gradient_is_lsq_with_codes_of_one():
    """w_hat = sign(w) * s: d/ds = sign(u) - u inside |u| <= 1 (through the clipped identity), sign(u) outside."""
    args = QuantArgs(num_bits=1, strategy="channel")
    w = torch.tensor([[0.1, -0.3, 2.0]])
    s = torch.tensor([[0.5]], requires_grad=True)
    fake_quantize_weight(w, s, None, args).sum().backward()
    expected = (1 - 0.2) + (-1 + 0.6) + 1
    torch.testing.assert_close(s.grad, torch.tensor([[expected]]))


def test_fake_linear_gradcheck():
    torch.manual_seed(0)
    lin = torch.nn.Linear(12, 5).double()
    layer = FakeQuantLinear.from_linear(lin, QuantArgs(num_bits=4, group_size=4))
    layer.double()
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    # The fake-quantized weight is piecewise constant in w: the input gradient is exact.
    assert torch.autograd.gradcheck(lambda x: layer(x), (x,))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 128, (2, 32), generator=g) for _ in range(3)]


@pytest.mark.parametrize("name,init", [("w3a16", "rtn"), ("w4a16-asym", "rtn"), ("w1a16", "gptq")])
def test_finetune_lowers_block_loss(name, init):
    model = tiny_llama()
    batches = _batches()
    scheme = preset(name).with_weights(group_size=32)
    settings = FinetuneSettings(init=init, steps=12, lr=2e-2, scale_lr=1e-2)
    config, report = finetune_model(model, scheme, batches, settings, progress=False)
    assert len(report.blocks) == 2
    for block in report.blocks:
        assert block["mse_final"] < block["mse_init"], block
    assert config.method == "qat" and config.method_args["qat"]["steps"] == 12
    assert not fake_layers(model)  # all became QuantLinear
    with torch.no_grad():
        assert torch.isfinite(model(batches[0]).logits).all()


def test_checkpoint_matches_fake_quant_forward(tmp_path):
    from quantize.checkpoint import save_checkpoint
    from quantize.finetune import finetune_blocks, to_quant_linears
    from quantize.quantizer import plan_quantization
    from quantize.recipe import Recipe

    model = tiny_llama()
    batches = _batches()
    scheme = preset("w2a16").with_weights(group_size=32)
    schemes = {f"model.layers.{i}.{n}": scheme for i in range(2)
               for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    finetune_blocks(model, schemes, batches, FinetuneSettings(steps=5, lr=5e-2, scale_lr=1e-2))
    assert len(fake_layers(model)) == len(schemes)
    with torch.no_grad():
        fake = model(batches[0]).logits
    _, config = plan_quantization(tiny_llama(), Recipe.single(scheme, "rtn"))
    to_quant_linears(model, scheme)
    save_checkpoint(model, config, tmp_path / "ck")
    loaded, _ = load_checkpoint(tmp_path / "ck")
    with torch.no_grad():
        real = loaded(batches[0]).logits
    torch.testing.assert_close(real, fake, rtol=1e-5, atol=1e-5)


def test_cli_finetune_writes_a_checkpoint(tiny_model_dir, tmp_path, shared_data):
    out = tmp_path / "qat"
    result = CliRunner().invoke(app, ["finetune", str(tiny_model_dir), "--scheme", "w4a16", "--group-size", "32",
                                      "--dataset", str(shared_data / "wiki.valid.tokens"), "--num-samples", "4",
                                      "--seq-len", "32", "--batch-size", "2", "--steps", "4", "--e2e-steps", "2",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "config.json").read_text())["quantization_config"]
    assert stored["method"] == "qat" and stored["method_args"]["qat"]["e2e_steps"] == 2
    report = json.loads((out / "finetune.json").read_text())
    assert len(report["blocks"]) == 2 and report["e2e"]["kl_final"] <= report["e2e"]["kl_init"]
    model, _ = load_checkpoint(out)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.parametrize("args,message", [
    (["--scheme", "fp8"], "finetune trains integer weight-only schemes"),
    (["--scheme", "w1a1"], "finetune trains integer weight-only schemes"),
    (["--init", "nowhere"], "--init must be rtn, gptq or a qtool checkpoint directory"),
    (["--scheme", "w4a16", "--steps", "-1"], "steps must be >= 0"),
])
def test_cli_finetune_bad_input(tiny_model_dir, tmp_path, args, message):
    data = tmp_path / "d.txt"
    data.write_text("the of and to in a is was\n" * 20)
    result = CliRunner().invoke(app, ["finetune", str(tiny_model_dir), "--dataset", str(data),
                                      "--output", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_finetune_without_data_is_refused():
    with pytest.raises(SchemeError, match="needs training data"):
        finetune_model(tiny_llama(), preset("w4a16"), [], FinetuneSettings(), progress=False)


def test_init_from_checkpoint_reproduces_it(tmp_path, calib_ids):
    """Zero steps from a checkpoint (GPTQ, act-order g_idx included) write the same tensors back."""
    import quantize
    from quantize.checkpoint import read_tensors, save_checkpoint

    model = tiny_llama()
    scheme = preset("w3a16").with_weights(group_size=32)
    recipe = quantize.Recipe.single(scheme, "gptq", {"static_groups": False})
    result = quantize.quantize_model(model, recipe, calibration=calib_ids, progress=False)
    save_checkpoint(model, result.config, tmp_path / "gptq")
    again = tiny_llama()
    config, _ = finetune_model(again, None, calib_ids, FinetuneSettings(init=str(tmp_path / "gptq"), steps=0),
                               progress=False)
    save_checkpoint(again, config, tmp_path / "qat")
    before, after = read_tensors(tmp_path / "gptq"), read_tensors(tmp_path / "qat")
    assert before.keys() == after.keys()
    assert any(k.endswith("weight_g_idx") for k in before)
    for key in before:
        assert torch.equal(before[key], after[key]), key


def test_learning_rates_are_in_units_of_each_layers_step():
    from quantize.qat import trainable

    linear = torch.nn.Linear(64, 8)
    small = FakeQuantLinear.from_linear(linear, QuantArgs(num_bits=4, group_size=32))
    big = FakeQuantLinear.from_linear(linear, QuantArgs(num_bits=4, group_size=32))
    with torch.no_grad():
        big.scale.mul_(10)
    groups = trainable(torch.nn.ModuleList([small, big]), step_lr=0.5, scale_lr=0.01)
    lr = {id(g["params"][0]): g["lr"] for g in groups}
    assert lr[id(big.weight)] == pytest.approx(10 * lr[id(small.weight)])
    assert lr[id(small.weight)] == pytest.approx(0.5 * float(small.scale.mean()))
    assert lr[id(big.scale)] == pytest.approx(0.01 * float(big.scale.mean()))
    assert id(small.weight) not in {id(g["params"][0]) for g in trainable(small, None, 0.01)}


def test_end_to_end_phase_that_hurts_is_undone():
    """A learning rate far too high makes KL worse: the scales go back to where the block phase left them."""
    batches, scheme = _batches(), preset("w3a16").with_weights(group_size=32)
    outputs = {}
    for e2e_steps in (0, 3):
        model = tiny_llama()
        settings = FinetuneSettings(steps=2, e2e_steps=e2e_steps, e2e_lr=5.0)
        _, report = finetune_model(model, scheme, batches, settings, teacher=tiny_llama(), progress=False)
        with torch.no_grad():
            outputs[e2e_steps] = model(batches[0]).logits
    assert report.e2e["reverted"] == 1.0 and report.e2e["kl_trained"] > report.e2e["kl_init"]
    assert torch.equal(outputs[0], outputs[3])
