"""CUDA kernels against float64 references on fresh random inputs (run on a GPU: dev/gpu_check.sh).

Every output lands in memory poisoned with NaN first, so an element a kernel fails to write fails the test.
"""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import poison_cache, random_qtensor, rel_err, replayed
from qtool_kernels import ops, reference, scaled_mm, weight_only
from qtool_kernels.layout import EPILOGUE, ReferenceOps, dequantize_packed, pack_weight
from quantize.linear import QuantLinear
from quantize.primitives import pack_int
from quantize.scheme import QuantScheme

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.bfloat16, torch.float16]
TOKENS = [1, 3, 16, 17, 64, 129, 1000]


make_weight = functools.lru_cache(maxsize=4)(random_qtensor)  # (bits, group, sym, act_order, k, n, seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,n", [(576, 1536), (4096, 4096), (576, 4096), (4096, 1536)])
@pytest.mark.parametrize("symmetric,act_order", [(True, False), (False, False), (True, True), (False, True)])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("bits", [4, 8])
def test_quantlinear_matches_float64(kernels, bits, group_size, symmetric, act_order, k, n, dtype):
    if act_order and group_size <= 0:
        pytest.skip("act-order needs groups")
    qt, args, dense = make_weight(bits, group_size, symmetric, act_order, k, n)
    bias = torch.randn(n, device="cuda")
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=bias)
    for m in TOKENS:
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        poison_cache()
        out = layer(x)
        # 8-bit symmetric per-channel layers keep their codes row-major (weight_only.takes_rows)
        assert layer.cuda_qweight is not None or layer.cuda_rows is not None, "the layer did not take the kernel path"
        ref = x.double() @ dense.T + bias.double()
        assert out.dtype == dtype and out.shape == (m, n)
        assert rel_err(out, ref) < 1e-2, f"m={m}"


@pytest.mark.parametrize("bits,group_size,symmetric", [(2, 64, True), (2, 32, False), (3, 128, True), (3, 64, False),
                                                      (3, -1, True), (5, 32, False), (6, -1, True), (7, 128, False)])
def test_narrow_widths_take_the_kernels(kernels, bits, group_size, symmetric):
    """2-3-bit layers run natively (tests/test_lowbit_gpu.py) and 5-7-bit on the 8-bit kernels (codes widened),
    every token count and so every kernel of the dispatcher, K = 576 ragged at g128."""
    k, n = 576, 1536
    qt, args, dense = make_weight(bits, group_size, symmetric, False, k, n)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=None)
    for m in TOKENS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        poison_cache()
        out = layer(x)
        assert layer.cuda_qweight is not None, "the layer did not take the kernel path"
        assert rel_err(out, x.double() @ dense.T) < 1e-2, f"m={m}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,group_size,symmetric,act_order", [(4, 128, True, False), (4, 64, False, True),
                                                                 (8, -1, True, False), (8, 32, False, True)])
def test_weight_only_linear_op_matches_float64(kernels, bits, group_size, symmetric, act_order, dtype):
    """The op itself on CUDA tensors in the checkpoint layout, 3-D activations: its PyTorch reference
    (QuantLinear is the one route to the kernels, quantize/linear.py)."""
    qt, args, dense = make_weight(bits, group_size, symmetric, act_order, 576, 1536)
    qweight = pack_int(qt.values, bits) if bits < 8 else qt.values
    for m in (1, 17, 1000):
        x = torch.randn(2, m, 576, device="cuda", dtype=dtype)
        poison_cache()
        out = ops.weight_only_linear(x, qweight, qt.scale, qt.zero_point, qt.g_idx, None, bits, group_size, 576)
        assert rel_err(out, x.double() @ dense.T) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 128, True), (4, 32, False), (8, -1, False), (8, 64, True)])
