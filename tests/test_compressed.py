"""compressed-tensors export and import.

The exports are checked against compressed-tensors itself, run in a subprocess that never imports
quantize: transformers' from_pretrained (logits) and compressed-tensors' own target matching and
decompressors (dequantized weights). Observed on CPU in float32: bit-identical; asserted: weights
exactly, logits within 1e-5 (absolute and relative; logits are about 1 in size).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from conftest import quantized_checkpoint, tiny_llama
from quantize.checkpoint import save_checkpoint, write_checkpoint
from quantize.cli import app
from quantize.compressed import (
    CT_VERSION,
    CompressedTensorsError,
    pack_dense,
    unpack_dense,
)
from quantize.hf import compressed_tensors_via_qtool
from quantize.linear import QuantLinear, set_submodule
from quantize.loading import export_compressed_tensors, load_checkpoint
from quantize.primitives import QTensor, pack_int
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import Assignment, preset

HAS_CT = importlib.util.find_spec("compressed_tensors") is not None
NO_CT = "compressed-tensors is not installed (pip install -e '.[compressed]')"
needs_ct = pytest.mark.skipif(not HAS_CT, reason=NO_CT)
WIDE = dict(hidden_size=128, intermediate_size=256)
IDS = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(0))

# name: (scheme, model overrides, act-order relabelling of groups, expected exported weight group size)
CASES = {
    "w4a16-g32": (preset("w4a16").with_weights(group_size=32), {}, False, 32),
    "w4a16-asym-g32": (preset("w4a16-asym").with_weights(group_size=32), {}, False, 32),
    "w4a16-g64-short": (preset("w4a16").with_weights(group_size=64), {}, False, 32),  # 96 = 64 + 32
    "w4a16-g96-wide": (preset("w4a16").with_weights(group_size=96), WIDE, False, 32),  # 128 = 96 + 32
    "w4a16-g32-actorder": (preset("w4a16").with_weights(group_size=32), {}, True, 32),
    "w4a16-asym-g64-actorder": (preset("w4a16-asym").with_weights(group_size=64), {}, True, 32),
    "w3a16-g32": (preset("w3a16").with_weights(group_size=32), {}, False, 32),  # 3-bit codes straddle words
    "w8a16": (preset("w8a16"), {}, False, None),
    "w8a8-int8": (preset("w8a8-int8"), {}, False, None),
    "w8a8-int8-static": (preset("w8a8-int8-static"), {}, False, None),
    "fp8": (preset("fp8"), {}, False, None),
    "fp8-weight-only": (preset("fp8-weight-only"), {}, False, None),
    "fp8-block": (preset("fp8-block"), WIDE, False, None),  # 1x128 activation groups need K % 128 == 0
}
FORMATS = {"w8a8-int8": "int-quantized", "w8a8-int8-static": "int-quantized", "fp8": "float-quantized",
           "fp8-block": "float-quantized", "fp8-weight-only": "naive-quantized"}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def relabel_groups(model, qconfig, *, scatter: bool = False, seed: int = 0):
    """Give every grouped layer an act-order g_idx. scatter=False keeps each group's columns contiguous and
    only permutes the group numbers (the weight stays the same); scatter=True spreads groups over columns."""
    gen = torch.Generator().manual_seed(seed)
    groups = {}
    for group_name, assignment in qconfig.groups.items():
        scheme = assignment.scheme.with_weights(actorder=True)
        for name in assignment.modules:
            old = model.get_submodule(name)
            k, g = old.in_features, scheme.weights.group_size
            perm = torch.randperm(old.weight_scale.shape[1], generator=gen)
            scale, zp = old.weight_scale.clone(), getattr(old, "weight_zero_point", None)
            if scatter:
                g_idx = torch.randperm(k, generator=gen) // g
            else:
                g_idx = perm[torch.arange(k) // g]
                scale[:, perm] = old.weight_scale
                if zp is not None:
                    zp = zp.clone()
                    zp[:, perm] = old.weight_zero_point
            qt = QTensor(old.codes(), scale, zp, scheme.weights, g_idx.to(torch.int32))
            set_submodule(model, name, QuantLinear.from_qtensor(qt, scheme, old.bias))
        groups[group_name] = Assignment(scheme, assignment.modules)
    return dataclasses.replace(qconfig, groups=groups)


def act_order_checkpoint(path, scheme, *, scatter: bool, **overrides):
    model = tiny_llama(**overrides)
    result = quantize_model(model, Recipe.single(scheme, "rtn"), progress=False)
    return save_checkpoint(model, relabel_groups(model, result.config, scatter=scatter), path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (qtool checkpoint, its compressed-tensors export)."""
    root = tmp_path_factory.mktemp("ct")
    out = {}
    for name, (scheme, overrides, act_order, _) in CASES.items():
        if act_order:
            ck = act_order_checkpoint(root / name, scheme, scatter=False, **overrides)
        else:
            static = 0.03 if "static" in name else None
            ck = quantized_checkpoint(root / name, scheme, input_scale=static, **overrides)
        out[name] = (ck, export_compressed_tensors(ck, root / f"{name}-ct"))
    return out


