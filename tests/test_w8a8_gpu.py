"""The W8A8 kernels (fused activation quantization, 8-bit-weight GEMV, Hopper W8A8 GEMM, block-wise FP8)
against the reference on fresh random inputs, on a GPU.

Bounds: activation codes and scales are bit-exact (the kernel follows the reference's arithmetic);
GEMM outputs are within 1e-2 relative (Frobenius) of a float64 product of the same codes and scales:
bf16/fp16 output rounding is ~4e-3, float32 accumulation far below.
"""

from __future__ import annotations

import pytest
import torch

from conftest import poison_cache, rel_err
from qtool_kernels import block_mm, reference, scaled_mm, sm90
from quantize.linear import QuantLinear
from quantize.primitives import quantize_weight
from quantize.scheme import preset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.bfloat16, torch.float16]
FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype != torch.int8 else t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
@pytest.mark.parametrize("group", [0, 128, 32])
@pytest.mark.parametrize("m, k", [(1, 4096), (5, 576), (300, 1000), (33, 4104), (3, 14336), (2, 20000), (2, 40000)])
def test_act_quant_matches_reference_bit_for_bit(kernels, dtype, fmt, group, m, k):
    """Every row length: held in registers (k % 8 == 0 up to 32768: 1 to 16 vectors per thread, a partial last
    one at 20000), and the two-pass rows (k % 8 != 0, or longer than 32768)."""
    if group and k % 8:
        pytest.skip("groups need k % 8 == 0")
    g = torch.Generator(device="cuda").manual_seed(m * k + group)
    x = (torch.randn(m, k, device="cuda", generator=g) * torch.rand(m, 1, device="cuda", generator=g) * 8).to(dtype)
    x[0, : min(k, 64)] = 0  # an all-zero group gets scale 1
    poison_cache()
    q, s = kernels.act_quant(x, fmt, group, None)
    rq, rs = reference.quantize_activation(x, fmt, group, None)
    assert torch.equal(s.reshape(rs.shape), rs)
    assert torch.equal(as_bytes(q), as_bytes(rq))
    if group:
        assert s.stride() == (1, m)  # column-major: what block-wise GEMMs read


@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_act_quant_static_and_strided_rows(kernels, fmt):
    x = torch.randn(64, 3001, device="cuda", dtype=torch.bfloat16)[:, :2000]  # rows 3001 apart: scalar loads
    static = torch.tensor([0.02], device="cuda")
    q, s = kernels.act_quant(x, fmt, 0, static)
    rq, rs = reference.quantize_activation(x, fmt, 0, static)
    assert torch.equal(as_bytes(q), as_bytes(rq)) and s.shape == (64, 1) and bool((s == rs).all())
    q, s = kernels.act_quant(x, fmt, 0, None)
    rq, rs = reference.quantize_activation(x, fmt, 0, None)
    assert torch.equal(as_bytes(q), as_bytes(rq)) and torch.equal(s, rs)


def test_act_quant_int8_rounds_half_to_even_and_saturates(kernels):
    """Ties and the ends of the code range with a static scale of 1 (every value exact in bf16, every quotient
    exact): round half to even, as torch.round, then [-128, 127]; infinities saturate."""
    ties = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -127.5, -130.0, 200.0, -300.0, float("inf"), float("-inf")]
    codes = [0, 2, 2, 0, -2, -2, 126, 127, -128, -128, 127, -128, 127, -128]
    one = torch.ones(1, device="cuda")
    for reps in (2, 16):  # 28 elements per row: the scalar path; 224: the held-row kernel
        x = torch.tensor(ties * reps, device="cuda", dtype=torch.bfloat16).repeat(3, 1)
        q, _ = kernels.act_quant(x, "int8", 0, one)
        rq, _ = reference.quantize_activation(x, "int8", 0, one)
        assert torch.equal(q, rq) and q.cpu().tolist() == [codes * reps] * 3


