"""W8A16 through two int8 planes of the activations (kernels/split_mm.py): the planes' reconstruction bound, the
layer against float64 on the CPU reference, and on a GPU act_quant "int8x2" bit for bit against the reference and
the route in a QuantLinear.

Bounds: a plane pair reconstructs each element within 0.51 of the low plane's scale (s / 510, plus float32's
rounding of the residual, at most 2^-24 of the element: ~0.2% of that bound); the layer's output is within 1e-2
relative (Frobenius) of float64, its bf16 output rounding being ~4e-3, as the other W8A16 tests bound it.
"""

from __future__ import annotations

import pytest
import torch

from conftest import poison_cache, rel_err
from qtool_kernels import reference, weight_only
from qtool_kernels.split_mm import split_linear

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _activations(m: int, k: int, device: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows of very different ranges, an outlier of 300 in row 0 (the code range's end), an all-zero row."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, device=device, generator=g) * torch.rand(m, 1, device=device, generator=g) * 8
    x[0, k // 2] = 300.0
    if m > 2:
        x[1] = 0
    return x.to(dtype)


@pytest.mark.parametrize("k", [576, 4096])
def test_planes_reconstruct_within_the_low_scale(k):
    x = _activations(37, k, "cpu", torch.bfloat16, seed=k)
    codes, scale = reference.split_activation(x)
    m = x.shape[0]
    assert codes.shape == (2 * m, k) and scale.shape == (2 * m, 1) and codes.dtype == torch.int8
    rebuilt = codes[:m].double() * scale[:m].double() + codes[m:].double() * scale[m:].double()
    err = (rebuilt - x.double()).abs()
    assert bool((err <= 0.51 * scale[m:].double()).all()), (err / scale[m:].double()).max()
    assert bool((rebuilt[1] == 0).all())  # an all-zero row: scale 1, codes 0
    # ~2^-16 of each row's max|x|, where one int8 plane alone (W8A8) is off by up to 2^-8
    assert (err.amax(1) / x.double().abs().amax(1).clamp_min(1e-30)).max() < 2e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_linear_matches_float64_on_cpu(dtype):
    g = torch.Generator().manual_seed(3)
    n, k = 96, 576
    rows = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(1, n, generator=g) * 0.01 + 0.001
    bias = torch.randn(n, generator=g)
    x = _activations(19, k, "cpu", dtype, seed=5)
    assert split_linear(x, rows, scale, bias) is None  # nothing measured on the CPU: the caller's other routes
    y = split_linear(x, rows, scale, bias, measured=False)
    ref = x.double() @ (rows.double() * scale.double().reshape(-1, 1)).T + bias.double()
    assert y.dtype == dtype and y.shape == (19, n)
    assert rel_err(y, ref) < 1e-2
    # as close as the dense product in the activation dtype, and far closer than W8A8's one int8 plane
    dense = torch.nn.functional.linear(x.float(), (rows.float() * scale.reshape(-1, 1))).double() + bias.double()
    assert rel_err(y, ref) < 2 * rel_err(dense.to(dtype), ref) + 1e-4


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m, k", [(1, 4096), (5, 576), (300, 1000), (33, 4104), (64, 14336), (2, 28672)])
def test_act_quant_int8x2_matches_reference_bit_for_bit(kernels, dtype, m, k):
    x = _activations(m, k, "cuda", dtype, seed=m * k)
    poison_cache()
    q, s = kernels.act_quant(x, "int8x2", 0, None)
    rq, rs = reference.split_activation(x)
    assert q.shape == (2 * m, k) and s.shape == (2 * m, 1)
    assert torch.equal(s, rs) and torch.equal(q, rq)


@CUDA
@pytest.mark.gpu
def test_act_quant_int8x2_rejects_what_it_cannot_take(kernels):
    x = torch.randn(4, 40000, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="int8x2 is per token and needs k <= 32768"):
        kernels.act_quant(x, "int8x2", 0, None)
    with pytest.raises(RuntimeError, match="int8x2 is per token"):
        kernels.act_quant(x[:, :4096], "int8x2", 128, None)
    with pytest.raises(RuntimeError, match="'int8', 'int8x2', 'e4m3' or 'e5m2', got 'int4'"):
        kernels.act_quant(x, "int4", 0, None)


@CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_route_in_quantlinear_matches_float64(kernels, monkeypatch, dtype):
    """A row-major 8-bit layer with the split route forced over every batch past the GEMV: its output against float64
    and against the same layer's other routes."""
    from conftest import random_qtensor
    from quantize.linear import QuantLinear
    from quantize.scheme import QuantScheme

    for k, n in ((4096, 1536), (576, 4224)):
        qt, args, dense = random_qtensor(8, -1, True, False, k, n, seed=k)
        layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=torch.randn(n, device="cuda"))
        for m in (17, 64, 200):
            x = _activations(m, k, "cuda", dtype, seed=m)
            ref = x.double() @ dense.T + layer.bias.double()
            monkeypatch.setattr(weight_only, "SPLIT", (1, 8192, 1 << 40))
            monkeypatch.setattr(weight_only, "SPLIT_MEASURED", False)
            poison_cache()
            y = layer(x)
            assert rel_err(y, ref) < 1e-2, (k, n, m)
            monkeypatch.setattr(weight_only, "SPLIT", (0, 0, 0))
            assert rel_err(y, layer(x)) < 1e-2, (k, n, m)
