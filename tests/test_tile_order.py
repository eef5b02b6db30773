"""The Hopper GEMM libraries under each tile order (kernels/sm90.py `set_tile_order`: the swizzle and raster of
their persistent schedulers, csrc/sm90/sm90_common.cuh) and the 2 x 2-cluster configurations.

An order only changes which CTA computes which output tile and when, never a tile's arithmetic (split-K's partial
sums still meet in split order), so every order's output must be bit-identical to the default order's; and, like the
libraries' own tests, within 1e-2 relative (Frobenius) of float64. Stream-K is the exception: it divides the k work
of the padded tile grid among the CTAs, so an order moves its split points (session 43 saw other last bits under a
swizzle of 2); there each order must only repeat its own bits. The shapes leave partial swizzle groups (9 x 24
tiles of 128: the grid is padded to whole groups, and the stream-K workspace with it). On CPU only the argument
checks run.
"""

from __future__ import annotations

import pytest
import torch

from conftest import w8a8_problem
from qtool_kernels import sm90

ORDERS = [(2, "heuristic"), (8, "heuristic"), (8, "m"), (4, "n"), (1, "n")]
gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                         reason="the CUTLASS GEMMs are for Hopper (sm_90)")


def test_set_tile_order_names_bad_values():
    with pytest.raises(ValueError, match="swizzle=3"):
        sm90.set_tile_order(3)
    with pytest.raises(ValueError, match="raster='k'"):
        sm90.set_tile_order(8, "k")


@pytest.fixture
def default_order_after():
    yield
    sm90.set_tile_order()


def within_bound(y: torch.Tensor, ref: torch.Tensor) -> None:
    err = float((y.double().cpu() - ref).norm() / ref.norm())
    assert torch.isfinite(y).all() and err <= 1e-2, err


def same_bits_in_every_order(run, ref: torch.Tensor, stream_k: bool = False) -> None:
    """run() under the default order and each of ORDERS: within 1e-2 of ref (float64), bit-identical to the first
    (stream_k: to its own second run); a CUDA graph captured under one order replays that order's bits after the
    order changed."""
    sm90.set_tile_order()
    first = run().clone()
    within_bound(first, ref)
    for order in ORDERS:
        sm90.set_tile_order(*order)
        y = run().clone()
        if stream_k:
            within_bound(y, ref)
            assert torch.equal(run(), y), order
        else:
            assert torch.equal(y, first), order
    captured_under = y  # the last order's eager bits: stream-K's own under that order
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = run()
    sm90.set_tile_order()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, captured_under if stream_k else first)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("config", ["large", "pingpong", "large-2x2", "pingpong-2x2", "split", "skinny"])
@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_w8a8_gemm_in_every_order(kernels, default_order_after, config, fmt):
    from qtool_kernels import scaled_mm

    assert sm90.load(), sm90.reason()
    g = torch.Generator(device="cuda").manual_seed(len(config) + len(fmt))
    xq, xs, w, ws, bias, ref = w8a8_problem(kernels.act_quant, fmt, 1100, 3000, 2048, g, bias=True)
    same_bits_in_every_order(lambda: torch.ops.qtool_cuda.sm90_scaled_mm(
        xq, w, xs, ws, bias, torch.bfloat16, scaled_mm.SM90_CONFIGS[config]), ref)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("config,split", [("block-large", 0), ("block-large-2x2", 0), ("block-large-overlap", 0),
                                          ("block-large-2x2-overlap", 0), ("block-split", 3),
                                          ("block-split", -1), ("block-swap", 4), ("block-skinny", 0)])
