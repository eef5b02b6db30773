"""GPU tests of the int8-planes routes prepared in sessions 37-38: under torch.compile (kernels/weight_only.py
FUSED_PLANES) the planes as PyTorch ops, which Inductor fuses into the kernel that makes the layer's input, give what
the CUDA producer gives, inside a compiled QuantLinear and a compiled gated MLP, against float64; the GEMV on 2- and
3-bit codes (LOWBIT_PLANES, csrc/wo_planes_low.cu) against float64 and the ring GEMV; the planes of silu(gate) * up
from the gate/up output (gated_planes.py) against silu_mul + x_planes and the gated MLP against float64. And the
planes kernels themselves: wo_gemv's planes variants, wo_planes_gemv on given planes, x_planes at every length,
w8_planes_gemv, against float64."""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import cluster_w4_problems, poison_cache, random_qtensor, rel_err, replayed
from qtool_kernels import int8_planes, reference, weight_only
from qtool_kernels.layout import EPILOGUE, pack_weight
from quantize.linear import QuantLinear, prepare_for_cuda
from quantize.mlp import GatedMLP
from quantize.scheme import QuantScheme

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.bfloat16, torch.float16]
make_weight = functools.lru_cache(maxsize=4)(random_qtensor)  # (bits, group, sym, act_order, k, n, seed)


@pytest.mark.parametrize("symmetric", [True, False])
def test_compiled_planes_match_the_kernel_and_float64(kernels, symmetric, monkeypatch):
    """One token into a 4096 x 4096 W4 g128 layer whose input is an RMSNorm's output, compiled with the switch on:
    the planes from PyTorch ops (the code one apart at most where x / s rounds a half) and the layer's output
    against float64; then a compiled gated MLP, whose product Inductor makes, against the eager one."""
    monkeypatch.setattr(int8_planes, "FUSED_PLANES", True)
    torch._dynamo.reset()
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    x[0, 9] *= 30
    planes, xs = kernels.x_planes(x)
    want, want_s = torch.compile(reference.x_planes)(x)
    torch.testing.assert_close(want_s, xs, rtol=1e-6, atol=0)
    assert (want[::2].int() - planes[::2].int()).abs().max() <= 1 and (want != planes).float().mean() < 0.01
    qt, args, dense = random_qtensor(4, 128, symmetric, False, 4096, 4096, seed=37)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=None)
    layer.planes_fuse = True
    weight = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    layer(x)  # prepares the kernel layout (eager)
    norm_then_layer = torch.compile(lambda h: layer(torch.nn.functional.rms_norm(h, (4096,), weight, 1e-5)))
    h = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    normed = torch.nn.functional.rms_norm(h.double(), (4096,), weight.double(), 1e-5)
    assert rel_err(norm_then_layer(h), normed @ dense.T) < 1e-2
    gate_up = QuantLinear.from_qtensor(random_qtensor(4, 128, symmetric, False, 4096, 2 * 4096, seed=38)[0],
                                       QuantScheme(weights=args), bias=None)
    mlp = GatedMLP(gate_up, layer)
    gate_up.planes_fuse = True
    eager = mlp(x)
    assert rel_err(torch.compile(mlp)(x), eager) < 1e-2
    torch._dynamo.reset()


