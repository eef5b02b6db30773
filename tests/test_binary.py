"""1-bit weights (w1a16) and binary activations (w1a1): codes, packing, RTN, GPTQ, the reference ops."""

from __future__ import annotations

import pytest
import torch

import qtool_kernels.reference as ref
from conftest import tiny_llama
from quantize.linear import QuantLinear
from quantize.methods.gptq import gptq_quantize
from quantize.primitives import binary_scale, pack_int, quantize_weight, unpack_int
from quantize.scheme import QuantArgs, SchemeError, preset


@pytest.mark.parametrize("k", [1, 31, 32, 33, 96, 100])
def test_pack_unpack_round_trip(k):
    g = torch.Generator().manual_seed(k)
    codes = (torch.randint(0, 2, (5, k), generator=g) * 2 - 1).to(torch.int8)
    packed = pack_int(codes, 1)
    assert packed.shape == (5, -(-k // 32)) and packed.dtype == torch.int32
    assert torch.equal(unpack_int(packed, 1, k), codes)
    assert torch.equal(ref.unpack_weight(packed, 1, k), codes)


def test_bit_layout():
    """Bit j of a word is code j: set for +1, clear for -1 (bit 31 is the sign bit of the int32)."""
    codes = -torch.ones(1, 32, dtype=torch.int8)
    codes[0, 0] = codes[0, 5] = codes[0, 31] = 1
    assert pack_int(codes, 1).item() == (1 | 1 << 5 | 1 << 31) - (1 << 32)


def test_rtn_is_sign_times_mean_abs():
    w = torch.tensor([[0.5, -1.5, 0.0, 2.0, -0.25]])
    qt = quantize_weight(w, QuantArgs(num_bits=1, group_size=3))
    assert torch.equal(qt.values, torch.tensor([[1, -1, 1, 1, -1]], dtype=torch.int8))  # sign(0) = +1
    torch.testing.assert_close(qt.scale, torch.tensor([[2.0 / 3, 1.125]]))  # the short last group: 2 values


def test_mean_abs_is_the_l2_optimal_scale():
    torch.manual_seed(0)
    w = torch.randn(4, 64)
    args = QuantArgs(num_bits=1, strategy="channel")
    best = binary_scale(w, args)
    err = lambda s: ((torch.sign(w) * s - w) ** 2).sum()  # noqa: E731
    assert err(best) < err(best * 1.05) and err(best) < err(best * 0.95)


def test_binary_takes_no_zero_point():
    with pytest.raises(SchemeError, match="no zero point"):
        QuantArgs(num_bits=1, symmetric=False)


def test_quant_linear_w1a16_matches_dequantized_matmul():
    torch.manual_seed(0)
    w, x = torch.randn(24, 80), torch.randn(2, 3, 80)
    scheme = preset("w1a16")
    qt = quantize_weight(w, scheme.weights)
    layer = QuantLinear.from_qtensor(qt, scheme)
    assert layer.weight_packed.shape == (24, 3)
    torch.testing.assert_close(layer(x), x @ qt.dequantize().T)


@pytest.mark.parametrize("name", ["w1a16", "w1a1"])
def test_binary_layout_refused_inside_a_graph_capture(monkeypatch, name):
    """A 1-bit layer's kernel layout is made on its first CUDA call; met first inside a CUDA graph capture it
    refuses (the packing would be recorded, not run), and made eagerly it is what a capture then reads."""
    from qtool_kernels import build
    from quantize.linear import _prepare_binary

    scheme = preset(name)
    layer = QuantLinear.from_qtensor(quantize_weight(torch.randn(32, 256), scheme.weights), scheme)
    monkeypatch.setattr(build, "capturing", lambda: True)
    with pytest.raises(RuntimeError, match=r"QuantLinear\(256 -> 32\).*eager forward"):
        _prepare_binary(layer)
    monkeypatch.setattr(build, "capturing", lambda: False)
    packed = _prepare_binary(layer)
    monkeypatch.setattr(build, "capturing", lambda: True)
    assert packed is not None and torch.equal(_prepare_binary(layer).scale, packed.scale)


def test_w1a1_binarizes_activations_per_token():
    torch.manual_seed(0)
    w, x = torch.randn(16, 64), torch.randn(5, 64)
    scheme = preset("w1a1")
    qt = quantize_weight(w, scheme.weights)
    layer = QuantLinear.from_qtensor(qt, scheme)
    xb = torch.where(x >= 0, 1.0, -1.0) * x.abs().mean(-1, keepdim=True)
    torch.testing.assert_close(layer(x), xb @ qt.dequantize().T)
    # XNOR-popcount form of the same product, per channel: K - 2 * popcount(x_bits xor w_bits)
    xbits, wbits = x >= 0, w >= 0
    dots = 64 - 2 * (xbits[:, None, :] ^ wbits[None, :, :]).sum(-1)
    torch.testing.assert_close(layer(x), dots * x.abs().mean(-1, keepdim=True) * qt.scale.T)


def test_w1a1_op_opcheck():
    torch.manual_seed(0)
    qt = quantize_weight(torch.randn(8, 40), QuantArgs(num_bits=1, strategy="channel"))
    torch.library.opcheck(torch.ops.qtool.binary_linear,
                          (torch.randn(3, 40), pack_int(qt.values, 1), qt.scale, None, -1, 40))


def test_gptq_w1_beats_rtn_on_its_objective():
    torch.manual_seed(0)
    x = torch.randn(512, 64) @ torch.randn(64, 64) * 0.3  # correlated inputs, where error feedback helps
    w = torch.randn(32, 64)
    args = QuantArgs(num_bits=1, group_size=32)
    h = 2 * x.T @ x / x.shape[0]
    gptq = gptq_quantize(w, h, args, act_order=False).qtensor
    rtn = quantize_weight(w, args)
    assert set(gptq.values.unique().tolist()) == {-1, 1}
    out_err = lambda q: ((x @ (q.dequantize() - w).T) ** 2).mean()  # noqa: E731
    assert out_err(gptq) < 0.9 * out_err(rtn)


def test_quantize_model_w1a16_rtn_and_gptq(calib_ids):
    import quantize

    for method in ("rtn", "gptq"):
        model = tiny_llama()
        recipe = quantize.Recipe.single(preset("w1a16").with_weights(group_size=32), method)
        quantize.quantize_model(model, recipe, calibration=calib_ids, progress=False)
        layer = model.model.layers[0].mlp.down_proj
        assert isinstance(layer, QuantLinear) and layer.scheme.weights.num_bits == 1
        assert torch.isfinite(model(calib_ids[0]).logits).all()


def test_awq_refuses_1_bit(calib_ids):
    import quantize

    recipe = quantize.Recipe.single(preset("w1a16").with_weights(group_size=32), "awq")
    with pytest.raises(SchemeError, match="awq does not take 1-bit"):
        quantize.quantize_model(tiny_llama(), recipe, calibration=calib_ids, progress=False)
