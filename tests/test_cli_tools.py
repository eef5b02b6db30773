"""qtool calibrate, eval and report from the command line, on a tiny model and text written here."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from quantize.calibration import load_stats
from quantize.cli import app

TEXT = ("the city was known for its university and the school of the state . " * 40 + "\n") * 30


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps({"text": TEXT[i * 200:(i + 1) * 200]}) for i in range(20)))
    return path


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse", "kl"])
def test_calibrate_then_static_quantize(wide_model_dir, tmp_path, text_file, observer):
    stats_dir = tmp_path / "stats"
    res = run("calibrate", wide_model_dir, "--dataset", text_file, "--num-samples", 4, "--seq-len", 32,
              "--observer", observer, "--output", stats_dir)
    assert res.exit_code == 0, res.output
    stats = load_stats(stats_dir)
    assert len(stats.tensors) == 14 and stats.observer == observer
    res = run("quantize", wide_model_dir, "--scheme", "w8a8-int8-static", "--calibration", stats_dir,
              "--output", tmp_path / "q")
    assert res.exit_code == 0, res.output


def test_static_scheme_without_calibration_names_calibrate(wide_model_dir, tmp_path):
    res = run("quantize", wide_model_dir, "--scheme", "fp8-static", "--output", tmp_path / "q")
    assert res.exit_code == 2 and "qtool calibrate" in res.output


@pytest.mark.parametrize("args, fragment", [
    (["--observer", "magic"], "magic"),
    (["--dataset", "missing.txt"], "missing.txt"),
    (["--text-column", "body"], None),
])
def test_calibrate_errors(wide_model_dir, tmp_path, text_file, args, fragment):
    base = ["calibrate", wide_model_dir, "--output", tmp_path / "s", "--num-samples", 2, "--seq-len", 16]
    if "--dataset" not in args:
        base += ["--dataset", text_file]
    res = run(*base, *args)
    if fragment is None:  # a .txt file has no columns: the option is simply unused
        assert res.exit_code == 0, res.output
        return
    assert res.exit_code == 2 and fragment in res.output and "Traceback" not in res.output


def test_eval_with_base_and_report_plot(wide_model_dir, tmp_path, text_file, eval_file):
    out = tmp_path / "q"
    res = run("quantize", wide_model_dir, "--method", "gptq", "--bits", 3, "--dataset", text_file,
              "--num-samples", 4, "--seq-len", 32, "--output", out)
    assert res.exit_code == 0, res.output
    res = run("eval", out, "--dataset", eval_file, "--split", "train", "--seq-len", 32, "--base", wide_model_dir,
              "--json", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["perplexity"] > 1 and 0 < figures["top1_agreement"] <= 1 and figures["kl_divergence"] > 0
    res = run("report", out, "--plot", tmp_path / "errors.png")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "errors.png").stat().st_size > 1000
    errors = json.loads((out / "layer_errors.json").read_text())["layers"]
    assert all(e["rel_error"] > 0 and "gptq_loss" in e["method_stats"] for e in errors)


def test_eval_dtype(wide_model_dir, tmp_path, eval_file):
    res = run("eval", wide_model_dir, "--dataset", eval_file, "--split", "train", "--seq-len", 32, "--dtype", "float64")
    assert res.exit_code == 2 and "float64" in res.output
    res = run("eval", wide_model_dir, "--dataset", eval_file, "--split", "train", "--seq-len", 32,
              "--dtype", "bfloat16", "--json", tmp_path / "e.json")
    assert res.exit_code == 0, res.output
    figures = json.loads((tmp_path / "e.json").read_text())
    assert figures["dtype"] == "bfloat16" and figures["perplexity"] > 1


def test_eval_tasks_without_lm_eval(wide_model_dir, eval_file):
    import importlib.util
    if importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm-eval is installed")
    res = run("eval", wide_model_dir, "--dataset", eval_file, "--tasks", "hellaswag")
    assert res.exit_code == 2 and "lm-evaluation-harness" in res.output


def test_kernels_info_and_build_without_gpu(tmp_path):
    import torch

    res = run("kernels", "info", "--json", tmp_path / "k.json")
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "k.json").read_text())
    assert set(info["cuda_implementations"]) == {"weight-only QuantLinear", "qtool::weight_only_linear",
                                                 "qtool::scaled_linear", "qtool::quantize_activation",
                                                 "qtool::w8a8_linear", "w1a16 QuantLinear",
                                                 "w1a1 QuantLinear", "decode attention"}
    assert info["switches"] == {k: v for k, v in os.environ.items() if k.startswith("QTOOL_")}
    if not torch.cuda.is_available():
        assert info["available"] is False
        res = run("kernels", "build")
        assert res.exit_code == 2 and "could not be built" in res.output