@pytest.mark.parametrize("bits, group_size", [(2, 64), (3, 128), (2, -1), (3, 64)])
def test_low_bit_planes_gemv_matches_float64(kernels, bits, group_size):
    """wo_planes_gemv on symmetric 2- and 3-bit codes (csrc/wo_planes_low.cu) at 1-4 tokens, one, two and four stripes
    per block, plain and with PDL, with bias, on ragged K (576, padded to 640) and N (200), against float64 and against
    the ring GEMV; zero points are refused by name."""
    for k, n in ((576, 200), (4096, 1536), (14336, 64)):
        qt, _, dense = random_qtensor(bits, group_size, True, False, k, n, seed=k + bits)
        p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, group_size)
        bias = torch.randn(n, device="cuda")
        for m in range(1, 5):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x[0, 5] *= 40
            xp = torch.nn.functional.pad(x, (0, p.k_padded - k))
            planes, xs = kernels.x_planes(xp)
            ref = x.double() @ dense.T + bias.double()
            ring = kernels.wo_gemv(xp, p.qweight, p.scale, None, bias, bits, p.group_size, n, EPILOGUE, None, 1)
            for variant in (0, 1, 2, 16, 17, 18):
                poison_cache()
                out = kernels.wo_planes_gemv(planes, xs, p.qweight, p.scale, None, bias, p.group_size, n,
                                             torch.bfloat16, variant, bits)
                assert rel_err(out, ref) < 1e-2 and rel_err(out, ring) < 5e-3, f"k={k} m={m} variant={variant}"
    planes, xs = kernels.x_planes(torch.randn(5, p.k_padded, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match=f"4 for 2- and 3-bit.* got \\[10, {p.k_padded}\\].* for {bits}-bit"):
        kernels.wo_planes_gemv(planes, xs, p.qweight, p.scale, None, None, p.group_size, n, torch.bfloat16, 0, bits)
    qt, _, _ = random_qtensor(bits, 128, False, False, 576, 200)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, 128)
    planes, xs = kernels.x_planes(torch.randn(1, p.k_padded, device="cuda", dtype=torch.bfloat16))
    with pytest.raises(RuntimeError, match=f"symmetric 2- and 3-bit ones, got {bits}-bit with zero points"):
        kernels.wo_planes_gemv(planes, xs, p.qweight, p.scale, p.zero, None, 128, 200, torch.bfloat16, 0, bits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gated_x_planes_match_silu_mul_then_x_planes(kernels, dtype):
    """x_planes' gated form (QTOOL_GATED_PLANES, qtool_kernels/gated_planes.py) against x_planes of silu_mul's
    output, at the lengths its launch distinguishes and 1-4 tokens: the same scales, high codes within one; the
    refusals name the value."""
    for k in (64, 1536, 14336, 32768):
        for m in (1, 4):
            gate_up = torch.randn(m, 2 * k, device="cuda", dtype=dtype) * 3
            planes, xs = kernels.x_planes(gate_up, 0, 0, 1)
            want, want_s = kernels.x_planes(kernels.silu_mul(gate_up))
            torch.testing.assert_close(xs, want_s, rtol=1e-6, atol=0)
            assert planes.shape == (2 * m, k) and (planes[::2].int() - want[::2].int()).abs().max() <= 1, (k, m)
            assert (planes != want).float().mean() < 0.01, (k, m)
    with pytest.raises(RuntimeError, match="K <= 32768, got natural=0 and K=32832"):
        kernels.x_planes(torch.randn(1, 2 * 32832, device="cuda", dtype=dtype), 0, 0, 1)
    with pytest.raises(RuntimeError, match="got natural=1"):
        kernels.x_planes(torch.randn(1, 128, device="cuda", dtype=dtype), 0, 1, 1)


@pytest.mark.parametrize("bits, group_size", [(4, 128), (4, -1), (3, 128), (2, 64)])
def test_gated_mlp_on_gated_planes_matches_float64(kernels, bits, group_size, monkeypatch):
    """A gated MLP whose W4 / W3 / W2 down layer takes the planes of silu(gate) * up from the gate/up output
    (QTOOL_GATED_PLANES) at 1-4 tokens, eager and with bias, against float64 and against the MLP with the switch off;
    more tokens and ragged I fall back to silu_mul."""
    from qtool_kernels import gated_planes

    taken = []
    down_linear = gated_planes.down_linear
    monkeypatch.setattr(gated_planes, "down_linear", lambda *a: taken.append(y := down_linear(*a)) or y)
    for inner, tokens in ((1536, (1, 2, 3, 4, 6)), (1000, (1,))):
        up_qt, up_args, up_dense = random_qtensor(4, 128, True, False, 512, 2 * inner, seed=inner)
        qt, args, dense = random_qtensor(bits, group_size, True, False, inner, 512, seed=inner + 1)
        gate_up = QuantLinear.from_qtensor(up_qt, QuantScheme(weights=up_args), bias=None)
        bias = torch.randn(512, device="cuda")
        down = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=bias).cuda()
        mlp = GatedMLP(gate_up.cuda(), down)
        for m in tokens:
            x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
            monkeypatch.setattr(gated_planes, "GATED_PLANES", False)
            plain = mlp(x)
            monkeypatch.setattr(gated_planes, "GATED_PLANES", True)
            out = mlp(x)
            gu = (x.double() @ up_dense.T).to(torch.bfloat16)
            ref = reference.silu_mul(gu).double() @ dense.T + bias.double()
            assert rel_err(out, ref) < 1e-2 and rel_err(out, plain) < 1e-2, (inner, m)
    if bits == 4:  # 1536 x 1-4 tokens on the gated planes; 6 tokens and I = 1000 (K_pad 1024) not
        assert sum(y is not None for y in taken) == 4


