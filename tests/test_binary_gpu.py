"""The 1-bit CUDA kernels (W1A16 GEMV, W1A1 binarize + b1 GEMM) against float64 references on fresh random
inputs; outputs land in memory poisoned with NaN first. W1A1's integer dot products must be exact."""

from __future__ import annotations

import pytest
import torch

from conftest import poison_cache, rel_err
from qtool_kernels import binary, reference
from quantize.linear import QuantLinear
from quantize.primitives import QTensor, pack_int
from quantize.scheme import QuantArgs, QuantScheme, Strategy

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.bfloat16, torch.float16]
GROUPS = [32, 64, 128, 256, 512, -1]
SHAPES = [(576, 200), (4096, 1536), (1000, 72)]  # (K, N): ragged K, N not a multiple of the tiles


def make(n, k, group_size, seed=0, unit_scale=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    codes = (torch.randint(0, 2, (n, k), generator=g, device="cuda") * 2 - 1).to(torch.int8)
    groups = 1 if group_size <= 0 else -(-k // group_size)
    scale = torch.ones(n, groups, device="cuda") if unit_scale else torch.rand(n, groups, generator=g, device="cuda") + 0.5
    dense = codes.double() * reference.expand_groups(scale.double(), group_size, k)
    return codes, pack_int(codes, 1), scale, dense


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("group_size", GROUPS)
def test_w1_gemv_matches_float64(kernels, group_size, k, n, dtype):
    _, qweight, scale, dense = make(n, k, group_size)
    w = binary.pack_gemv(qweight, scale, group_size, k)
    bias = torch.randn(n, device="cuda")
    for m in range(1, 9):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        poison_cache()
        out = binary.binary_gemv_linear(x, w, bias, kernels)
        assert out.shape == (m, n) and out.dtype == dtype
        assert rel_err(out, x.double() @ dense.T + bias.double()) < 1e-2, f"m={m}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_w1_gemv_both_activation_paths(kernels, dtype):
    """x is staged in shared memory while two blocks still fit an SM (csrc/w1_gemv_plan.h: m <= 2 at K = 14336,
    g64, on the H200), else read from global memory: both against the layout's own reference."""
    _, qweight, scale, _ = make(64, 14336, 64, seed=3)
    w = binary.pack_gemv(qweight, scale, 64, 14336)
    for m in (1, 3, 4, 8):
        x = torch.randn(m, w.k_padded, device="cuda", dtype=dtype)
        poison_cache()
        out = kernels.w1_gemv(x, w.qweight, w.scale, None, w.group_size, 64)
        assert rel_err(out, binary.gemv_reference(x, w, None).double()) < 1e-2, f"m={m}"


@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("k,n", SHAPES + [(8192, 512)])
def test_w1a1_integer_dot_is_exact(kernels, group_size, k, n):
    """|x| = 1 and unit weight scales make every scale 1, so a float32 output is the +-1 dot product itself."""
    codes, qweight, scale, _ = make(n, k, group_size, seed=4, unit_scale=True)
    w = binary.pack_gemm(qweight, scale, group_size, k)
    for m in (1, 7, 129, 1000):
        x = torch.where(torch.rand(m, k, device="cuda") < 0.5, -1.0, 1.0).to(torch.bfloat16)
        x[0, :3] = 0.0  # sign(0) = +1, and mean|x| < 1 in that row: compared through the scale
        poison_cache()
        out = binary.binary_gemm_linear(x, w, None, kernels, torch.float32)
        # float64 holds these integer sums exactly (|dot| <= K < 2^53); CUDA has no int64 matmul
        signs = torch.where(x >= 0, 1.0, -1.0).double()
        dots = signs @ codes.double().T
        xs = x.float().abs().mean(1, keepdim=True)
        assert torch.equal(out[1:], dots[1:].float()), f"m={m}"
        torch.testing.assert_close(out[:1], dots[:1].float() * xs[:1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", SHAPES)
@pytest.mark.parametrize("group_size", GROUPS)
def test_w1a1_matches_float64(kernels, group_size, k, n, dtype):
    _, qweight, scale, dense = make(n, k, group_size, seed=5)
    w = binary.pack_gemm(qweight, scale, group_size, k)
    bias = torch.randn(n, device="cuda")
    for m in (1, 3, 8, 200, 1000):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        poison_cache()
        out = binary.binary_gemm_linear(x, w, bias, kernels)
        xd = x.double()
        ref = (torch.where(xd >= 0, 1.0, -1.0) * xd.abs().mean(1, keepdim=True)) @ dense.T + bias.double()
        assert out.dtype == dtype and rel_err(out, ref) < 1e-2, f"m={m}"


@pytest.mark.parametrize("act", [None, "binary"])
@pytest.mark.parametrize("group_size", [64, -1])
def test_quantlinear_takes_the_1bit_kernels(kernels, act, group_size):
    codes, _, scale, dense = make(200, 576, group_size, seed=6)
    strategy = Strategy.GROUP if group_size > 0 else Strategy.CHANNEL
    args = QuantArgs(num_bits=1, strategy=strategy, group_size=group_size if group_size > 0 else None)
    acts = None if act is None else QuantArgs(num_bits=1, strategy=Strategy.TOKEN, dynamic=True)
    scheme = QuantScheme(weights=args, input_activations=acts)
    layer = QuantLinear.from_qtensor(QTensor(codes, scale, None, args), scheme)
    # W1A16 takes the GEMV up to 8 tokens per call, 32 in all (2 x 4, 2 x 7 -> two calls, 2 x 16 -> four)
    for m in (1, 5, 300) if act else (1, 4, 7, 16):
        x = torch.randn(2, m, 576, device="cuda", dtype=torch.bfloat16)
        out = layer(x)
        assert layer.cuda_w1_bits is not None, "the layer did not take the kernel path"
        xd = x.double()
        if act:
            xd = torch.where(xd >= 0, 1.0, -1.0) * xd.abs().mean(-1, keepdim=True)
        assert out.shape == (2, m, 200) and rel_err(out, xd @ dense.T) < 1e-2