def test_raw_kernels_match_emulation(kernels, bits, group_size, symmetric, dtype):
    """Each kernel at every token count it serves, with bias, against layout.ReferenceOps."""
    qt, _, _ = make_weight(bits, group_size, symmetric, False, 4096, 1536, seed=1)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, group_size)
    w = (p.qweight, p.scale, p.zero)
    bias = torch.randn(1536, device="cuda")
    cases = [("wo_gemv", m, (None, v)) for v in (0, 1, 2) for m in range(1, 9)]  # 1 lean, 2 wide
    cases += [("wo_gemm", m, ()) for m in (1, 8, 9, 16, 31, 33, 64, 65, 200)]
    cases += [("wo_gemm_v3", m, ()) for m in (1, 5, 8, 9, 16, 17, 31, 33, 64, 65, 200)]
    for name, m, extra in cases:  # extra (None, variant): wo_gemv's launch variant
        x = torch.randn(m, p.k_padded, device="cuda", dtype=dtype)
        poison_cache()
        out = getattr(kernels, name)(x, *w, bias, bits, p.group_size, 1536, EPILOGUE, *extra)
        ref = ReferenceOps.wo_gemv(x, *w, bias, bits, p.group_size, 1536, EPILOGUE)
        assert rel_err(out, ref.double()) < 1e-2, f"{name}{extra} m={m}"
    poison_cache()
    dense = kernels.dequant_int(*w, bits, p.group_size, 1536, dtype)
    expected = dequantize_packed(*w, bits, p.group_size, 1536, dtype)
    torch.testing.assert_close(dense, expected, rtol=1e-2, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits,group_size,symmetric", [(4, 128, False), (8, 32, True)])
def test_gemv_both_activation_paths(kernels, bits, group_size, symmetric, dtype):
    """wo_gemv stages x in shared memory while m * K * 2 bytes fit 96 KB (m <= 3 at K = 14336) and reads
    it from global memory above: both paths against layout.ReferenceOps, n not a multiple of 16."""
    k, n = 14336, 200
    qt, _, _ = make_weight(bits, group_size, symmetric, False, k, n, seed=2)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, group_size)
    w = (p.qweight, p.scale, p.zero)
    for m in range(1, 9):
        x = torch.randn(m, p.k_padded, device="cuda", dtype=dtype)
        ref = ReferenceOps.wo_gemv(x, *w, None, bits, p.group_size, n, "none")
        for variant in (0, 1, 2):  # 1: lean (4 blocks per SM), 2: wide (16 warps), for one group per chunk
            poison_cache()
            out = kernels.wo_gemv(x, *w, None, bits, p.group_size, n, "none", None, variant)
            assert out.shape == (m, n) and rel_err(out, ref.double()) < 1e-2, f"m={m} variant={variant}"




def check_gemm_against_float64(call, bits, group_size, symmetric, dtype, shapes):
    """call(x padded to K_pad, packed weight, bias, m) -> [m, N] against x @ W^T + bias in float64 from the
    checkpoint tensors, for each (K, N, token counts) of `shapes`, output memory poisoned first."""
    for k, n, tokens in shapes:
        qt, _, dense = make_weight(bits, group_size, symmetric, False, k, n, seed=k)
        p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, group_size)
        bias = torch.randn(n, device="cuda")
        for m in tokens:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            xp = torch.nn.functional.pad(x, (0, p.k_padded - k))
            ref = x.double() @ dense.T + bias.double()
            poison_cache()
            out = call(xp, p, bias, m)
            assert out.shape == (m, n) and rel_err(out, ref) < 1e-2, f"k={k} n={n} m={m}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [16, 32, 64, 128, 256, -1])
@pytest.mark.parametrize("bits", [4, 8])
def test_gemm_v3_matches_float64(kernels, bits, group_size, symmetric, dtype):
    """wo_gemm_v3 at every m in 1..64 (and 65, 130: token slices over blockIdx.z), each of its variants
    (ring depth, split-K choice) in turn, against x @ W^T in float64 from the checkpoint tensors.
    Ragged shapes: K = 576 and 960 end in half a 128-k piece (and, at g128, in a group that piece only
    half covers); N = 200 and 1000 end inside a 128-row tile and a 16-row stripe. K = 4096, N = 1536
    splits K over a cluster on sm_90."""
    shapes = ((576, 200, range(1, 65)), (960, 1000, range(1, 65, 3)), (4096, 1536, (5, 16, 17, 33, 64, 65, 130)))
    check_gemm_against_float64(lambda xp, p, bias, m: kernels.wo_gemm_v3(  # variant m % 4: each in turn
        xp, p.qweight, p.scale, p.zero, bias, bits, p.group_size, p.out_features, EPILOGUE, m % 4),
        bits, group_size, symmetric, dtype, shapes)