@pytest.mark.parametrize("symmetric", [True, False])
def test_quant_linear_on_planes_tiles_matches_float64(kernels, symmetric, monkeypatch):
    """QTOOL_PLANES_TILE=16: a symmetric W4 g128 QuantLinear at 5-16 tokens routed to x_planes + wo_planes_gemv with
    two or four n-tiles per A fragment (weight_only.route says "wo_planes"; with zero points it does not), eager and
    replayed in a CUDA graph on new inputs, against float64; a 576-column input (K padded to 640)."""
    monkeypatch.setattr(int8_planes, "PLANES_TILE", 16)
    for k, n in ((4096, 1536), (576, 4096)):
        qt, args, dense = random_qtensor(4, 128, symmetric, False, k, n, seed=k + symmetric)
        layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=None).cuda()
        for m in (5, 8, 11, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            y = layer(x)
            assert (weight_only.route(prepare_for_cuda(layer), m, torch.bfloat16) == "wo_planes") == symmetric, m
            assert rel_err(y, x.double() @ dense.T) < 1e-2, (k, n, m)
        x = torch.randn(12, k, device="cuda", dtype=torch.bfloat16)
        y = replayed(layer, x)
        assert rel_err(y, x.double() @ dense.T) < 1e-2, (k, n, "graph")


needs_clusters = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                                    reason="the tile kernel's split-K runs on thread block clusters (sm_90)")


@needs_clusters
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [64, 128, -1])
def test_tile_planes_gemv_matches_float64(kernels, group_size, symmetric, dtype):
    """wo_planes_gemv variant 3 (csrc/wo_planes_tile.cu: the planes staged per block in shared memory, split-K over a
    cluster of 1-8 blocks) at 1-32 tokens (two, four and eight n-tiles, full and partial; zero points to 16), plain and
    with PDL, with bias, on ragged K and N (576 / 200: one row block, one split; 14336 x 64: eight splits of 28
    chunks; 1024 x 4096: 32 row blocks), an outlier and all-zero tokens, against float64 and against the one-stripe
    launch (<= 16 tokens). 17 tokens with zero points, 3-bit codes and 33 tokens are refused by name."""
    for k, n, p, bias, xp, zeros, ref in cluster_w4_problems(group_size, symmetric, dtype):
        m = xp.shape[0]
        planes, xs = kernels.x_planes(xp)
        stripes = (kernels.wo_planes_gemv(planes, xs, p.qweight, p.scale, p.zero, bias, p.group_size, n, dtype, 0)
                   if m <= 16 else None)
        for variant in (3, 19):
            poison_cache()
            out = kernels.wo_planes_gemv(planes, xs, p.qweight, p.scale, p.zero, bias, p.group_size, n, dtype, variant)
            assert out.shape == (m, n) and out.dtype == dtype and rel_err(out, ref) < 1e-2, (k, n, m, variant)
            if stripes is not None:
                assert rel_err(out, stripes) < 5e-3, (k, n, m, variant)
            for z in zeros:
                torch.testing.assert_close(out[z].float(), bias.to(dtype).float(), rtol=1e-2, atol=1e-2)
    qa, _, _ = random_qtensor(4, 128, False, False, 576, 200)
    pa = pack_weight(qa.values, qa.scale, qa.zero_point, None, 4, 128)
    planes, xs = kernels.x_planes(torch.randn(33, pa.k_padded, device="cuda", dtype=dtype))
    with pytest.raises(RuntimeError, match="variant 3 .* zero points to 16 tokens, got 4-bit with zero points .* 17"):
        kernels.wo_planes_gemv(planes[:34], xs[:17], pa.qweight, pa.scale, pa.zero, None, 128, 200, dtype, 3)
    with pytest.raises(RuntimeError, match=rf"32 for the tile kernel.* got \[66, {pa.k_padded}\]"):
        kernels.wo_planes_gemv(planes, xs, pa.qweight, pa.scale, None, None, 128, 200, dtype, 3)
    q3, _, _ = random_qtensor(3, 128, True, False, 576, 200)
    p3 = pack_weight(q3.values, q3.scale, q3.zero_point, None, 3, 128)
    planes, xs = kernels.x_planes(torch.randn(1, p3.k_padded, device="cuda", dtype=dtype))
    with pytest.raises(RuntimeError, match="variant 3 .* got 3-bit"):
        kernels.wo_planes_gemv(planes, xs, p3.qweight, p3.scale, None, None, 128, 200, dtype, 3, 3)


