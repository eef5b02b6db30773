"""ONNX export (quantize/onnx_export.py, onnx_layers.py): each weight form against QuantLinear's own forward
in onnxruntime, and whole models checked in a process that imports only numpy and onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from conftest import quantized_checkpoint
from quantize.cli import app
from quantize.linear import QuantLinear
from quantize.loading import load_checkpoint
from quantize.onnx_export import export_onnx
from quantize.onnx_layers import MS_DOMAIN, OnnxExportError, linear_nodes
from quantize.primitives import QTensor, quantize_weight
from quantize.recipe import Recipe
from quantize.scheme import QuantArgs, QuantScheme, Strategy, preset

ROOT = Path(__file__).resolve().parents[1]
EVAL_SCRIPT = ROOT / "scripts" / "onnx_eval.py"


def ort_session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # onnxruntime would otherwise rewrite DequantizeLinear + MatMul with int8 activations.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_layer(layer: QuantLinear, x: torch.Tensor) -> tuple[np.ndarray, str]:
    """The layer's ONNX nodes as a one-layer graph, run on x [M, K]; returns (y, form)."""
    built = linear_nodes("layer", layer, "x", "y")
    graph = helper.make_graph(built.nodes, "layer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, layer.in_features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, layer.out_features])],
                              built.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)])
    return ort_session(model.SerializeToString()).run(None, {"x": x.numpy()})[0], built.kind


def int_scheme(bits: int, group_size: int | None, symmetric: bool = True) -> QuantScheme:
    return QuantScheme(weights=QuantArgs(num_bits=bits, symmetric=symmetric).with_group_size(group_size))