def test_gemm_v3_variants_agree_and_repeat(kernels):
    """Every variant gives the float64 result, and a variant gives the same bits twice (the cluster
    reduction sums partials in a fixed order)."""
    qt, _, dense = make_weight(4, 128, False, False, 14336, 1024, seed=5)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, 128)
    for m in (5, 16, 32, 64):
        x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
        ref = x.double() @ dense.T
        args = (x, p.qweight, p.scale, p.zero, None, 4, 128, 1024, EPILOGUE)
        for variant in range(4):
            first = kernels.wo_gemm_v3(*args, variant)
            assert rel_err(first, ref) < 1e-2, f"m={m} variant={variant}"
            assert torch.equal(kernels.wo_gemm_v3(*args, variant), first), f"m={m} variant={variant} is not deterministic"


def test_gemv_prefetch_changes_nothing(kernels):
    """The L2 prefetch of another tensor (link_prefetch) leaves wo_gemv's output bit-identical, for
    prefetch ranges smaller and larger than a block's slice; a linked chain of QuantLinears under
    torch.compile (CUDA graphs) gives the unlinked chain's result."""
    qt, args, dense = make_weight(4, 128, False, False, 4096, 1536, seed=3)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, 128)
    x = torch.randn(1, p.k_padded, device="cuda", dtype=torch.bfloat16)
    plain = kernels.wo_gemv(x, p.qweight, p.scale, p.zero, None, 4, 128, 1536, "none")
    for other in (torch.empty(48, dtype=torch.uint8, device="cuda"), torch.empty(40 << 20, dtype=torch.uint8, device="cuda")):
        out = kernels.wo_gemv(x, p.qweight, p.scale, p.zero, None, 4, 128, 1536, "none", other)
        assert torch.equal(out, plain)

    from quantize.prefetch import link_weight_prefetch

    weights = [make_weight(4, 128, True, False, 1024, 1024, seed=s) for s in range(3)]
    layers = torch.nn.Sequential(*[QuantLinear.from_qtensor(q, QuantScheme(weights=a)) for q, a, _ in weights])
    h = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    expected = layers(h)
    assert link_weight_prefetch(layers, lambda: layers(h), max_bytes=4096) == 3
    for layer, nxt in ((layers[0], layers[1]), (layers[2], layers[0])):  # a byte view of the next weight's start
        assert layer.cuda_prefetch.data_ptr() == nxt.cuda_qweight.data_ptr() and layer.cuda_prefetch.numel() == 4096
    compiled = torch.compile(layers, mode="reduce-overhead")
    for _ in range(3):
        assert torch.equal(compiled(h), expected)
    assert link_weight_prefetch(layers, lambda: layers(h), max_bytes=0) == 0
    assert all(layer.cuda_prefetch is None for layer in layers)


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_w8_gemv_prefetch_changes_nothing(kernels, fmt):
    """w8_gemv's L2 prefetch of another tensor leaves its output bit-identical (ranges smaller and larger than
    a block's slice, per-channel and block scales), and a chain of linked W8A8 QuantLinears gives the unlinked
    chain's result, eager and under torch.compile (CUDA graphs)."""
    dtype = torch.int8 if fmt == "int8" else torch.float8_e4m3fn
    w = torch.randint(-100, 100, (3072, 1024), device="cuda").to(dtype)
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    for scale, blocks in ((torch.rand(3072, device="cuda") + 0.5, (0, 0)),
                          (torch.rand(24, 8, device="cuda") + 0.5, (128, 128))):
        plain = kernels.w8_gemv(x, w, scale, None, *blocks)
        for other in (torch.empty(48, dtype=torch.uint8, device="cuda"),
                      torch.empty(40 << 20, dtype=torch.uint8, device="cuda")):
            assert torch.equal(kernels.w8_gemv(x, w, scale, None, *blocks, 0, other), plain)

    from quantize.prefetch import link_weight_prefetch
    from quantize.primitives import quantize_weight
    from quantize.scheme import preset

    scheme = preset("fp8" if fmt == "e4m3" else "w8a8-int8")
    layers = torch.nn.Sequential(*[QuantLinear.from_qtensor(quantize_weight(torch.randn(1024, 1024), scheme.weights),
                                                            scheme) for _ in range(3)]).cuda()
    h = torch.randn(2, 1024, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = layers(h)
        assert link_weight_prefetch(layers, lambda: layers(h), 4 << 20) == 3
        assert layers[0].cuda_prefetch.data_ptr() == layers[1].weight.data_ptr()
        assert torch.equal(layers(h), expected)
        compiled = torch.compile(layers, mode="reduce-overhead")
        for _ in range(3):
            assert torch.equal(compiled(h), expected)


BAD_CALLS = """
import pytest, torch
from qtool_kernels import build
from qtool_kernels.layout import pack_weight
kernels = build.load_extension()
codes = torch.randint(-8, 8, (1536, 576), dtype=torch.int8, device="cuda")
p = pack_weight(codes, torch.rand(1536, 5, device="cuda") + 0.1, None, None, 4, 128)
x = torch.randn(3, 512, device="cuda", dtype=torch.bfloat16)
with pytest.raises(RuntimeError, match=r"k_padded=576.*\\[3, 512\\]"):
    kernels.wo_gemm(x, p.qweight, p.scale, None, None, 4, 128, 1536, "none")
with pytest.raises(RuntimeError, match="scale must be"):
    kernels.wo_gemv(x[:, :1], p.qweight, p.scale[:, :16], None, None, 4, 128, 1536, "none")
print("raised")
"""


def test_kernel_errors_name_shapes(kernels):
    """Bad shapes raise RuntimeErrors that name them.

    In a child process: on the H100 (torch 2.11, nvcc 13, 2026-11-23) the first bad call crashed the
    interpreter with a segfault instead of raising, which took the rest of the test session down.
    """
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", BAD_CALLS], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "raised" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_opcheck(kernels):
    qt, _, _ = make_weight(4, 128, False, True, 576, 1536)
    x = torch.randn(5, 576, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(1536, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(ops.weight_only_linear, (x, pack_int(qt.values, 4), qt.scale, qt.zero_point, qt.g_idx, bias,
                                                   4, 128, 576))
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, 128)
    for name, m in (("wo_gemv", 3), ("wo_gemm", 40), ("wo_gemm_v3", 40)):
        args = (x.new_empty(m, 576).normal_(), p.qweight, p.scale, p.zero, bias.float(), 4, 128, 1536, EPILOGUE)
        torch.library.opcheck(getattr(torch.ops.qtool_cuda, name).default, args)
    torch.library.opcheck(torch.ops.qtool_cuda.dequant_int.default,
                          (p.qweight, p.scale, p.zero, 4, 128, 1536, torch.float16))
    xq = x.new_empty(3, 576).normal_()
    torch.library.opcheck(torch.ops.qtool_cuda.x_planes.default, (xq,))
    sym, _, _ = make_weight(4, 128, True, False, 576, 1536)
    ps = pack_weight(sym.values, sym.scale, None, None, 4, 128)
    planes, xs = torch.ops.qtool_cuda.x_planes(xq)
    torch.library.opcheck(torch.ops.qtool_cuda.wo_planes_gemv.default,
                          (planes, xs, ps.qweight, ps.scale, None, bias.float(), 128, 1536, torch.bfloat16))
    torch.library.opcheck(torch.ops.qtool_cuda.wo_planes_gemv.default,
                          (planes, xs, p.qweight, p.scale, p.zero, bias.float(), 128, 1536, torch.bfloat16))
    torch.library.opcheck(torch.ops.qtool_cuda.x_planes.default, (xq, 0, 1))
    torch.library.opcheck(torch.ops.qtool_cuda.x_planes.default, (x.new_empty(3, 1152).normal_(), 0, 0, 1))  # gated
    natural, xs = torch.ops.qtool_cuda.x_planes(xq, 0, 1)
    w8 = torch.randint(-127, 128, (1536, 576), device="cuda", dtype=torch.int8)
    torch.library.opcheck(torch.ops.qtool_cuda.w8_planes_gemv.default,
                          (natural, xs, w8, torch.rand(1536, device="cuda"), bias.float(), torch.bfloat16))


def test_quantlinear_repacks_after_load_state_dict(kernels):
    qt, args, dense = make_weight(4, 128, True, False, 576, 1536)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args))
    x = torch.randn(2, 576, device="cuda", dtype=torch.bfloat16)
    layer(x)
    keys = set(layer.state_dict())
    assert not any(key.startswith("cuda_") for key in keys)
    qt2, _, dense2 = make_weight(4, 128, True, False, 576, 1536, seed=7)
    layer.load_state_dict(QuantLinear.from_qtensor(qt2, QuantScheme(weights=args)).state_dict())
    assert rel_err(layer(x), x.double() @ dense2.T) < 1e-2