@needs_clusters
def test_quant_linear_on_the_tile_kernel_matches_float64(kernels, monkeypatch):
    """QTOOL_PLANES_GEMM=32: a symmetric W4 g128 QuantLinear at 9-32 tokens routed to x_planes + the tile kernel
    (variant 3), eager and replayed in a CUDA graph on new inputs, against float64."""
    monkeypatch.setattr(int8_planes, "PLANES_GEMM", 32)
    qt, args, dense = random_qtensor(4, 128, True, False, 4096, 1536, seed=3)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=None).cuda()
    for m in (9, 16, 20, 32):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        assert int8_planes.planes_route(prepare_for_cuda(layer), m) == int8_planes.PLANES_GEMM_VARIANT, m
        assert rel_err(layer(x), x.double() @ dense.T) < 1e-2, m
    x = torch.randn(24, 4096, device="cuda", dtype=torch.bfloat16)
    y = replayed(layer, x)
    assert rel_err(y, x.double() @ dense.T) < 1e-2, "graph"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_size", [64, 128, -1])
def test_planes_gemv_matches_float64(kernels, group_size, dtype):
    """wo_gemv variants 4, 5 and 6 (x as two int8 planes on the int8 tensor cores, symmetric W4, one, two or four
    stripes per block; csrc/wo_planes.cu) at every token count they take, plain and with PDL, with bias, on ragged K (576: a last g128 group of 64) and N (200: inside
    a stripe), a token with an outlier feature and an all-zero token, against float64 from the checkpoint tensors and
    against the ring GEMV (the planes add ~2^-16 of each token's range). Then QuantLinear, whose route at 3-4 tokens
    of this 1536-row weight is x_planes + wo_planes_gemv, eager and in a CUDA graph, and the refusals, which name the
    value."""
    for k, n in ((576, 200), (4096, 1536), (14336, 64)):
        qt, args, dense = make_weight(4, group_size, True, False, k, n, k)
        p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, group_size)
        bias = torch.randn(n, device="cuda")
        for m in range(1, 5):
            if not int8_planes.takes_planes(p, m):
                continue
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            x[0, 7] *= 40  # an outlier: the planes' scale follows each token's max
            if m > 1:
                x[1] = 0  # an all-zero token: the output is the bias
            xp = torch.nn.functional.pad(x, (0, p.k_padded - k))
            ref = x.double() @ dense.T + bias.double()
            ring = kernels.wo_gemv(xp, p.qweight, p.scale, None, bias, 4, p.group_size, n, EPILOGUE, None, 1)
            for variant in (4, 5, 6, 4 + weight_only.PDL_STATIC_WEIGHT, 5 + weight_only.PDL_STATIC_WEIGHT,
                            6 + weight_only.PDL_STATIC_WEIGHT):
                poison_cache()
                out = kernels.wo_gemv(xp, p.qweight, p.scale, None, bias, 4, p.group_size, n, EPILOGUE, None, variant)
                assert out.shape == (m, n) and rel_err(out, ref) < 1e-2, f"k={k} m={m} variant={variant}"
                assert rel_err(out, ring) < 1e-2, f"k={k} m={m} variant={variant}"
                if m > 1:
                    torch.testing.assert_close(out[1].float(), bias.to(dtype).float(), rtol=1e-2, atol=1e-2)
    qt, args, dense = make_weight(4, group_size, True, False, 4096, 1536)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=None)
    for m in (1, 2, 4):
        x = torch.randn(m, 4096, device="cuda", dtype=dtype)
        assert rel_err(layer(x), x.double() @ dense.T) < 1e-2, f"QuantLinear m={m}"
    x = torch.randn(3, 4096, device="cuda", dtype=dtype)
    y = replayed(layer, x)
    assert rel_err(y, x.double() @ dense.T) < 1e-2, "QuantLinear in a CUDA graph"
    qt, _, _ = make_weight(4, 128, False, False, 576, 200)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, 128)
    x = torch.randn(1, p.k_padded, device="cuda", dtype=dtype)
    with pytest.raises(RuntimeError, match=r"variant 4 \(planes\) takes symmetric .* got 4-bit, asymmetric"):
        kernels.wo_gemv(x, p.qweight, p.scale, p.zero, None, 4, 128, 200, EPILOGUE, None, 4)
    with pytest.raises(RuntimeError, match="at most 4 tokens with variant 4"):
        kernels.wo_gemv(x.expand(5, -1).contiguous(), p.qweight, p.scale, None, None, 4, 128, 200, EPILOGUE, None, 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [64, 128, -1])