def test_block_gemm_in_every_order(kernels, default_order_after, config, split):
    from qtool_kernels import block_mm, reference

    assert block_mm.available(), "libqtool_sm90_block did not build or load"
    g = torch.Generator(device="cuda").manual_seed(len(config) + split)
    m, n, k = 1100, 3000, 2048
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = (torch.randn(n, k, device="cuda", generator=g) * 40).to(torch.float8_e4m3fn)
    ws = torch.rand(-(-n // 128), k // 128, device="cuda", generator=g) / 100 + 1e-3
    xq, xs = kernels.act_quant(x, "e4m3", 128, None)
    ref = reference.scaled_linear(xq.cpu(), xs.cpu(), w.cpu(), ws.cpu(), None, 128, 128, 128, torch.float64)
    same_bits_in_every_order(lambda: block_mm.block_linear(xq, xs, w, ws, block_mm.CONFIGS[config], split), ref,
                             stream_k=split < 0)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("split,ktile,variant", [(0, 64, 0), (3, 64, 0), (-1, 64, 0), (0, 64, 2)])
@pytest.mark.parametrize("bits", [4, 8])
def test_mixed_gemm_in_every_order(kernels, default_order_after, split, ktile, variant, bits):
    from qtool_kernels import mixed_mm
    from qtool_kernels.layout import dequantize_packed, pack_weight, unpack_codes

    assert mixed_mm.available(bits), f"the {bits}-bit library did not build or load"
    g = torch.Generator(device="cuda").manual_seed(split + ktile + variant + bits)
    m, n, k, group = 1100, 3000, 2048, 128
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    codes = torch.randint(lo, hi, (n, k), device="cuda", dtype=torch.int8, generator=g)
    scale = torch.rand(n, k // group, device="cuda", generator=g) / 50 + 1e-3
    p = pack_weight(codes, scale, None, None, bits, group)
    p.mixed = mixed_mm.pack_mixed(unpack_codes(p.qweight, bits), p.scale, p.zero, p.group_size, bits)
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    ref = x.double().cpu() @ dequantize_packed(p.qweight, p.scale, p.zero, bits, group, n, torch.float64).cpu()[:, :k].T
    same_bits_in_every_order(
        lambda: mixed_mm.mixed_linear(x, p.mixed, split=split, ktile=ktile, variant=variant)[:, :n], ref,
        stream_k=split < 0)


def test_order_configs_are_tiles_plus_order_bits():
    from qtool_kernels import block_mm, scaled_mm

    for name in scaled_mm.ORDERED_TILES:
        for order, bits in sm90.ORDERS.items():
            assert scaled_mm.SM90_CONFIGS[f"{name}-{order}"] == scaled_mm.SM90_TILES[name] + bits
    for name in block_mm.ORDERED_TILES:
        assert block_mm.CONFIGS[f"{name}-s8"] & ~sm90.ORDER_BITS == block_mm.CONFIGS[name]
        assert not block_mm.narrow(block_mm.CONFIGS[f"{name}-n8"])


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("order", ["s8", "n8"])
def test_order_in_the_configuration(kernels, default_order_after, order):
    """A configuration's order bits (sm90.ORDERS) set that call's order whatever the process's: the same bits as
    the tile without them (each order only moves which CTA computes which tile), within 1e-2 of float64."""
    from qtool_kernels import block_mm, reference, scaled_mm

    assert sm90.load(), sm90.reason()
    assert block_mm.available(), "libqtool_sm90_block did not build or load"
    g = torch.Generator(device="cuda").manual_seed(len(order))
    m, n, k = 2100, 3000, 2048
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = (torch.randn(n, k, device="cuda", generator=g) * 40).to(torch.float8_e4m3fn)
    ws = torch.rand(n, device="cuda", generator=g) / 100 + 1e-3
    xq, xs = kernels.act_quant(x, "e4m3", 0, None)
    xs = xs.reshape(-1).contiguous()
    ref = reference.scaled_linear(xq.cpu(), xs.cpu().view(-1, 1), w.cpu(), ws.cpu().view(-1, 1), None, 0, 0, 0,
                                  torch.float64)
    for name in scaled_mm.ORDERED_TILES:
        def run(c):
            return torch.ops.qtool_cuda.sm90_scaled_mm(xq, w, xs, ws, None, torch.bfloat16, c)
        want = run(scaled_mm.SM90_CONFIGS[name])
        within_bound(want, ref)
        sm90.set_tile_order(2, "m")  # the process's order: the configuration's bits win
        assert torch.equal(run(scaled_mm.SM90_CONFIGS[f"{name}-{order}"]), want), name
        sm90.set_tile_order()
    bws = torch.rand(-(-n // 128), k // 128, device="cuda", generator=g) / 100 + 1e-3
    bq, bs = kernels.act_quant(x, "e4m3", 128, None)
    bref = reference.scaled_linear(bq.cpu(), bs.cpu(), w.cpu(), bws.cpu(), None, 128, 128, 128, torch.float64)
    for name in block_mm.ORDERED_TILES:
        want = block_mm.block_linear(bq, bs, w, bws, block_mm.CONFIGS[name], 3 if "split" in name else 0)
        within_bound(want, bref)
        got = block_mm.block_linear(bq, bs, w, bws, block_mm.CONFIGS[f"{name}-{order}"], 3 if "split" in name else 0)
        assert torch.equal(got, want), name


def test_order_dropped_where_the_swizzle_would_pad_the_grid():
    """A route's order bits stay only where rounding the tile grid up to swizzle x cluster tiles adds at most 1/16:
    the measured batches (2048, 4096, 8192 tokens) on the routed shapes keep them, 1025-2047 tokens (9-15 tiles of 128
    rows, rounded to 16) and a 1536-wide layer do not; configurations without order bits pass unchanged."""
    from qtool_kernels import block_mm, scaled_mm

    ordered = scaled_mm.SM90_CONFIGS["pingpong-n8"]
    for m in (2048, 4096, 6144, 8192):
        for n in (4096, 6144, 14336, 28672):
            assert sm90.without_padded_order(ordered, m, n) == ordered
    for m, n in [(1100, 4096), (1900, 8192), (5000, 4096), (8192, 1536)]:
        assert sm90.without_padded_order(ordered, m, n) == scaled_mm.SM90_CONFIGS["pingpong"]
    block = block_mm.CONFIGS["block-large-overlap-s8"]
    assert sm90.without_padded_order(block, 1500, 4096) == block_mm.CONFIGS["block-large-overlap"]
    assert sm90.without_padded_order(scaled_mm.SM90_CONFIGS["large"], 1100, 4096) == scaled_mm.SM90_CONFIGS["large"]