@pytest.mark.parametrize("name", CASES)
def test_export_round_trip_is_exact(exported, name):
    ck, ct = exported[name]
    config = json.loads((ct / "config.json").read_text())
    assert "transformers_weights" not in config  # plain transformers must load it
    q = config["quantization_config"]
    assert (q["quant_method"], q["quantization_status"]) == ("compressed-tensors", "compressed")
    assert q["version"] == CT_VERSION
    assert q["format"] == FORMATS.get(name, "pack-quantized") and q["ignore"] == ["lm_head"]
    (group,) = q["config_groups"].values()
    assert group["targets"] == ["Linear"] and group["weights"]["group_size"] == CASES[name][3]
    assert "actorder" not in group["weights"]
    expected = logits(load_checkpoint(ck)[0])
    assert torch.equal(logits(load_checkpoint(ct)[0]), expected)
    with compressed_tensors_via_qtool():
        model = AutoModelForCausalLM.from_pretrained(ct)
    assert isinstance(model.model.layers[1].mlp.down_proj, QuantLinear)
    assert torch.equal(logits(model), expected)


CT_CHECK = """
import json, sys
from pathlib import Path

import torch
from compressed_tensors.compressors import BaseCompressor
from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

ids = torch.load(sys.argv[1])
for ckpt in map(Path, sys.argv[2:]):
    result = {"weights": {}}
    try:
        with torch.no_grad():
            result["logits"] = AutoModelForCausalLM.from_pretrained(ckpt)(ids).logits
    except Exception as err:  # recorded for the test to judge
        result["error"] = f"{type(err).__name__}: {err}"
    # compressed-tensors' own reading of each layer: its target matching, formats and decompressors
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ckpt))
    apply_quantization_config(model, QuantizationConfig.model_validate(
        json.loads((ckpt / "config.json").read_text())["quantization_config"]))
    tensors = load_file(ckpt / "model.safetensors")
    for name, module in model.named_modules():
        scheme = getattr(module, "quantization_scheme", None)
        if scheme is not None:
            local = {k[len(name) + 1:]: t for k, t in tensors.items() if k.startswith(name + ".")}
            compressor = BaseCompressor.get_value_from_registry(scheme.format)
            result["weights"][name] = compressor.decompress(local, scheme)["weight"]
    torch.save(result, ckpt / "ct_result.pt")
assert "quantize" not in sys.modules and "qtool_kernels" not in sys.modules
"""


