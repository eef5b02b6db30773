"""dev/step_ab.py: the in-process A/B's settings are applied and undone exactly (a later variant must not see an
earlier one's routes), bad settings are refused by name, and a run on the tiny model writes every variant's steps."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from qtool_kernels import attention, tuning

SCRIPT = Path(__file__).resolve().parents[1] / "dev" / "step_ab.py"


@pytest.fixture(scope="module")
def step_ab():
    spec = importlib.util.spec_from_file_location("step_ab", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_apply_and_undo(step_ab):
    table, min_batch = copy.deepcopy(tuning.MIXED), attention.ROPE_MIN_BATCH
    settings = [step_ab.Setting(text) for text in (
        f"qtool_kernels.attention.ROPE_MIN_BATCH={min_batch + 3}",
        'qtool_kernels.tuning.MIXED[(4, 14336, 4096)][16]="dequant"',  # a cell replaced
        'qtool_kernels.tuning.MIXED[(4, 1, 1)]={1: "wo_gemm"}',  # a row added
    )]
    for setting in settings:
        setting.apply()
    assert attention.ROPE_MIN_BATCH == min_batch + 3
    assert tuning.MIXED[(4, 14336, 4096)][16] == "dequant" and tuning.MIXED[(4, 1, 1)] == {1: "wo_gemm"}
    for setting in reversed(settings):
        setting.undo()
    assert tuning.MIXED == table and attention.ROPE_MIN_BATCH == min_batch


def test_environment_settings_apply_and_undo(step_ab, monkeypatch):
    """os.environ is a Mapping, not a dict: a variable missing before is removed again, a set one restored."""
    monkeypatch.delenv("QTOOL_WO_SPLIT", raising=False)
    monkeypatch.setenv("QTOOL_WO_GEMM_PDL", "0")
    split, pdl = (step_ab.Setting(f'os.environ["{name}"]="{value}"')
                  for name, value in (("QTOOL_WO_SPLIT", "kept"), ("QTOOL_WO_GEMM_PDL", "1")))
    split.apply()
    pdl.apply()
    assert os.environ["QTOOL_WO_SPLIT"] == "kept" and os.environ["QTOOL_WO_GEMM_PDL"] == "1"
    pdl.undo()
    split.undo()
    assert "QTOOL_WO_SPLIT" not in os.environ and os.environ["QTOOL_WO_GEMM_PDL"] == "0"


@pytest.mark.parametrize("text, message", [
    ("ROPE_MIN_BATCH", "module.ATTR"),
    ("qtool_kernels.attention.NO_SUCH_SWITCH=1", "NO_SUCH_SWITCH"),
    ("no_such_package.ATTR=1", "no_such_package"),
])
def test_bad_settings_are_named(step_ab, text, message):
    with pytest.raises(ValueError, match=message):
        step_ab.Setting(text)


def test_tiny_run_writes_every_variant(step_ab, tmp_path, monkeypatch):
    out = tmp_path / "ab.json"
    monkeypatch.setattr(sys, "argv", [
        "step_ab.py", "--config", "tiny", "--scheme", "w8a16", "--device", "cpu", "--batches", "1,2",
        "--decode-tokens", "3", "--rounds", "2", "--variant", "main",
        "--variant", "off", "quantize.rotary.ENABLED=False", "--json", str(out)])
    step_ab.main()
    figures = json.loads(out.read_text())
    assert set(figures["bf16"]) == {"1", "2"}
    for variant in figures["variants"].values():
        assert {b: len(r) for b, r in variant["steps"].items()} == {"1": 2, "2": 2}
        assert all(r > 0 for rates in variant["steps"].values() for r in rates)
