"""QuantLinear, the ops' reference path, and checkpoints that load back to the same logits."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_llama
from quantize.checkpoint import CheckpointError, save_checkpoint
from quantize.linear import QuantLinear
from quantize.loading import load_checkpoint
from quantize.primitives import fake_quantize, quantize_weight
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import preset

WEIGHT_ONLY = ["w4a16", "w4a16-asym", "w3a16", "w8a16", "fp8-weight-only"]


def fake_quant_model(scheme):
    """The float model with every targeted linear's weight replaced by its MinMax fake-quantized copy."""
    model = tiny_llama()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                mod.weight.copy_(fake_quantize(mod.weight, scheme.weights))
    return model


@pytest.mark.parametrize("name", WEIGHT_ONLY)
def test_checkpoint_logits_match_fake_quant(tmp_path, name):
    scheme = preset(name)
    if scheme.weights.group_size:
        scheme = scheme.with_weights(group_size=64)  # 96 inputs: a full group and a shorter one
    model = tiny_llama()
    result = quantize_model(model, Recipe.single(scheme, "rtn"), progress=False)
    save_checkpoint(model, result.config, tmp_path / "ck")
    loaded, qconfig = load_checkpoint(tmp_path / "ck")
    assert qconfig.scheme_for("model.layers.1.mlp.down_proj") is not None
    assert isinstance(loaded.get_submodule("model.layers.0.self_attn.q_proj"), QuantLinear)
    assert not isinstance(loaded.lm_head, QuantLinear)  # ignored by default
    ids = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(0))
    expected = fake_quant_model(scheme)(ids).logits
    got = loaded(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Tied embeddings stay tied and are stored once.
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("name", ["w8a8-int8", "fp8", "fp8-block"])
def test_w8a8_layer_matches_float64_reference(name):
    """QuantLinear with dynamic activations equals dequant(x) @ dequant(W)^T computed in float64."""
    scheme = preset(name)
    torch.manual_seed(0)
    w, x, b = torch.randn(200, 300), torch.randn(5, 7, 300), torch.randn(200)
    layer = QuantLinear.from_qtensor(quantize_weight(w, scheme.weights), scheme, bias=b)
    xq = fake_quantize(x.reshape(-1, 300).double(), scheme.input_activations)
    ref = F.linear(xq, layer.dequantize_weight(torch.float64), b.double()).reshape(5, 7, 200)
    torch.testing.assert_close(layer(x).double(), ref, rtol=1e-5, atol=1e-4)


def test_int8_w8a8_is_exact_in_integers():
    scheme = preset("w8a8-int8")
    w, x = torch.randn(64, 128), torch.randn(9, 128)
    layer = QuantLinear.from_qtensor(quantize_weight(w, scheme.weights), scheme)
    xq, xs = torch.ops.qtool.quantize_activation(x, "int8", 0, None)
    acc = xq.double() @ layer.weight.double().T
    torch.testing.assert_close(layer(x).double(), acc * xs.double() * layer.weight_scale.double().T,
                               rtol=1e-6, atol=1e-5)


def test_quantized_lm_head_unties(tmp_path):
    model = tiny_llama()
    scheme = preset("w8a16").__class__(weights=preset("w8a16").weights, ignore=())
    result = quantize_model(model, Recipe.single(scheme, "rtn"), progress=False)
    assert isinstance(model.lm_head, QuantLinear)
    save_checkpoint(model, result.config, tmp_path / "ck")
    loaded, _ = load_checkpoint(tmp_path / "ck")
    ids = torch.randint(0, 128, (1, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_save_refuses_existing_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    model = tiny_llama()
    result = quantize_model(model, Recipe.single(preset("w4a16").with_weights(group_size=32), "rtn"), progress=False)
    out = tmp_path / "ck"
    out.mkdir()
    with pytest.raises(ValueError, match="exists"):
        save_checkpoint(model, result.config, out)
    import quantize.checkpoint as ck

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(model, result.config, tmp_path / "new")
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_sharded_checkpoint(tmp_path):
    model = tiny_llama()
    result = quantize_model(model, Recipe.single(preset("w8a16"), "rtn"), progress=False)
    save_checkpoint(model, result.config, tmp_path / "ck", max_shard_bytes=20_000)
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded, _ = load_checkpoint(tmp_path / "ck")
    ids = torch.randint(0, 128, (1, 5))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_corrupt_checkpoint_errors(tmp_path):
    model = tiny_llama()
    result = quantize_model(model, Recipe.single(preset("w4a16").with_weights(group_size=32), "rtn"), progress=False)
    ck = save_checkpoint(model, result.config, tmp_path / "ck")
    (ck / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(ck)
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path / "missing")


def test_ops_pass_opcheck():
    from quantize.primitives import pack_int

    torch.manual_seed(0)
    q = torch.randint(-8, 8, (16, 64), dtype=torch.int8)
    x = torch.randn(3, 64)
    args = (x, pack_int(q, 4), torch.rand(16, 2) + 0.1, None, None, torch.randn(16), 4, 32, 64)
    torch.library.opcheck(torch.ops.qtool.weight_only_linear.default, args)
    torch.library.opcheck(torch.ops.qtool.quantize_activation.default, (x, "e4m3", 32, None))
    torch.library.opcheck(torch.ops.qtool.quantize_activation.default, (x, "int8", 0, None))
    xq, xs = torch.ops.qtool.quantize_activation(x, "int8", 0, None)
    wq = torch.randint(-127, 128, (16, 64), dtype=torch.int8)
    torch.library.opcheck(torch.ops.qtool.scaled_linear.default,
                          (xq, xs, wq, torch.rand(16, 1), None, 0, 0, 0, torch.float32))
    ws = torch.rand(16, 1)
    torch.library.opcheck(torch.ops.qtool.w8a8_linear.default, (x, wq, ws, torch.randn(16), None, "int8", 0, 0, 0))
    # The layer op is quantize_activation followed by scaled_linear, also with a static scale.
    static = torch.tensor([0.01])
    xq, xs = torch.ops.qtool.quantize_activation(x, "int8", 0, static)
    want = torch.ops.qtool.scaled_linear(xq, xs, wq, ws, None, 0, 0, 0, torch.float32)
    assert torch.equal(torch.ops.qtool.w8a8_linear(x, wq, ws, None, static, "int8", 0, 0, 0), want)


def test_call_order_follows_the_forward_pass():
    """call_order lists QuantLinears as a forward calls them (the order link_weight_prefetch chains);
    off CUDA nothing is linked and the logits are unchanged."""
    from quantize.prefetch import call_order, link_weight_prefetch

    model = tiny_llama()
    quantize_model(model, Recipe.single(preset("w8a16"), "rtn"), progress=False)
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    names = {id(m): n for n, m in model.named_modules()}
    order = [names[id(m)] for m in call_order(model, lambda: model(ids))]
    per_block = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    assert order == [f"model.layers.{i}.{p}" for i in range(2) for p in per_block]
    assert link_weight_prefetch(model, lambda: model(ids)) == 0
    assert all(getattr(m, "cuda_prefetch", None) is None for m in model.modules())
    assert not any(m._forward_pre_hooks for m in model.modules())  # the recording hooks are gone
    torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)


def test_prefetch_size_comes_from_the_environment(monkeypatch):
    """QTOOL_PREFETCH_MB sets how much of the next weight a GEMV pulls into L2 (MiB, a multiple of 16 bytes);
    anything but a number >= 0 is refused with the variable's name and value."""
    from quantize.prefetch import DEFAULT_PREFETCH_MB, PREFETCH_MB_ENV, prefetch_bytes

    monkeypatch.delenv(PREFETCH_MB_ENV, raising=False)
    assert prefetch_bytes() == int(DEFAULT_PREFETCH_MB * 2**20)
    monkeypatch.setenv(PREFETCH_MB_ENV, "16")
    assert prefetch_bytes() == 16 << 20
    monkeypatch.setenv(PREFETCH_MB_ENV, "0.001")
    assert prefetch_bytes() == 1040  # 1048.576 bytes, down to a multiple of 16
    for bad in ("-1", "lots", "nan"):
        monkeypatch.setenv(PREFETCH_MB_ENV, bad)
        with pytest.raises(ValueError, match=f"{PREFETCH_MB_ENV}='{bad}'"):
            prefetch_bytes()