def run_compressed_tensors(tmp_path, checkpoints) -> dict:
    """Each checkpoint as plain transformers + compressed-tensors read it, in a process without quantize."""
    script, ids = tmp_path / "ct_check.py", tmp_path / "ids.pt"
    script.write_text(CT_CHECK)
    torch.save(IDS, ids)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a process that never saw this checkout
    proc = subprocess.run([sys.executable, script, ids, *checkpoints], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {ck: torch.load(ck / "ct_result.pt") for ck in checkpoints}


@pytest.fixture(scope="module")
def ct_results(exported, tmp_path_factory):
    if not HAS_CT:
        pytest.skip(NO_CT)
    return run_compressed_tensors(tmp_path_factory.mktemp("run"), [ct for _, ct in exported.values()])


def check_against_compressed_tensors(result, model, symmetric: bool):
    assert result["weights"].keys() == {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    for name, weight in result["weights"].items():
        assert torch.equal(weight, model.get_submodule(name).dequantize_weight(weight.dtype)), name
    if symmetric or "error" not in result:
        torch.testing.assert_close(result["logits"], logits(model), rtol=1e-5, atol=1e-5)
    else:
        # Some releases cannot load asymmetric pack-quantized checkpoints at all, compressed-tensors' own included
        # (with compressed-tensors 0.20, transformers 5.23-5.25: on the meta device its compressor leaves
        # weight_zero_point unpacked [N, G] while the files hold it packed; transformers 5.0: it unpacks the
        # model's int8 zero points instead of the file's int32 words); transformers 5.17 loads them, and the logits
        # are compared there. Any other failure is ours.
        known = ("ignore_mismatched_sizes", "Expected torch.int32 but got torch.int8")
        assert any(k in result["error"] for k in known), result["error"]


@needs_ct
@pytest.mark.parametrize("name", CASES)
def test_plain_compressed_tensors_reads_the_export(exported, ct_results, name):
    ck, ct = exported[name]
    check_against_compressed_tensors(ct_results[ct], load_checkpoint(ck)[0], CASES[name][0].weights.symmetric)


def ct_written_checkpoint(path, num_bits: int, symmetric: bool):
    """A checkpoint written by compressed-tensors' own compressor (qtool computes only the scales)."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    from quantize.primitives import choose_qparams

    model = tiny_llama()
    weights = {"num_bits": num_bits, "type": "int", "symmetric": symmetric, "strategy": "group", "group_size": 32}
    apply_quantization_config(model, QuantizationConfig.model_validate({
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}, "ignore": ["lm_head"],
        "quantization_status": "frozen"}))
    args = preset("w4a16").with_weights(num_bits=num_bits, symmetric=symmetric, group_size=32).weights
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_scale"):
                scale, zero_point = choose_qparams(module.weight, args)
                module.weight_scale.copy_(scale)
                if zero_point is not None:
                    module.weight_zero_point.copy_(zero_point)
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(path)
    compressor.update_config(path)
    return path


@needs_ct
def test_checkpoints_written_by_compressed_tensors_import(tmp_path):
    written = {(bits, sym): ct_written_checkpoint(tmp_path / f"w{bits}-{sym}", bits, sym)
               for bits, sym in [(4, True), (3, False), (8, True)]}
    results = run_compressed_tensors(tmp_path, list(written.values()))
    for (bits, sym), path in written.items():
        model, qconfig = load_checkpoint(path)
        assert qconfig.groups["group_0"].scheme.weights.num_bits == bits
        check_against_compressed_tensors(results[path], model, sym)


def test_legacy_act_order_checkpoint_imports(tmp_path):
    """compressed-tensors before 0.18 packed 3-bit codes 10 to a word, and before 0.20 stored act-order g_idx."""
    ck = act_order_checkpoint(tmp_path / "ck", preset("w3a16").with_weights(group_size=32), scatter=True)
    model, qconfig = load_checkpoint(ck)
    tensors = {}
    for key, t in model.state_dict().items():
        module, _, local = key.rpartition(".")
        if local == "weight_packed":
            layer = model.get_submodule(module)
            tensors[key] = pack_int(layer.codes(), 3)  # the old layout is qtool's own
        elif key != "lm_head.weight":
            tensors[key] = t
    config = model.config.to_dict()
    config["quantization_config"] = {
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 3, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32,
            "actorder": "group"}}},
        "format": "pack-quantized", "ignore": ["lm_head"], "quant_method": "compressed-tensors",
        "quantization_status": "compressed", "version": "0.17.1"}
    legacy = write_checkpoint(tensors, config, tmp_path / "legacy")
    imported, iconfig = load_checkpoint(legacy)
    assert iconfig.groups["group_0"].scheme.weights.actorder
    assert torch.equal(logits(imported), logits(model))
    with pytest.raises(CompressedTensorsError, match="act-order groups are not contiguous"):
        export_compressed_tensors(ck, tmp_path / "out")


def test_without_the_compressed_tensors_package_from_pretrained_uses_qtool(monkeypatch, exported):
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING as mapping

    import quantize.hf as hf

    monkeypatch.setitem(mapping, "compressed-tensors", mapping["compressed-tensors"])  # restored afterwards
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "compressed_tensors" else find_spec(name, *args))
    hf.register()
    ck, ct = exported["w4a16-asym-g32"]
    model = AutoModelForCausalLM.from_pretrained(ct, device_map="auto")
    assert isinstance(model.model.layers[0].mlp.up_proj, QuantLinear)
    assert torch.equal(logits(model), logits(load_checkpoint(ck)[0]))


@pytest.mark.parametrize("bits", range(1, 9))
def test_dense_packing(bits):
    codes = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (5, 77), dtype=torch.int8)
    packed = pack_dense(codes, bits)
    assert packed.shape == (5, -(-77 * bits // 32)) and packed.dtype == torch.int32
    assert torch.equal(unpack_dense(packed, bits, 77), codes)
    if 32 % bits == 0 and 2 <= bits <= 7:  # no code straddles a word: the same as qtool's own layout
        assert torch.equal(packed, pack_int(codes, bits))
    if HAS_CT:
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

        assert torch.equal(packed, pack_to_int32(codes, bits))
        assert torch.equal(pack_dense(codes.T, bits).T, pack_to_int32(codes, bits, packed_dim=0))


def test_unexportable_and_unsupported(tmp_path, exported):
    ck = quantized_checkpoint(tmp_path / "fp8-block", preset("fp8-block"))  # 1x128 groups on 96 inputs
    with pytest.raises(CompressedTensorsError, match="multiple of the activation group size 128"):
        export_compressed_tensors(ck, tmp_path / "out")
    e5m2 = preset("fp8-weight-only").with_weights(fp_format="e5m2")
    with pytest.raises(CompressedTensorsError, match="E4M3 only"):
        export_compressed_tensors(quantized_checkpoint(tmp_path / "e5m2", e5m2), tmp_path / "out")
    ct = exported["w8a16"][1]
    config = json.loads((ct / "config.json").read_text())
    config["quantization_config"]["kv_cache_scheme"] = {"num_bits": 8, "type": "float"}
    (ct.parent / "kv").mkdir()
    (ct.parent / "kv" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CompressedTensorsError, match="kv_cache_scheme"):
        load_checkpoint(ct.parent / "kv")


runner = CliRunner()


def test_cli_export_and_quantize_format(tiny_model_dir, tmp_path):
    def run(*args):
        return runner.invoke(app, [str(a) for a in args])

    res = run("quantize", tiny_model_dir, "--scheme", "w8a16", "--output", tmp_path / "q")
    assert res.exit_code == 0, res.output
    res = run("export", tmp_path / "q", "--format", "compressed-tensors", "--output", tmp_path / "ct")
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert (tmp_path / "ct" / "tokenizer.json").is_file()
    res = run("inspect", tmp_path / "ct")
    assert res.exit_code == 0 and "14 quantized layers" in res.output, res.output
    res = run("export", tmp_path / "ct", "--format", "qtool", "--output", tmp_path / "back")
    assert res.exit_code == 0, res.output
    assert torch.equal(logits(load_checkpoint(tmp_path / "back")[0]), logits(load_checkpoint(tmp_path / "q")[0]))
    res = run("quantize", tiny_model_dir, "--scheme", "w4a16", "--group-size", "32",
              "--format", "compressed-tensors", "--output", tmp_path / "direct")
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "direct" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and (tmp_path / "direct" / "layer_errors.json").is_file()
    for args, fragment in [(["export", tmp_path / "ct", "--format", "gguf"], "unknown --format 'gguf'"),
                           (["quantize", tiny_model_dir, "--scheme", "fp8-block", "--format", "compressed-tensors"],
                            "multiple of the activation group size 128")]:
        res = run(*args, "--output", tmp_path / "bad")
        assert res.exit_code == 2 and fragment in res.output and "Traceback" not in res.output
        assert not (tmp_path / "bad").exists()
