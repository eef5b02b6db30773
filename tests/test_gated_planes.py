"""The gated MLP's down projection on the planes of silu(gate) * up (qtool_kernels/gated_planes.py,
QTOOL_GATED_PLANES): its route by bits, tokens and layout, and its arithmetic through the reference ops (the CPU path
and the oracle of csrc/wo_planes.cu's gated x_planes) against float64."""

from __future__ import annotations

import torch

from qtool_kernels import gated_planes, layout, reference
from qtool_kernels.layout import PackedWeight, pack_weight


def fake(bits: int, k: int, n: int, group: int = 128, perm: bool = False) -> PackedWeight:
    """A packed weight of shape [n, k] whose tensors only have the right shapes (routes read shapes alone)."""
    codes = torch.zeros(16, 256, dtype=torch.int8)
    w = pack_weight(codes, torch.ones(16, 256 // group), None, None, bits, group)
    qweight = w.qweight.new_zeros(n // 16, k // layout.chunk_k(bits), *w.qweight.shape[2:])
    return PackedWeight(qweight, w.scale, None, torch.arange(k) if perm else None, bits, group, k, n)


def test_route_by_bits_tokens_and_layout(monkeypatch):
    """4-bit down weights take the planes at 1-4 tokens on every shape (the planes cost no kernel of their own);
    2-/3-bit ones the producer-paid rule; act-order, K past 32768, more than 4 tokens and the switch off: none."""
    monkeypatch.setattr(gated_planes, "GATED_PLANES", True)
    down = fake(4, 14336, 4096)
    assert [gated_planes.route(down, m) for m in range(6)] == [None, 0, 0, 0, 0, None]
    assert gated_planes.route(fake(4, 1536, 512), 1) == 0
    low = fake(3, 14336, 4096)
    assert [gated_planes.route(low, m) for m in range(6)] == [None, None, None, 0, 0, None]
    assert gated_planes.route(fake(4, 14336, 4096, perm=True), 1) is None
    assert gated_planes.route(fake(4, 32832, 4096, group=64), 1) is None
    monkeypatch.setattr(gated_planes, "GATED_PLANES", False)
    assert gated_planes.route(down, 1) is None


def test_down_linear_matches_float64(monkeypatch):
    """down(silu(gate) * up) through the reference ops (x_planes' gated form, wo_planes_gemv) for 1-4 tokens of
    random gate/up outputs and a random W4 g128 weight with bias, within 1e-2 of float64 (the planes hold the product
    to ~2^-16 of its range; the rest is bf16 rounding); None where I is not K_pad or past 4 tokens."""
    monkeypatch.setattr(gated_planes, "GATED_PLANES", True)
    g = torch.Generator().manual_seed(38)
    inner, n = 256, 96
    codes = torch.randint(-8, 8, (n, inner), generator=g, dtype=torch.int8)
    scale = torch.rand(n, inner // 128, generator=g) * 0.02 + 0.01
    w = pack_weight(codes, scale, None, None, 4, 128)
    dense = codes.double() * scale.double().repeat_interleave(128, dim=1)
    bias = torch.randn(n, generator=g)
    for m in range(1, 5):
        gate_up = (torch.randn(m, 2 * inner, generator=g) * 2).to(torch.bfloat16)
        y = gated_planes.down_linear(gate_up, w, bias, layout.ReferenceOps)
        ref = reference.silu_mul(gate_up).double() @ dense.T + bias.double()
        assert y is not None and y.shape == (m, n) and y.dtype == torch.bfloat16
        assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2, m
    assert gated_planes.down_linear(torch.zeros(5, 2 * inner, dtype=torch.bfloat16), w, None, layout.ReferenceOps) is None
    assert gated_planes.down_linear(torch.zeros(1, 2 * inner - 64, dtype=torch.bfloat16), w, None,
                                    layout.ReferenceOps) is None