def test_quantlinear_first_call_inside_a_graph_capture(kernels):
    """A layer met first inside a CUDA graph capture refuses with a message (the repack would be recorded, not run,
    and kept as unwritten memory); after one eager forward the captured graph replays the right output."""
    qt, args, dense = make_weight(4, 128, True, False, 576, 1536)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args))
    x = torch.randn(16, 576, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="eager forward"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            layer(x)
    y = replayed(layer, x)  # after one eager call
    assert rel_err(y, x.double() @ dense.T) < 1e-2


def test_quantlinear_under_torch_compile(kernels):
    qt, args, dense = make_weight(4, 128, False, True, 576, 1536)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args))
    x = torch.randn(4, 576, device="cuda", dtype=torch.bfloat16)
    layer(x)  # eager forward prepares the kernel layout
    compiled = torch.compile(layer)
    for m in (4, 40):
        x = torch.randn(m, 576, device="cuda", dtype=torch.bfloat16)
        assert rel_err(compiled(x), x.double() @ dense.T) < 1e-2


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 5, 64, 300])
def test_scaled_linear_on_torch_gemms(m, out_dtype):
    g = torch.Generator(device="cuda").manual_seed(m)
    k, n = 512, 768
    x = torch.randn(m, k, device="cuda", generator=g, dtype=out_dtype)
    w = torch.randn(n, k, device="cuda", generator=g)
    bias = torch.randn(n, device="cuda")
    for fmt, static in (("int8", False), ("int8", True), ("e4m3", False)):
        static_scale = torch.tensor([x.abs().max().item() / 127], device="cuda") if static else None
        xq, xs = ops.quantize_activation(x, fmt, 0, static_scale)
        wdtype = torch.int8 if fmt == "int8" else torch.float8_e4m3fn
        wmax = 127.0 if fmt == "int8" else 448.0
        ws = w.abs().amax(1, keepdim=True) / wmax
        wq = (w / ws).round().clamp(-127, 127).to(wdtype) if fmt == "int8" else (w / ws).to(wdtype)
        direct = scaled_mm.scaled_mm(xq, xs, wq, ws, bias, 0, 0, 0, out_dtype)
        assert direct is not None, f"{fmt} fell back to the reference"
        poison_cache()
        out = ops.scaled_linear(xq, xs, wq, ws, bias, 0, 0, 0, out_dtype)
        ref = reference.scaled_linear(xq.cpu(), xs.cpu(), wq.cpu(), ws.cpu(), bias.cpu(), 0, 0, 0, torch.float32)
        assert out.dtype == out_dtype and rel_err(out.cpu(), ref.double()) < 1e-2, fmt