def weight_codes(fmt: str, n: int, k: int, g: torch.Generator) -> torch.Tensor:
    if fmt == "int8":
        return torch.randint(-128, 128, (n, k), device="cuda", generator=g, dtype=torch.int8)
    return (torch.randn(n, k, device="cuda", generator=g) * 40).to(FP8[fmt])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
@pytest.mark.parametrize("scales", ["channel", "tensor", "block"])
@pytest.mark.parametrize("m", [1, 2, 7, 8, 9, 16, 17, 32])
@pytest.mark.parametrize("n, k", [(1536, 576), (100, 4096), (4096, 1040), (6008, 1040), (8200, 1040), (16400, 1040)])
def test_w8_gemv(kernels, dtype, fmt, scales, m, n, k):
    """w8_gemv's launch shapes against float64: 16-warp blocks (<= 4096 rows), 8-warp blocks of one stripe (6008
    rows, a ragged last block; 8200: 513 blocks, where folded block scales take four blocks per SM on 132 SMs) and of
    two (16400 rows), at one to four token tiles."""
    g = torch.Generator(device="cuda").manual_seed(m + n + k)
    w = weight_codes(fmt, n, k, g)
    if scales == "block":
        scale = torch.rand(-(-n // 128), -(-k // 128), device="cuda", generator=g) / 100 + 1e-3
        dense = w.double() * scale.double().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
        bn = bk = 128
    else:
        scale = torch.rand(n if scales == "channel" else 1, 1, device="cuda", generator=g) / 100 + 1e-3
        dense, bn, bk = w.double() * scale.double(), 0, 0
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    bias = torch.randn(n, device="cuda", generator=g)
    poison_cache()
    y = scaled_mm._w8_gemv(x, w, scale, bias, bn, bk)
    assert y is not None and y.dtype == dtype and y.shape == (m, n)
    assert rel_err(y, x.double() @ dense.T + bias.double()) < 1e-2


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@pytest.mark.parametrize("m", [1, 5, 16, 24])
def test_w8_gemv_block_scales_past_the_fold(kernels, fmt, m):
    """bf16 FP8 block scales join the decode's bf16 multiplier (2^120 * scale for E4M3, 2^112 for E5M2); a scale
    that would overflow it (from 2^6 / 2^14) takes the exact 2^-64 detour for its tile. Blocks of ordinary and
    overflowing scales mixed, checked against float64 at the same bound as the rest."""
    g = torch.Generator(device="cuda").manual_seed(m)
    n, k = 384, 1024
    w = weight_codes(fmt, n, k, g)
    scale = torch.rand(n // 128, k // 128, device="cuda", generator=g) / 100 + 1e-3
    x = torch.randn(m, k, device="cuda", generator=g)
    big = 9 if fmt == "e4m3" else 17
    for (rb, kb), e in {(0, 1): big, (2, 5): big, (1, 3): big - 4}.items():  # the detour twice, then just below
        scale[rb, kb] = 2.0 ** e
        x[:, kb * 128:(kb + 1) * 128] *= 2.0 ** -e / 100  # its block's share of the sum like the others'
    x = x.to(torch.bfloat16)
    dense = w.double() * scale.double().repeat_interleave(128, 0).repeat_interleave(128, 1)
    y = scaled_mm._w8_gemv(x, w, scale, None, 128, 128)
    want = x.double() @ dense.T
    assert y is not None and torch.isfinite(y).all()
    for rb in range(n // 128):  # per row block: each has its own mix of folded and detoured tiles
        assert rel_err(y[:, rb * 128:(rb + 1) * 128], want[:, rb * 128:(rb + 1) * 128]) < 1e-2, rb


@pytest.mark.parametrize("block", [(128, 64), (64, 256), (128, 192), (32, 320)])
@pytest.mark.parametrize("m", [1, 8, 16])
def test_w8_gemv_block_widths(kernels, block, m):
    """bf16 FP8 blocks other than 128 x 128: k blocks of 64 * 2^j tiles are folded into the decode (the kernel finds
    a tile's block by a shift), others (192, 320) take the per-tile accumulation; both against float64. The gated
    epilogue folds only: the op refuses the others with the width in its message and the layer's gated path
    (scaled_mm._gated_gemv) leaves them to the plain GEMV and silu_mul."""
    bn, bk = block
    g = torch.Generator(device="cuda").manual_seed(m + bn + bk)
    n, k = 768, 1984  # k not a multiple of the block: the last k block is short
    w = weight_codes("e4m3", n, k, g)
    scale = torch.rand(-(-n // bn), -(-k // bk), device="cuda", generator=g) / 100 + 1e-3
    dense = w.double() * scale.double().repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    y = scaled_mm._w8_gemv(x, w, scale, None, bn, bk)
    assert y is not None and rel_err(y, x.double() @ dense.T) < 1e-2
    folds = scaled_mm._folds(bk)
    assert folds == (bk in (64, 256))
    if not folds and m <= 8:
        with pytest.raises(RuntimeError, match=f"got block {bn} x {bk}"):
            kernels.w8_gemv(x, w, scale, None, bn, bk, 0, None, 1)
        assert scaled_mm._gated_gemv(x, w, scale, None, bn, bk, 1, None) is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["int8", "e4m3", "e5m2"])
def test_w8_gemv_decodes_every_code_exactly(kernels, dtype, fmt):
    """w8_gemv's in-register code conversion (bit tricks, no conversion instructions) is exact for every finite
    code, subnormals and signed zeros included: one-hot activations and unit scales make each output one code,
    which bf16 and fp16 both hold exactly (every FP8 value and every int8 integer fits either); a signed zero
    sums to +0, so outputs are compared as values."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    if fmt != "int8":  # E4M3's NaN codes, E5M2's Inf / NaN: never weights
        codes = codes[torch.isfinite(codes.view(FP8[fmt]).float())]
    n, k, m = codes.numel(), 64, 16
    w = torch.stack([codes.roll(-j) for j in range(k)], 1)  # row r, column j: code r + j
    w = w.view(torch.int8 if fmt == "int8" else FP8[fmt]).cuda().contiguous()
    cols = torch.randperm(k, device="cuda")[:m]
    x = torch.zeros(m, k, dtype=dtype, device="cuda")
    x[torch.arange(m, device="cuda"), cols] = 1
    y = scaled_mm._w8_gemv(x, w, torch.ones(n, 1, device="cuda"), None, 0, 0)
    want = w.float()[:, cols].T.to(dtype)
    assert y is not None and torch.equal(y.float(), want.float()), fmt  # -0 sums to +0: compared as values


def test_sm90_gemm_loads_on_hopper():
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("not a Hopper GPU")
    assert sm90.load(), sm90.reason()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
@pytest.mark.parametrize("m", [17, 64, 129, 300, 2048])
@pytest.mark.parametrize("n, k", [(1536, 576), (4096, 4096), (1000, 2064)])
def test_scaled_mm_gemms(kernels, dtype, fmt, m, n, k):
    g = torch.Generator(device="cuda").manual_seed(m * 3 + n + k)
    x = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    w = weight_codes(fmt, n, k, g)
    ws = torch.rand(n, 1, device="cuda", generator=g) / 100 + 1e-3
    bias = torch.randn(n, device="cuda", generator=g)
    xq, xs = kernels.act_quant(x, fmt, 0, None)
    poison_cache()
    y = scaled_mm.scaled_mm(xq, xs, w, ws, bias, 0, 0, 0, dtype)
    assert y is not None and y.dtype == dtype
    ref = reference.scaled_linear(xq.cpu(), xs.cpu(), w.cpu(), ws.cpu(), bias.cpu(), 0, 0, 0, torch.float64)
    assert rel_err(y.cpu(), ref) < 1e-2


@pytest.mark.parametrize("config", ["skinny", "large", "split", "narrow", "pingpong", "skinny-pair", "pingpong-2x2",
                                    "large-2x2"])
@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
@pytest.mark.parametrize("m", [1, 17, 130, 700])
@pytest.mark.parametrize("n, k", [(1536, 576), (4096, 4096), (1000, 2064)])
def test_sm90_gemm_every_config(kernels, config, fmt, m, n, k):
    """Each tile configuration of libqtool_sm90 (skinny, large, split-K, narrow, large ping-pong, skinny in 2-CTA
    clusters, large ping-pong and large in 2 x 2 clusters) at any m, bf16 out, with bias."""
    if torch.cuda.get_device_capability() != (9, 0) or not sm90.load():
        pytest.skip("libqtool_sm90 runs on Hopper")
    g = torch.Generator(device="cuda").manual_seed(m + n + k + len(config))
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = weight_codes(fmt, n, k, g)
    ws = torch.rand(n, device="cuda", generator=g) / 100 + 1e-3
    bias = torch.randn(n, device="cuda", generator=g)
    xq, xs = kernels.act_quant(x, fmt, 0, None)
    poison_cache()
    y = torch.ops.qtool_cuda.sm90_scaled_mm(xq, w, xs.reshape(-1).contiguous(), ws, bias, torch.bfloat16,
                                            scaled_mm.SM90_CONFIGS[config])
    ref = reference.scaled_linear(xq.cpu(), xs.cpu(), w.cpu(), ws.cpu().view(-1, 1), bias.cpu(), 0, 0, 0,
                                  torch.float64)
    assert torch.isfinite(y).all()
    assert rel_err(y.cpu(), ref) < 1e-2
    # launched with programmatic dependent launch right after the kernel that writes its input (act_quant releases
    # it at its start): the GEMM waits for that kernel, so the result is the same bits
    xq2, xs2 = kernels.act_quant(x * 2, fmt, 0, None)
    y2 = torch.ops.qtool_cuda.sm90_scaled_mm(xq2, w, xs2.reshape(-1).contiguous(), ws, bias, torch.bfloat16,
                                             scaled_mm.SM90_CONFIGS[config] + scaled_mm.SM90_PDL)
    want = torch.ops.qtool_cuda.sm90_scaled_mm(xq2, w, xs2.reshape(-1).contiguous(), ws, bias, torch.bfloat16,
                                               scaled_mm.SM90_CONFIGS[config])
    assert torch.equal(y2, want)


@pytest.mark.parametrize("config,split", [("block-skinny", 0), ("block-split", 0), ("block-split", 1),
                                          ("block-split", -1), ("block-split", 3), ("block-large", 0),
                                          ("block-swap", 0), ("block-swap", 1), ("block-swap", -1), ("block-swap", 4),
                                          ("block-narrow", 0), ("block-large-2x2", 0), ("block-large-overlap", 0),
                                          ("block-large-2x2-overlap", 0), ("block-skinny-overlap", 0),
                                          ("block-split-overlap", 3), ("block-split-overlap", -1),
                                          ("block-swap-overlap", 4), ("block-narrow-overlap", 0),
                                          ("block-skinny-2x2", 0), ("block-skinny-2x2-overlap", 0)])
@pytest.mark.parametrize("m", [1, 17, 130, 700])
@pytest.mark.parametrize("n, k", [(1536, 512), (4096, 4096), (1000, 2176)])
def test_sm90_block_gemm_every_config(kernels, config, split, m, n, k):
    """libqtool_sm90_block (FP8, 1 x 128 activation and 128 x 128 weight-block scales) against the float64
    reference, at ragged m (padded to 4 rows inside) and n (a partial last weight block)."""
    if torch.cuda.get_device_capability() != (9, 0) or not block_mm.available():
        pytest.skip("libqtool_sm90_block runs on Hopper")
    g = torch.Generator(device="cuda").manual_seed(m + n + k + split)
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = weight_codes("e4m3", n, k, g)
    ws = torch.rand(-(-n // 128), k // 128, device="cuda", generator=g) / 100 + 1e-3
    xq, xs = kernels.act_quant(x, "e4m3", 128, None)
    poison_cache()
    y = block_mm.block_linear(xq, xs, w, ws, block_mm.CONFIGS[config], split)
    ref = reference.scaled_linear(xq.cpu(), xs.cpu(), w.cpu(), ws.cpu(), None, 128, 128, 128, torch.float64)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert rel_err(y.cpu(), ref) < 1e-2
    # launched with programmatic dependent launch right after the act_quant that writes its input (which releases
    # it at its start): the GEMM waits for that kernel, so it reads the new codes, not the last call's
    xq2, xs2 = kernels.act_quant(-2 * x, "e4m3", 128, None)
    y2 = block_mm.block_linear(xq2, xs2, w, ws, block_mm.CONFIGS[config], split, pdl=True)
    ref2 = reference.scaled_linear(xq2.cpu(), xs2.cpu(), w.cpu(), ws.cpu(), None, 128, 128, 128, torch.float64)
    assert rel_err(y2.cpu(), ref2) < 1e-2


@pytest.mark.parametrize("k", [128, 256, 384, 2176])  # 1, 2, 3 and 17 k tiles: each tail of the two-tile turns
@pytest.mark.parametrize("tile,split", [("block-large", 0), ("block-large-2x2", 0), ("block-skinny", 0),
                                        ("block-narrow", 0), ("block-split", 3), ("block-split", -1),
                                        ("block-swap", 4), ("block-skinny-2x2", 0)])
def test_sm90_block_overlap_same_bits(kernels, tile, split, k):
    """The promotion overlapped with the next k tile's wgmma (csrc/sm90/sm90_block_overlap.cuh) changes when each
    partial tile is folded in, not the arithmetic: the same bits as the tile with CUTLASS's mainloop (split-K and
    stream-K too: their partial sums meet in the same order), and within 1e-2 of float64."""
    if torch.cuda.get_device_capability() != (9, 0) or not block_mm.available():
        pytest.skip("libqtool_sm90_block runs on Hopper")
    g = torch.Generator(device="cuda").manual_seed(k)
    m, n = 300, 1000
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = weight_codes("e4m3", n, k, g)
    ws = torch.rand(-(-n // 128), k // 128, device="cuda", generator=g) / 100 + 1e-3
    xq, xs = kernels.act_quant(x, "e4m3", 128, None)
    poison_cache()
    y = block_mm.block_linear(xq, xs, w, ws, block_mm.CONFIGS[f"{tile}-overlap"], split)
    want = block_mm.block_linear(xq, xs, w, ws, block_mm.CONFIGS[tile], split)
    ref = reference.scaled_linear(xq.cpu(), xs.cpu(), w.cpu(), ws.cpu(), None, 128, 128, 128, torch.float64)
    assert rel_err(y.cpu(), ref) < 1e-2
    assert torch.equal(y, want)


def test_sm90_gemm_rejects_unknown_config(kernels):
    if torch.cuda.get_device_capability() != (9, 0) or not sm90.load():
        pytest.skip("libqtool_sm90 runs on Hopper")
    a = torch.zeros(16, 64, device="cuda", dtype=torch.int8)
    # configurations are 0-8 (the PDL bit is 16, the order bits 32 and 64): 9, 15 and 128 are none, launched
    # plainly, with PDL or with an order
    for config in (9, 15, 128, 9 + scaled_mm.SM90_PDL, 9 + sm90.ORDERS["n8"]):
        with pytest.raises(RuntimeError, match="config must be"):
            torch.ops.qtool_cuda.sm90_scaled_mm(a, a, torch.ones(16, device="cuda"), torch.ones(16, device="cuda"),
                                                None, torch.bfloat16, config)


@pytest.mark.parametrize("name", ["fp8", "fp8-static", "w8a8-int8", "w8a8-int8-static", "fp8-block"])
@pytest.mark.parametrize("m", [1, 16, 17, 300, 2048])
@pytest.mark.parametrize("k, n", [(4096, 1536), (576, 1536)])
def test_w8a8_layers_match_reference(kernels, name, m, k, n):
    scheme = preset(name)
    g = torch.Generator(device="cuda").manual_seed(m + k)
    w = torch.randn(n, k, device="cuda", generator=g) / k**0.5
    layer = QuantLinear.from_qtensor(quantize_weight(w, scheme.weights), scheme,
                                     bias=torch.randn(n, device="cuda", generator=g).to(torch.bfloat16))
    if hasattr(layer, "input_scale"):
        layer.input_scale.fill_(0.02)
    x = torch.randn(3, m, k, device="cuda", generator=g).to(torch.bfloat16)
    poison_cache()
    y = layer(x)
    assert y.shape == (3, m, n) and y.dtype == torch.bfloat16
    kind = scaled_mm.measured_kind(layer.weight.dtype, scheme.weights.strategy.value == "block")
    if scaled_mm.takes_gemv(3 * m, scaled_mm.w8a8_route(3 * m, n, k, kind)):  # W8A16: unquantized activations
        ref = x.double() @ layer.dequantize_weight(torch.float64).T + layer.bias.double()
    else:  # the float32 reference path, which emulates W8A8 exactly
        ref = layer.to("cpu")(x.cpu().float()).double()
    assert rel_err(y.cpu(), ref.cpu()) < 1e-2


def test_w8a8_layer_in_cuda_graph_and_compile(kernels):
    scheme = preset("fp8")
    w = torch.randn(2048, 1024, device="cuda")
    layer = QuantLinear.from_qtensor(quantize_weight(w, scheme.weights), scheme)
    for m in (4, 64):
        x = torch.randn(m, 1024, device="cuda", dtype=torch.bfloat16)
        want = layer(x)
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            layer(x)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            out = layer(x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want)
        assert torch.equal(torch.compile(layer, fullgraph=True)(x), want)


def test_w8a8_op_opcheck(kernels):
    x = torch.randn(20, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randint(-127, 128, (128, 256), device="cuda", dtype=torch.int8)  # opcheck multiplies inputs: no FP8
    ws = torch.rand(128, 1, device="cuda") / 10
    for m in (4, 20):
        torch.library.opcheck(torch.ops.qtool.w8a8_linear.default, (x[:m], w, ws, None, None, "int8", 0, 0, 0))
    torch.library.opcheck(torch.ops.qtool.quantize_activation.default, (x, "e4m3", 128, None))


def test_narrow_scales_first_met_under_capture(kernels):
    """A narrow-tile call captured before any eager call on these scales, then an eager call before the graph's
    first replay: the expanded scales a capture makes are recorded, not written, so the eager call must not find
    them cached (it read unwritten memory until session 57), and the graph must still be right when replayed."""
    if torch.cuda.get_device_capability() != (9, 0) or not block_mm.available():
        pytest.skip("libqtool_sm90_block runs on Hopper")
    g = torch.Generator(device="cuda").manual_seed(57)
    m, n, k = 64, 1000, 512
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = weight_codes("e4m3", n, k, g)
    ws = torch.rand(-(-n // 128), k // 128, device="cuda", generator=g) / 100 + 1e-3
    xq, xs = kernels.act_quant(x, "e4m3", 128, None)
    ref = reference.scaled_linear(xq.cpu(), xs.cpu(), w.cpu(), ws.cpu(), None, 128, 128, 128, torch.float64)
    config = block_mm.CONFIGS["block-narrow-overlap"]
    torch.cuda.synchronize()
    poison_cache()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_graph = block_mm.block_linear(xq, xs, w, ws, config)
    y_eager = block_mm.block_linear(xq, xs, w, ws, config)
    assert rel_err(y_eager.cpu(), ref) < 1e-2
    graph.replay()
    assert rel_err(y_graph.cpu(), ref) < 1e-2