FP8 = dict(num_bits=8, type="float", fp_format="e4m3")
# (scheme, the form onnx_layers must choose); K = 576 makes groups of 128 end in a 64-wide group.
LAYER_CASES = {
    "w4-g128-sym": (int_scheme(4, 128), "MatMulNBits 4-bit block 128"),
    "w4-g128-asym": (int_scheme(4, 128, symmetric=False), "MatMulNBits 4-bit block 128"),
    "w4-g64-asym": (int_scheme(4, 64, symmetric=False), "MatMulNBits 4-bit block 64"),
    "w4-g32": (int_scheme(4, 32), "MatMulNBits 4-bit block 32"),
    "w4-g96": (int_scheme(4, 96), "MatMulNBits 4-bit block 32"),  # 96 is no power of two: scales repeated
    "w4-channel": (int_scheme(4, None, symmetric=False), "MatMulNBits 4-bit block 128"),
    "w4-g24": (int_scheme(4, 24), "QDQ int4 block 24"),  # no power-of-two block >= 16 divides 24
    "w2-g64-asym": (int_scheme(2, 64, symmetric=False), "MatMulNBits 2-bit block 64"),
    "w3-g128-asym": (int_scheme(3, 128, symmetric=False), "QDQ int4 block 128"),
    "w6-g64": (int_scheme(6, 64), "QDQ int8 block 64"),
    "w8-channel": (preset("w8a16"), "QDQ int8"),
    "fp8-weight-only": (preset("fp8-weight-only"), "QDQ float8_e4m3fn"),
    "fp8-e5m2-block": (QuantScheme(weights=QuantArgs(**{**FP8, "fp_format": "e5m2"}, strategy=Strategy.BLOCK,
                                                     block_structure=(64, 128))), "QDQ float8_e5m2 block 128"),
    "fp8-w8a8": (preset("fp8"), "QDQ float8_e4m3fn + activation QDQ"),
    "int8-w8a8": (preset("w8a8-int8"), "QDQ int8 + activation QDQ"),
    "int8-w8a8-static": (preset("w8a8-int8-static"), "QDQ int8 + activation QDQ"),
    "fp8-static": (preset("fp8-static"), "QDQ float8_e4m3fn + activation QDQ"),  # one weight scale
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_matches_quantlinear(case):
    scheme, form = LAYER_CASES[case]
    torch.manual_seed(0)
    weight, bias = torch.randn(40, 576), torch.randn(40)
    static = scheme.input_activations is not None and not scheme.input_activations.dynamic
    layer = QuantLinear.from_qtensor(quantize_weight(weight, scheme.weights), scheme, bias=bias,
                                     input_scale=torch.tensor([0.02]) if static else None)
    x = torch.randn(7, 576)
    got, kind = run_layer(layer, x)
    assert kind == form
    with torch.no_grad():
        expected = layer(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def act_order_layer(g_idx: torch.Tensor, group_size: int) -> QuantLinear:
    scheme = QuantScheme(weights=QuantArgs(num_bits=4, group_size=group_size, symmetric=False, actorder=True))
    n, k, groups = 24, g_idx.numel(), int(g_idx.max()) + 1
    g = torch.Generator().manual_seed(0)
    qt = QTensor(torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8),
                 torch.rand(n, groups, generator=g) + 0.1, torch.randint(-8, 8, (n, groups), generator=g,
                                                                          dtype=torch.int8),
                 scheme.weights, g_idx.to(torch.int32))
    return QuantLinear.from_qtensor(qt, scheme)


def test_act_order_columns_are_gathered():
    k, group_size = 160, 32
    g_idx = torch.empty(k, dtype=torch.int64)
    g_idx[torch.randperm(k, generator=torch.Generator().manual_seed(1))] = torch.arange(k) // group_size
    layer = act_order_layer(g_idx, group_size)
    x = torch.randn(5, k)
    got, kind = run_layer(layer, x)
    assert kind == "MatMulNBits 4-bit block 32"
    with torch.no_grad():
        np.testing.assert_allclose(got, layer(x).numpy(), rtol=1e-5, atol=1e-4)


def test_act_order_groups_of_unequal_length_are_refused():
    g_idx = torch.cat([torch.zeros(40), torch.ones(24)]).long()  # group 0 has 40 columns, group size 32
    with pytest.raises(OnnxExportError, match="layer proj: act-order groups"):
        linear_nodes("proj", act_order_layer(g_idx, 32), "x", "y")


def test_activation_groups_are_refused():
    scheme = preset("fp8-block")
    layer = QuantLinear.from_qtensor(quantize_weight(torch.randn(32, 256), scheme.weights), scheme)
    with pytest.raises(OnnxExportError, match="layer model.q: activation groups"):
        linear_nodes("model.q", layer, "x", "y")


def onnx_logits(model_dir: Path, ids: np.ndarray, tmp_path: Path) -> np.ndarray:
    """Logits from scripts/onnx_eval.py in a fresh process that imports only numpy and onnxruntime."""
    np.save(tmp_path / "ids.npy", ids)
    done = subprocess.run([sys.executable, str(EVAL_SCRIPT), str(model_dir), "--ids", str(tmp_path / "ids.npy"),
                           "--logits", str(tmp_path / "logits.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["imported_qtool"] is False
    return np.load(tmp_path / "logits.npy")


# A 128-wide tiny Llama with a 320-wide MLP: groups of 128 end short in down_proj.
WIDE = dict(hidden_size=128, intermediate_size=320)
MODEL_CASES = {"w4a16-asym": ("MatMulNBits", 1e-5), "w3a16": ("QDQ int4", 1e-5),
               # a float32 difference upstream can move an activation across a rounding boundary
               "fp8": ("activation QDQ", 2e-2)}


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_model_logits_match_in_onnxruntime(tmp_path, name):
    form, tolerance = MODEL_CASES[name]
    checkpoint = quantized_checkpoint(tmp_path / "q", preset(name), **WIDE)
    out = export_onnx(checkpoint, tmp_path / "onnx")
    summary = json.loads((out / "onnx_export.json").read_text())
    assert len(summary["layers"]) == 14 and all(form in kind for kind in summary["layers"].values())
    assert (out / "tokenizer.json").is_file() or not (checkpoint / "tokenizer.json").is_file()
    ids = torch.randint(0, 128, (3, 37), generator=torch.Generator().manual_seed(0))  # not the traced shape
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        expected = model(ids).logits.numpy()
    got = onnx_logits(out, ids.numpy(), tmp_path)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance * np.abs(expected).max())


def test_cli_export_onnx(tmp_path):
    checkpoint = quantized_checkpoint(tmp_path / "q", preset("w4a16").with_weights(group_size=64))
    out = tmp_path / "onnx"
    res = CliRunner().invoke(app, ["export", str(checkpoint), "--format", "onnx", "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and (out / "model.onnx").is_file()
    res = CliRunner().invoke(app, ["export", str(checkpoint), "--format", "onnx", "--output", str(out)])
    assert res.exit_code == 2 and "exists" in res.output


def test_cli_without_the_onnx_packages_says_what_to_install(tmp_path):
    checkpoint = quantized_checkpoint(tmp_path / "q", preset("w4a16").with_weights(group_size=64))
    code = ("import sys; sys.modules['onnxscript'] = None\n"  # as if it were not installed
            "from quantize.cli import app\n"
            f"app(['export', {str(checkpoint)!r}, '--format', 'onnx', '--output', {str(tmp_path / 'o')!r}])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == ("error: ONNX export needs onnxscript, which is not installed: "
                                   "pip install 'qtool[onnx]'")
    assert not (tmp_path / "o").exists()


def test_cli_refuses_unexportable_checkpoint_without_writing(tmp_path):
    checkpoint = quantized_checkpoint(tmp_path / "q", preset("fp8-block"), **WIDE)
    out = tmp_path / "onnx"
    res = CliRunner().invoke(app, ["export", str(checkpoint), "--format", "onnx", "--output", str(out)])
    assert res.exit_code == 2
    assert "activation groups" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".onnx.*"))


@pytest.mark.slow
def test_smollm2_onnx_perplexity_matches_qtool(smollm2_dir, shared_data, tmp_path):
    """SmolLM2-135M W4A16 g128 (K = 576: the last group of 128 is 64 wide), perplexity within 0.5%."""
    from transformers import AutoTokenizer

    from quantize import data, load_model, quantize_model, save_checkpoint
    from quantize.evaluate import evaluate

    model, _ = load_model(smollm2_dir)
    result = quantize_model(model, Recipe.single(preset("w4a16"), "rtn"), progress=False)
    checkpoint = save_checkpoint(model, result.config, tmp_path / "w4", source_dir=smollm2_dir)
    out = export_onnx(checkpoint, tmp_path / "onnx")
    windows = data.evaluation_windows(AutoTokenizer.from_pretrained(checkpoint),
                                      data.load_texts(str(shared_data / "test.jsonl")), seq_len=512, max_windows=6)
    model, _ = load_checkpoint(checkpoint)
    ours = evaluate(model, windows, progress=False).perplexity
    np.save(tmp_path / "windows.npy", windows.numpy())
    done = subprocess.run([sys.executable, str(EVAL_SCRIPT), str(out), "--windows", str(tmp_path / "windows.npy")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout.splitlines()[-1])
    assert theirs["imported_qtool"] is False
    assert abs(theirs["perplexity"] / ours - 1) < 0.005, (theirs["perplexity"], ours)