def test_smoke_all_paths(kernels):
    """Small and quick: every kernel and dispatch branch once (dev/gpu_check.sh runs it under compute-sanitizer)."""
    for bits, gs, sym, act in ((4, 128, True, False), (4, 64, False, True), (8, -1, False, False)):
        qt, args, dense = make_weight(bits, gs, sym, act, 576, 1536)
        layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=torch.randn(1536, device="cuda"))
        for m in (1, weight_only.GEMV_MAX_M + 1, weight_only.V3_MAX_M + 1, weight_only.GEMM_MAX_M + 1):
            x = torch.randn(m, 576, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ dense.T + layer.bias.double()
            assert rel_err(layer(x), ref) < 1e-2
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_layout_matches_float64(kernels, monkeypatch, dtype):
    """8-bit symmetric per-channel layers packed row-major (the default since session 16): w8_gemv up to
    weight_only.rows_gemv's limit, then the Hopper copy (bf16) or w8_gemv in slices (fp16, to 64 tokens) and the
    dequantized rows + cuBLAS past them, all against the float64 product; a layer the row-major layout cannot take
    (K % 64) keeps the wo layout."""
    monkeypatch.setattr(weight_only, "W8_ROWS_MAX_M", 32)
    for k, n in ((4096, 1536), (4104, 1536), (576, 4224)):
        qt, args, dense = make_weight(8, -1, True, False, k, n)
        layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=torch.randn(n, device="cuda"))
        for m in (1, 8, 32, 33, 300):
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            poison_cache()
            ref = x.double() @ dense.T + layer.bias.double()
            assert rel_err(layer(x), ref) < 1e-2, (k, n, m)
        assert (layer.cuda_rows is not None) == (k % 64 == 0), k
