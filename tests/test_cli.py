"""The qtool command: quantize and inspect work, bad input is one line and exit code 2."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from quantize.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("extra", [
    ["--method", "rtn", "--bits", "4", "--group-size", "64"],
    ["--method", "rtn", "--bits", "8"],
    ["--scheme", "w4a16-asym", "--group-size", "32"],
    ["--method", "fp8"],
    ["--method", "int8"],
    ["--scheme", "fp8-block"],
])
def test_quantize_then_inspect(tiny_model_dir, tmp_path, extra):
    out = tmp_path / "q"
    res = run("quantize", tiny_model_dir, "--output", out, *extra)
    assert res.exit_code == 0, res.output
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    res = run("inspect", out, "--json", tmp_path / "i.json")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "i.json").read_text())
    assert summary["quantized_layers"] == 14  # 7 linears x 2 blocks; lm_head ignored
    assert summary["compression_vs_bf16"] > 1.0


@pytest.mark.parametrize("args, fragment", [
    (["--method", "magic"], "unknown method 'magic'"),
    (["--scheme", "w5a16"], "unknown scheme preset 'w5a16'"),
    (["--bits", "9"], "bits must be 1..8, got 9"),
    (["--group-size", "4096"], "group size 4096 is larger"),
    (["--method", "fp8", "--bits", "4"], "--bits 4"),
    (["--recipe", "nope.yaml"], "recipe file not found: nope.yaml"),
    (["--method", "smoothquant", "--alpha", "strong"], "alpha must be in [0, 1] or 'auto', got 'strong'"),
    (["--method", "smoothquant", "--alpha", "1.5"], "alpha must be in [0, 1]"),
    # every option either applies or is refused, never silently dropped
    (["--method", "int8", "--group-size", "64"], "--group-size 64 applies to integer weight-only schemes"),
    (["--method", "fp8", "--group-size", "64"], "--group-size 64 applies to integer weight-only schemes"),
    (["--method", "smoothquant", "--group-size", "64"], "--group-size 64 applies to integer weight-only schemes"),
    (["--scheme", "w8a8-int8", "--asymmetric"], "--asymmetric applies to integer weight-only"),
    (["--method", "rtn", "--damp", "0.1"], "--damp does not apply to --method rtn"),
    (["--method", "awq", "--act-order"], "--act-order does not apply to --method awq"),
    (["--method", "gptq", "--clip"], "--clip does not apply to --method gptq"),
    (["--method", "smoothquant", "--damp", "0.1"], "damp apply to SmoothQuant with weights='gptq'"),
    (["--group-size", "0"], "group size must be a positive number of inputs, or -1 for per channel; got 0"),
    (["--recipe", "configs/w4a16-rtn.yaml", "--group-size", "32"], "--group-size does not apply with --recipe"),
    (["--recipe", "configs/w4a16-rtn.yaml", "--method", "gptq"], "--method does not apply with --recipe"),
    (["--recipe", "configs/w4a16-rtn.yaml", "--quantize-lm-head"], "--quantize-lm-head does not apply with --recipe"),
])
def test_bad_input_is_one_line_exit_2(tiny_model_dir, tmp_path, args, fragment):
    res = run("quantize", tiny_model_dir, "--output", tmp_path / "q", *args)
    assert res.exit_code == 2
    assert fragment in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "q").exists()


def test_quantize_lm_head(tiny_model_dir, tmp_path):
    """--quantize-lm-head: the head becomes a QuantLinear of the run's scheme (round to nearest: every weight within
    half a grid step of the source), the tied embedding stays the source's float weight, and the head computes with
    the rounded weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantize import load_checkpoint
    from quantize.linear import QuantLinear

    res = run("quantize", tiny_model_dir, "--output", tmp_path / "q", "--bits", "4", "--group-size", "32",
              "--quantize-lm-head")
    assert res.exit_code == 0, res.output
    assert run("inspect", tmp_path / "q", "--json", tmp_path / "i.json").exit_code == 0
    assert json.loads((tmp_path / "i.json").read_text())["quantized_layers"] == 15  # 14 + lm_head
    source = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model, _ = load_checkpoint(tmp_path / "q")
    assert isinstance(model.lm_head, QuantLinear)
    torch.testing.assert_close(model.model.embed_tokens.weight, source.model.embed_tokens.weight)
    # every weight on its group's 4-bit grid, within half a step (max |w| / 7 per group of 32) of the source
    w, deq = source.lm_head.weight.double(), model.lm_head.dequantize_weight(torch.float64)
    step = w.abs().unflatten(1, (-1, 32)).amax(-1, keepdim=True).div(7).expand(-1, -1, 32).flatten(1)
    assert not torch.equal(deq, w) and ((deq - w).abs() <= step / 2 + 1e-6).all()
    hidden = torch.randn(3, source.config.hidden_size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.lm_head(hidden).double(), hidden.double() @ deq.T, rtol=1e-4, atol=1e-5)


def test_missing_model_and_existing_output(tiny_model_dir, tmp_path):
    res = run("quantize", tmp_path / "no-such-model", "--output", tmp_path / "q")
    assert res.exit_code == 2 and "model not found" in res.output
    (tmp_path / "q").mkdir()
    res = run("quantize", tiny_model_dir, "--output", tmp_path / "q")
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert run("quantize", tiny_model_dir, "--output", tmp_path / "q", "--overwrite", "--group-size", "32").exit_code == 0


def test_inspect_rejects_float_model(tiny_model_dir):
    res = run("inspect", tiny_model_dir)
    assert res.exit_code == 2 and "not quantized" in res.output


def quantized_weights(out):
    from quantize.checkpoint import read_quantization_config

    return {s.weights for s in read_quantization_config(out).module_schemes().values()}


@pytest.mark.parametrize("extra, strategy, group_size", [
    (["--scheme", "w8a16", "--group-size", "32"], "group", 32),  # was silently per channel
    (["--scheme", "w4a16", "--group-size", "-1"], "channel", None),  # raised although -1 means per channel
    (["--method", "rtn", "--bits", "4", "--group-size", "-1"], "channel", None),
    (["--bits", "8"], "channel", None),  # 8 bits without a scheme: per channel, like w8a16
])
def test_group_size_applies_and_minus_one_is_per_channel(tiny_model_dir, tmp_path, extra, strategy, group_size):
    out = tmp_path / "q"
    res = run("quantize", tiny_model_dir, "--output", out, *extra)
    assert res.exit_code == 0, res.output
    (weights,) = quantized_weights(out)
    assert (weights.strategy.value, weights.group_size) == (strategy, group_size)


def test_gptq_act_order_rule_comes_from_the_method_record(tiny_model_dir, tmp_path):
    """--dynamic-groups with act-order stores g_idx; the method record, not the CLI, sets actorder."""
    out = tmp_path / "q"
    res = run("quantize", tiny_model_dir, "--output", out, "--method", "gptq", "--group-size", "32",
              "--dynamic-groups", "--dataset", "synthetic", "--num-samples", "2", "--seq-len", "16")
    assert res.exit_code == 0, res.output
    (weights,) = quantized_weights(out)
    assert weights.actorder and weights.group_size == 32