def test_given_planes_gemv_matches_float64(kernels, group_size, symmetric, dtype):
    """x_planes (one block per token) against its oracle: the same scales, the same codes but where x / s lies
    within a rounding of a half (a high code one apart), x back within s / 508; then wo_planes_gemv on those planes
    (one, two or four stripes per block, plain and with PDL; zero points or none) against float64 and against wo_gemv
    (its staged planes where symmetric, the ring GEMV where not), on ragged K and N, 1-4 tokens (one n-tile of the
    mma) and 5-16 (two or four n-tiles, full and partial), an outlier and all-zero tokens (in the first n-tile and in
    the last). The refusals name the value."""
    for k, n in ((576, 200), (4096, 1536), (14336, 64)):
        qt, _, dense = make_weight(4, group_size, symmetric, False, k, n, k)
        p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, group_size)
        bias = torch.randn(n, device="cuda")
        for m in (1, 2, 3, 4, 5, 6, 8, 9, 13, 16):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            x[0, 7] *= 40
            x[m - 1, 3] *= 60  # an outlier in the last n-tile's token
            zeros = [1, m - 2] if m > 4 else [1] if m > 1 else []
            x[zeros] = 0
            xp = torch.nn.functional.pad(x, (0, p.k_padded - k))
            poison_cache()
            planes, xs = kernels.x_planes(xp)
            want, want_s = reference.x_planes(xp)
            torch.testing.assert_close(xs, want_s, rtol=1e-6, atol=0)
            high = slice(0, None, 2)
            assert (planes[high].int() - want[high].int()).abs().max() <= 1
            assert (planes != want).float().mean() < 0.01, f"k={k} m={m}"
            back = reference.planes_to_x(planes, xs)
            assert ((back - xp.float()).abs() <= xs[:, None] * (1 / 508 + 1e-5)).all(), f"k={k} m={m}"
            ref = x.double() @ dense.T + bias.double()
            staged = None
            if m <= 4 and (int8_planes.takes_planes(p, m) or not symmetric):
                staged = kernels.wo_gemv(xp, p.qweight, p.scale, p.zero, bias, 4, p.group_size, n, EPILOGUE, None,
                                         4 if symmetric else 1)
            for variant in (0, 1, 2, 16, 17, 18):
                poison_cache()
                out = kernels.wo_planes_gemv(planes, xs, p.qweight, p.scale, p.zero, bias, p.group_size, n, dtype,
                                             variant)
                assert out.shape == (m, n) and out.dtype == dtype and rel_err(out, ref) < 1e-2, f"k={k} m={m} {variant}"
                if staged is not None:
                    assert rel_err(out, staged) < 5e-3, f"k={k} m={m} variant={variant}"
                for z in zeros:
                    torch.testing.assert_close(out[z].float(), bias.to(dtype).float(), rtol=1e-2, atol=1e-2)
            hinted = kernels.wo_planes_gemv(planes, xs, p.qweight, p.scale, p.zero, bias, p.group_size, n, dtype, 18,
                                            4, p.qweight)  # a weight to pull into L2 after ours: a hint only
            torch.testing.assert_close(hinted, out, rtol=0, atol=0)
    qt, _, _ = make_weight(4, 32, True, False, 576, 200)
    p32 = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, 32)
    planes, xs = kernels.x_planes(torch.randn(17, p32.k_padded, device="cuda", dtype=dtype))
    with pytest.raises(RuntimeError, match="groups of >= 64 .* got group_size 32"):
        kernels.wo_planes_gemv(planes[:2], xs[:1], p32.qweight, p32.scale, None, None, 32, 200, dtype, 0)
    with pytest.raises(RuntimeError, match=r"m <= 16 .* got \[34, 576\]"):
        kernels.wo_planes_gemv(planes, xs, p.qweight, p.scale, p.zero, None, p.group_size, 64, dtype, 0)
    with pytest.raises(RuntimeError, match=r"variant must be 0, 1 or 2 .* or 3 \(the tile kernel\).* got 4"):
        kernels.wo_planes_gemv(planes[:2], xs[:1], p32.qweight, p32.scale, None, None, 32, 200, dtype, 4)


