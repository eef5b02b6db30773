"""The down projection of a gated MLP with the SiLU-and-multiply in the ring GEMV's x staging
(qtool_kernels/mlp.py gated_down_linear, csrc/wo_xstage.cuh; wo_gemv's variant + 32).

Bounds: the staged x is silu(gate) * up in float32 rounded once, silu_mul's own arithmetic, so on the GPU the gated
launch equals the plain launch over silu_mul's output bit for bit (the same kernel code on the same x), and both are
within the ring GEMV's bound of the float64 product (float32 sums of exact bf16 / fp16 products: 1e-2 of
the output's largest magnitude covers the output's own rounding); on the CPU the reference ops compute silu_mul then the layer,
exactly what the caller's fallback computes."""

from __future__ import annotations

import pytest
import torch

from conftest import random_weight
from qtool_kernels import mlp
from qtool_kernels.layout import EPILOGUE, GATED_X_FLAG, ReferenceOps, dequantize_packed, pack_weight
from qtool_kernels.reference import silu_mul
from qtool_kernels.weight_only import packed_linear


def packed(n, k, bits=4, group_size=128, symmetric=True, device="cpu", seed=0):
    codes, scale, zero, _ = random_weight(n, k, bits, group_size, symmetric, seed=seed)
    w = pack_weight(codes, scale, zero, None, bits, group_size)
    if device != "cpu":
        w.qweight, w.scale = w.qweight.to(device), w.scale.to(device)
        w.zero = None if w.zero is None else w.zero.to(device)
    return w


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [64, 128, -1])
def test_cpu_gated_down_is_silu_mul_then_layer(monkeypatch, symmetric, group_size):
    monkeypatch.setattr(mlp, "GATED_X", True)
    w = packed(48, 256, group_size=group_size, symmetric=symmetric)
    g = torch.Generator().manual_seed(3)
    h, bias = torch.randn(1, 1, 512, generator=g).to(torch.bfloat16), torch.randn(48, generator=g)
    y = mlp.gated_down_linear(h, w, bias, ReferenceOps)
    assert y is not None and y.shape == (1, 1, 48) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y, packed_linear(silu_mul(h), w, bias, ReferenceOps), rtol=0, atol=0)


def test_cpu_gated_down_declines_what_the_kernel_does_not_take(monkeypatch):
    """None (the caller runs silu_mul and the layer) where the gated launch does not serve: the switch off, more
    tokens than the ring GEMV takes, 8-bit or 16-k groups, a padded K, a row-major weight, x too large to stage."""
    w = packed(32, 256)
    h = torch.randn(1, 512, dtype=torch.bfloat16)
    assert mlp.gated_down_linear(h, w, None, ReferenceOps) is None  # off by default until measured
    monkeypatch.setattr(mlp, "GATED_X", True)
    assert mlp.gated_down_linear(h, w, None, ReferenceOps) is not None
    assert mlp.gated_down_linear(torch.randn(16, 512, dtype=torch.bfloat16), w, None, ReferenceOps) is None
    assert mlp.gated_down_linear(h, packed(32, 256, bits=8), None, ReferenceOps) is None
    assert mlp.gated_down_linear(h, packed(32, 256, group_size=32), None, ReferenceOps) is None
    assert mlp.gated_down_linear(torch.randn(1, 2 * 200, dtype=torch.bfloat16), packed(32, 200), None,
                                 ReferenceOps) is None  # K padded to 256
    assert mlp.gated_down_linear(torch.randn(1, 500, dtype=torch.bfloat16), w, None, ReferenceOps) is None
    monkeypatch.setattr(mlp, "GATED_STAGE_MAX_BYTES", 256)
    assert mlp.gated_down_linear(h, w, None, ReferenceOps) is None


