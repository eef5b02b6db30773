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
from quantize.linear import QuantLinear
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
    attn = fused.model.layers[0].self_attn
    qkv = next(m for m in attn.modules() if isinstance(m, QuantLinear) and m.out_features > attn.q_proj.out_features)
    assert mlp.gate_up_proj.planes_fuse and mlp.down_proj.planes_fuse and qkv.planes_fuse  # inputs: norms, product
    assert not model.model.layers[0].mlp.down_proj.planes_fuse  # unfused layers keep the default
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


@pytest.mark.parametrize("scheme", ["w8a8-int8", "fp8", "w4a16"])
def test_forward_gated_is_silu_mul_of_the_layer(scheme):
    """QuantLinear.forward_gated (the [gate; up] layer with SiLU-and-multiply): on the CPU exactly silu_mul of the
    layer's output (the W8A8 op computes the same float32 product); with x needing a gradient it runs the two apart,
    so the gradient reaches x; the W8A8 op itself refuses a backward with swiglu=1."""
    from quantize.linear import QuantLinear
    from quantize.primitives import quantize_weight

    s = preset(scheme)
    g = torch.Generator().manual_seed(1)
    layer = QuantLinear.from_qtensor(quantize_weight(torch.randn(2 * 48, 128, generator=g), s.weights), s,
                                     bias=torch.randn(2 * 48, generator=g))
    x = torch.randn(3, 5, 128, generator=g)
    out = layer.forward_gated(x)
    assert out.shape == (3, 5, 48)
    torch.testing.assert_close(out, silu_mul(layer(x)), rtol=0, atol=0)
    xg = x.clone().requires_grad_(True)
    layer.forward_gated(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    if s.input_activations is not None:
        args = (xg.reshape(-1, 128), layer.weight, layer.weight_scale, layer.bias, None,
                "int8" if scheme == "w8a8-int8" else "e4m3", 0, 0, 0, 0, None, 1)
        with pytest.raises(NotImplementedError, match="swiglu"):
            torch.ops.qtool.w8a8_linear(*args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("inner,k", [(1000, 1040), (7168, 4096), (24, 64)])
def test_w8_gemv_swiglu_epilogue(kernels, dtype, fmt, m, inner, k, monkeypatch):
    """w8_gemv's gated epilogue (weight = [gate; up], y = silu(gate) * up) against the float64 product of the
    dequantized weight, bias included, at row counts that do and do not fill the 16-row stripes; and a W8A8
    QuantLinear's forward_gated (which takes it at <= 8 tokens) against its layer + silu_mul."""
    from quantize.linear import QuantLinear
    from quantize.primitives import quantize_weight

    g = torch.Generator(device="cuda").manual_seed(m + inner + k)
    n = 2 * inner
    if fmt == "int8":
        w = torch.randint(-128, 128, (n, k), device="cuda", generator=g, dtype=torch.int8)
    else:
        w = (torch.randn(n, k, device="cuda", generator=g) * 40).to(
            torch.float8_e4m3fn if fmt == "e4m3" else torch.float8_e5m2)
    scale = torch.rand(n, device="cuda", generator=g) / 200 + 1e-3
    bias = torch.randn(n, device="cuda", generator=g)
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    y = kernels.w8_gemv(x, w, scale, bias, 0, 0, 0, None, 1)
    full = x.double() @ (w.double() * scale.double()[:, None]).T + bias.double()
    want = torch.nn.functional.silu(full[:, :inner]) * full[:, inner:]
    assert y.shape == (m, inner) and y.dtype == dtype
    assert ((y.double() - want).norm() / want.norm()).item() < 1e-2
    s = preset("w8a8-int8" if fmt == "int8" else "fp8")
    if fmt == "e5m2":
        return
    from qtool_kernels import scaled_mm

    monkeypatch.setattr(scaled_mm, "SWIGLU_GEMV_MAX_M", 8)  # the epilogue on, whatever the shipped default
    monkeypatch.setattr(scaled_mm, "SWIGLU_CODES", {torch.int8, torch.float8_e4m3fn})
    layer = QuantLinear.from_qtensor(quantize_weight(torch.randn(n, k), s.weights), s,
                                     bias=torch.randn(n)).cuda()
    xl = torch.randn(m, k, device="cuda", dtype=dtype)
    with torch.no_grad():
        got, ref = layer.forward_gated(xl), silu_mul(layer(xl))
    assert ((got.double() - ref.double()).norm() / ref.double().norm()).item() < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("inner,k", [(1024, 1040), (7168, 4096), (48, 64)])
def test_w8_gemv_swiglu_epilogue_block_scales(kernels, fmt, m, inner, k, monkeypatch):
    """The gated epilogue with 128 x 128 block scales (fp8-block's gate/up layer, bf16): the up stripe's scales come
    from its own row block (a gate row r and its up row inner + r lie in different blocks), against float64; one
    block's scale past the fold limit takes the 2^-64 detour; and the W8A8 QuantLinear's forward_gated with it on."""
    from quantize.linear import QuantLinear
    from quantize.primitives import quantize_weight

    g = torch.Generator(device="cuda").manual_seed(m + inner + k)
    n = 2 * inner
    w = (torch.randn(n, k, device="cuda", generator=g) * 40).to(
        torch.float8_e4m3fn if fmt == "e4m3" else torch.float8_e5m2)
    scale = torch.rand(-(-n // 128), -(-k // 128), device="cuda", generator=g) / 200 + 1e-3
    x = torch.randn(m, k, device="cuda", generator=g)
    if k >= 256:  # a scale past the limit, its k block's activations made as small (its share like the others')
        e = 9 if fmt == "e4m3" else 17
        scale[-1, 1] = 2.0 ** e
        x[:, 128:256] *= 2.0 ** -e / 200
    x = x.bfloat16()
    bias = torch.randn(n, device="cuda", generator=g)
    y = kernels.w8_gemv(x, w, scale, bias, 128, 128, 0, None, 1)
    dense = w.double() * scale.double().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    full = x.double() @ dense.T + bias.double()
    want = torch.nn.functional.silu(full[:, :inner]) * full[:, inner:]
    assert y.shape == (m, inner) and y.dtype == torch.bfloat16
    assert ((y.double() - want).norm() / want.norm()).item() < 1e-2
    if fmt == "e5m2" or inner % 16:
        return
    from qtool_kernels import scaled_mm

    monkeypatch.setattr(scaled_mm, "SWIGLU_GEMV_MAX_M", 8)
    monkeypatch.setattr(scaled_mm, "SWIGLU_BLOCKS", True)
    s = preset("fp8-block")
    layer = QuantLinear.from_qtensor(quantize_weight(torch.randn(n, k), s.weights), s,
                                     bias=torch.randn(n)).cuda()
    xl = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        got, ref = layer.forward_gated(xl), silu_mul(layer(xl))
    assert ((got.double() - ref.double()).norm() / ref.double().norm()).item() < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_silu_mul_pdl_twin_and_compiled_kernel(kernels, monkeypatch):
    """The PDL twin of the kernel gives the plain kernel's bits, right after the kernel that writes its input; with
    COMPILED_KERNEL (and PDL) torch.compile runs the kernel instead of Inductor's, with the same result."""
    from qtool_kernels import mlp

    x = 4 * torch.randn(4, 2 * 4096, device="cuda", generator=torch.Generator(device="cuda").manual_seed(5))
    x = x.bfloat16()
    plain = kernels.silu_mul(x * 2)
    assert torch.equal(kernels.silu_mul(x * 2, 1), plain)
    monkeypatch.setattr(mlp, "COMPILED_KERNEL", True)
    monkeypatch.setattr(mlp, "PDL", True)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: mlp.silu_mul(t * 2))
    assert torch.equal(compiled(x), plain)
    torch._dynamo.reset()
