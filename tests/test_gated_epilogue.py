"""GATED_EPILOGUE on the CPU (qtool_kernels/mlp.py, quantize/mlp.py): a weight-only gate/up layer's rows interleaved
by 8 give the same MLP as [gate; up] halves (the reference path end to end, and the interleaved SiLU-and-multiply
against the halves one), what cannot be interleaved is refused, and the route: the planes GEMV writes the product
from its epilogue (no silu_mul) where the planes run, other kernels run silu_mul on the interleaved output. The
kernels themselves: tests/test_norm_planes_gpu.py."""

from __future__ import annotations

import copy

import pytest
import torch
from test_routes import Recorder

from qtool_kernels import int8_planes, layout, mlp, reference, weight_only
from qtool_kernels.layout import pack_weight
from quantize import mlp as gated_mlp


def test_interleaved_silu_mul_matches_halves():
    """Columns [g 8 | u 8] per 16 give the halves' product exactly; a width not a multiple of 16 is refused by name."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 2 * 64, generator=g).to(torch.bfloat16)
    order = torch.arange(128).view(2, 8, 8).transpose(0, 1).reshape(-1)
    want = reference.silu_mul(y)
    assert torch.equal(reference.silu_mul(y[:, order], interleaved=True), want)
    assert torch.equal(mlp.silu_mul(y[:, order], interleaved=True), want)
    with pytest.raises(ValueError, match=r"multiple of 16 \(gate and up by 8 columns\); got 24"):
        mlp.silu_mul(y[:, :24], interleaved=True)


def _tiny_mlp(scheme: str):
    """The tiny Llama at hidden 256 (groups of 128 fit), quantized with `scheme` on the CPU."""
    from quantize.cli_tools import bench_plan
    from quantize.quantizer import quantize_model
    from quantize.shapes import TINY, random_model

    model = random_model({**TINY, "hidden_size": 256, "intermediate_size": 512}, dtype=torch.float32)
    quantize_model(model, bench_plan(scheme, None), device="cpu", progress=False)
    return model


@pytest.mark.parametrize("scheme", ["w8a16", "w4a16", "w4a16-asym"])
def test_interleaved_mlp_matches_halves(scheme, monkeypatch):
    """The tiny Llama fused with and without the switch: every MLP interleaved (codes, scales and zero points
    reordered together), and the same logits (the rows' order changes no dot product)."""
    model = _tiny_mlp(scheme)
    halves, interleaved = model, copy.deepcopy(model)
    monkeypatch.setattr(gated_mlp, "GATED_EPILOGUE", False)
    gated_mlp.fuse_mlps(halves)
    monkeypatch.setattr(gated_mlp, "GATED_EPILOGUE", True)
    assert gated_mlp.fuse_mlps(interleaved) == model.config.num_hidden_layers
    assert all(m.interleaved for m in interleaved.modules() if isinstance(m, gated_mlp.GatedMLP))
    ids = torch.tensor([[1, 5, 9]])
    with torch.no_grad():
        torch.testing.assert_close(interleaved(ids).logits, halves(ids).logits, rtol=1e-5, atol=1e-5)


def test_halves_kept_for_the_knobs_that_read_them(monkeypatch):
    """QTOOL_GATED_PLANES / QTOOL_FUSED_PLANES read [gate | up]: with either set, fuse_mlps keeps the halves."""
    from qtool_kernels import gated_planes, int8_planes

    model = _tiny_mlp("w8a16")
    monkeypatch.setattr(gated_mlp, "GATED_EPILOGUE", True)
    for module, name in ((gated_planes, "GATED_PLANES"), (int8_planes, "FUSED_PLANES")):
        fused = copy.deepcopy(model)
        monkeypatch.setattr(module, name, True)
        gated_mlp.fuse_mlps(fused)
        monkeypatch.setattr(module, name, False)
        assert not any(m.interleaved for m in fused.modules() if isinstance(m, gated_mlp.GatedMLP)), name


def test_interleave_refuses_what_it_cannot_reorder():
    """A W8A8 layer (its own SwiGLU epilogue reads halves) stays as it was."""
    model = _tiny_mlp("w8a8-int8")
    gate_up = gated_mlp.fuse_layers([model.model.layers[0].mlp.gate_proj, model.model.layers[0].mlp.up_proj])
    before = gate_up.weight.clone()
    assert not gated_mlp.interleave_gate_up(gate_up) and torch.equal(gate_up.weight, before)


def test_route_writes_the_product_from_the_planes_epilogue(monkeypatch):
    """One token into an interleaved 4-bit gate/up weight of 4096 x 28672 (the planes route): x_planes and the planes
    GEMV with the gated flag, [1, 14336] out, no silu_mul; 16 tokens (wo_gemm's route): the GEMM, then silu_mul."""
    recorder = Recorder()
    w = pack_weight(torch.zeros(16, 64, dtype=torch.int8), torch.ones(16, 1), None, None, 4, -1)
    w = layout.PackedWeight(w.qweight.new_zeros(28672 // 16, 4096 // 64, 32, 4), w.scale, None, None, 4, -1, 4096,
                            28672)
    calls = []
    monkeypatch.setattr(weight_only, "silu_mul", lambda y, interleaved: calls.append(interleaved) or y[:, ::2])
    y = weight_only.packed_linear(torch.randn(1, 4096, dtype=torch.bfloat16), w, None, recorder, gated=True)
    variant = int8_planes.planes_route(w, 1)
    assert y.shape == (1, 14336) and recorder.calls == [("x_planes",), ("wo_planes_gemv", variant, "gated")]
    assert not calls
    recorder.calls.clear()
    monkeypatch.setattr(weight_only, "route", lambda *args: "wo_gemm")
    y = weight_only.packed_linear(torch.randn(16, 4096, dtype=torch.bfloat16), w, None, recorder, gated=True)
    assert y.shape == (16, 14336) and recorder.calls == [("wo_gemm",)] and calls == [True]