def test_reference_op_takes_the_gated_flag():
    w = packed(32, 128)
    h = torch.randn(2, 256, dtype=torch.bfloat16)
    args = (w.qweight, w.scale, w.zero, None, 4, 128, 32, EPILOGUE, None)
    torch.testing.assert_close(ReferenceOps.wo_gemv(h, *args, 1 + GATED_X_FLAG),
                               ReferenceOps.wo_gemv(silu_mul(h), *args, 1), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("n,k,group_size", [(4096, 14336, 128), (576, 1536, 64), (1000, 576, -1), (48, 64, 64)])
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("variant", [1, 2, 1 + 16, 2 + 16])
def test_gpu_gated_launch_equals_silu_mul_then_gemv(kernels, dtype, symmetric, n, k, group_size, m, variant):
    if m * (k // 2 + 4) * 4 > mlp.GATED_STAGE_MAX_BYTES:
        pytest.skip("x does not fit the staging")
    w = packed(n, k, group_size=group_size, symmetric=symmetric, device="cuda", seed=m)
    g = torch.Generator(device="cuda").manual_seed(7 * m + n)
    h = torch.randn(m, 2 * k, device="cuda", generator=g).to(dtype) * 2
    bias = torch.randn(n, device="cuda", generator=g)
    args = (w.qweight, w.scale, w.zero, bias, 4, w.group_size, n, EPILOGUE, None)
    fused = kernels.wo_gemv(h, *args, variant + GATED_X_FLAG)
    plain = kernels.wo_gemv(kernels.silu_mul(h, 0), *args, variant)
    assert torch.equal(fused, plain), (fused - plain).abs().max()
    weight = dequantize_packed(w.qweight, w.scale, w.zero, 4, w.group_size, n).double()[:, :k]
    expected = silu_mul(h).double() @ weight.T + bias.double()  # float64 over the staged (rounded) product
    assert (fused.double() - expected).abs().max().item() <= 1e-2 * expected.abs().max().item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_gated_launch_refuses_what_it_does_not_take(kernels):
    h = torch.randn(1, 2 * 256, device="cuda", dtype=torch.bfloat16)
    for bits, group_size, variant in [(8, 128, 1), (4, 32, 1), (4, 128, 0), (4, 128, 3)]:
        w = packed(32, 256, bits=bits, group_size=group_size, device="cuda")
        with pytest.raises(RuntimeError, match="gated x"):
            kernels.wo_gemv(h, w.qweight, w.scale, w.zero, None, bits, group_size, 32, EPILOGUE, None,
                            variant + GATED_X_FLAG)
    w = packed(32, 256, device="cuda")
    with pytest.raises(RuntimeError, match="2 \\* k_padded"):
        kernels.wo_gemv(h[:, :300].contiguous(), w.qweight, w.scale, w.zero, None, 4, 128, 32, EPILOGUE, None,
                        1 + GATED_X_FLAG)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compiled", [False, True])
def test_gpu_gated_mlp_down_projection(kernels, monkeypatch, compiled):
    """A W4A16 down projection's forward_silu_mul: the gated launch at one token, eager and under torch.compile,
    equal to the layer over silu_mul; at 16 tokens (wo_gemm's) the fallback runs, equal too."""
    from quantize.linear import QuantLinear
    from quantize.primitives import quantize_weight
    from quantize.scheme import preset

    monkeypatch.setattr(mlp, "GATED_X", True)
    s = preset("w4a16")
    g = torch.Generator().manual_seed(5)
    layer = QuantLinear.from_qtensor(quantize_weight(torch.randn(512, 1024, generator=g), s.weights), s)
    layer = layer.to("cuda")
    layer(torch.zeros(1, 1024, device="cuda", dtype=torch.bfloat16))  # an eager call prepares the kernels' layout
    run = torch.compile(layer.forward_silu_mul, fullgraph=True) if compiled else layer.forward_silu_mul
    for m in (1, 16):
        h = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
        torch.testing.assert_close(run(h), layer(silu_mul(h)), rtol=0, atol=0)
    import quantize.linear as linear

    calls = []
    original = linear.gated_down_linear
    monkeypatch.setattr(linear, "gated_down_linear", lambda *a, **k: calls.append(1) or original(*a, **k))
    h = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(layer.forward_silu_mul(h), layer(silu_mul(h)), rtol=0, atol=0)
    assert calls, "a one-token call takes the gated launch"
