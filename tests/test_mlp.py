"""quantize/mlp.py and qtool_kernels/mlp.py: gated MLPs as one gate/up layer and one SiLU-and-multiply.

Bounds: the reference computes in float32 and rounds once, so against float64 it is within one rounding of the
output dtype; a quantized tiny Llama with its MLPs replaced gives the unreplaced model's logits to float32
rounding (the stacked layer's rows are the members' rows, and silu * u is the same float32 arithmetic); the
CUDA kernel (GPU test) equals the reference up to expf's last bit, i.e. to one unit of the output dtype."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from qtool_kernels.mlp import reference_silu_mul, silu_mul
from quantize.fusion import FusedModelError, fuse_projections
from quantize.mlp import GatedMLP, fuse_mlps
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import preset
from quantize.shapes import random_model


def test_reference_matches_float64():
    g = torch.Generator().manual_seed(0)
    x = 4 * torch.randn(7, 2 * 96, generator=g)
    gate, up = x.double().chunk(2, -1)
    exact = gate * torch.sigmoid(gate) * up
    torch.testing.assert_close(reference_silu_mul(x).double(), exact, rtol=1e-6, atol=1e-6)
    xb = x.bfloat16()
    gb, ub = xb.double().chunk(2, -1)
    out = reference_silu_mul(xb)
    assert out.dtype == torch.bfloat16 and out.shape == (7, 96)
    assert ((out.double() - gb * torch.sigmoid(gb) * ub).abs() <= (gb * torch.sigmoid(gb) * ub).abs() * 2**-8 + 1e-30).all()
    assert torch.equal(silu_mul(xb.view(7, 1, 192)).view(7, 96), out)  # CPU: the reference, any leading shape
    with pytest.raises(ValueError, match="must be even"):
        silu_mul(torch.zeros(2, 5))


@pytest.mark.parametrize("scheme", ["w8a16", "w8a8-int8", "fp8"])  # tiny's 64 inputs: no 128-groups
def test_gated_mlps_keep_logits(scheme):
    torch.manual_seed(0)
    model = random_model("tiny", dtype=torch.float32)
    quantize_model(model, Recipe.single(preset(scheme), "rtn"), device="cpu", progress=False)
    fused = copy.deepcopy(model)
    assert fuse_mlps(fused) == 2
    mlp = fused.model.layers[0].mlp
    assert isinstance(mlp, GatedMLP) and mlp.gate_up_proj.out_features == 2 * 128
    assert fuse_projections(fused) == 2  # q/k/v only: gate and up are gone
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(FusedModelError):
        fused.state_dict()


def test_non_silu_and_mixed_mlps_are_left_alone():
    model = random_model("tiny", dtype=torch.float32)
    model.model.layers[0].mlp.gate_proj = nn.Linear(64, 128, bias=True)  # a bias the up projection lacks
    assert fuse_mlps(model) == 1  # the float MLP of block 1 (qtool bench --fuse-baseline); not block 0's
    model = random_model("tiny", dtype=torch.float32)
    quantize_model(model, Recipe.single(preset("w8a16"), "rtn"), device="cpu", progress=False)
    model.model.layers[0].mlp.act_fn = nn.GELU()
    assert fuse_mlps(model) == 1 and not isinstance(model.model.layers[0].mlp, GatedMLP)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m,inner,offset", [(1, 14336, 0), (300, 4096, 0), (5, 1000, 0), (3, 64, 8), (2, 7, 0)])
def test_silu_mul_kernel_matches_reference(kernels, dtype, m, inner, offset):
    """The CUDA kernel, vectorized (inner % 8 == 0, aligned) and not (odd widths, a column offset), against the
    reference on fresh inputs: equal to one unit in the last place (expf's rounding)."""
    g = torch.Generator(device="cuda").manual_seed(m + inner)
    base = 4 * torch.randn(m, 2 * inner + offset, device="cuda", generator=g)
    x = base[:, offset:].to(dtype)  # rows keep their stride: a column offset breaks 16-byte alignment
    out, ref = silu_mul(x), reference_silu_mul(x)
    assert out.shape == (m, inner) and out.dtype == dtype
    ulp = ref.double().abs() * (2**-7 if dtype == torch.bfloat16 else 2**-10) + 1e-30
    assert ((out.double() - ref.double()).abs() <= ulp).all()
    assert (out == ref).float().mean() > 0.99