@pytest.mark.parametrize("natural", [0, 1])
@pytest.mark.parametrize("dtype", DTYPES)
def test_x_planes_every_length(kernels, dtype, natural):
    """x_planes at every length its launch distinguishes (one, two or four subtiles per thread held in registers,
    then the looped form past K = 32768), both byte orders, 1-4 tokens with an outlier and an all-zero token: the oracle's
    scales, high codes within one and x back within s / 508 of x."""
    for k in (64, 8192, 8256, 16448, 32768, 32832, 65600):
        for m in (1, 4):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            x[0, k - 1] *= 50
            if m > 1:
                x[2] = 0
            planes, xs = kernels.x_planes(x, 0, natural)
            want, want_s = reference.x_planes(x, natural=bool(natural))
            torch.testing.assert_close(xs, want_s, rtol=1e-6, atol=0)
            assert (planes[::2].int() - want[::2].int()).abs().max() <= 1, f"k={k} m={m}"
            assert (planes != want).float().mean() < 0.01, f"k={k} m={m}"
            back = reference.planes_to_x(planes, xs, natural=bool(natural))
            assert ((back - x.float()).abs() <= xs[:, None] * (1 / 508 + 1e-5)).all(), f"k={k} m={m}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_w8_planes_gemv_matches_float64(kernels, dtype, monkeypatch):
    """w8_planes_gemv (int8 rows, x_planes' planes in k order; csrc/w8_planes.cu) at 1-4 tokens, one, two and four
    stripes per block, plain and with PDL, with bias, on N = 200 (inside a stripe) and K = 576 / 4096 / 14336,
    against float64 and against w8_gemv; then W8A8 int8 and W8A16 layers with QTOOL_W8_PLANES on; the refusals."""
    from qtool_kernels import scaled_mm

    for k, n in ((576, 200), (4096, 1536), (14336, 64)):
        w = torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8)
        wscale = torch.rand(n, device="cuda") / 100
        bias = torch.randn(n, device="cuda")
        dense = w.double() * wscale.double()[:, None]
        for m in range(1, 5):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            x[0, 3] *= 40
            planes, xs = kernels.x_planes(x, 0, 1)
            want, want_s = reference.x_planes(x, natural=True)
            torch.testing.assert_close(xs, want_s, rtol=1e-6, atol=0)
            assert (planes[::2].int() - want[::2].int()).abs().max() <= 1 and (planes != want).float().mean() < 0.01
            ref = x.double() @ dense.T + bias.double()
            gemv = kernels.w8_gemv(x, w, wscale, bias, 0, 0)
            for variant in (0, 1, 2, 16, 17, 18):
                poison_cache()
                out = kernels.w8_planes_gemv(planes, xs, w, wscale, bias, dtype, variant)
                assert out.shape == (m, n) and rel_err(out, ref) < 1e-2, f"k={k} m={m} variant={variant}"
                assert rel_err(out, gemv) < 5e-3, f"k={k} m={m} variant={variant}"
    monkeypatch.setattr(scaled_mm, "W8_PLANES", True)
    monkeypatch.setattr(scaled_mm, "W8_PLANES_MIN_K", 0)  # the measured rule takes K, N >= 8192 only
    monkeypatch.setattr(scaled_mm, "W8_PLANES_MIN_N", 0)
    x = torch.randn(3, 4096, device="cuda", dtype=dtype)
    w = torch.randint(-127, 128, (1536, 4096), device="cuda", dtype=torch.int8)
    wscale = torch.rand(1536, 1, device="cuda") / 100
    y = scaled_mm.w8a8_linear_cuda(x, w, wscale, None, None, "int8", 0, 0, 0, 1)
    assert rel_err(y, x.double() @ (w.double() * wscale.double()).T) < 1e-2
    planes, xs = kernels.x_planes(x, 0, 1)
    with pytest.raises(RuntimeError, match="k a multiple of 64 .* got \\[1536, 4000\\]"):
        kernels.w8_planes_gemv(planes[:, :4000], xs, w[:, :4000].contiguous(), wscale, None, dtype, 0)
    with pytest.raises(RuntimeError, match="variant must be 0, 1 or 2 .* got 3"):
        kernels.w8_planes_gemv(planes, xs, w, wscale, None, dtype, 3)
