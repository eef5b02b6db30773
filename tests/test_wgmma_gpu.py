"""The wgmma W4A16 kernel (kernels/warpgroup_mm.py, csrc/sm90/wo_wgmma_sm90.cu) against float64 on fresh random
weights: symmetric and asymmetric, groups of 64 and 128, per channel, a ragged last group (K = 576 at g128), N not a
multiple of the 128-row CTA (nor of 64), every token tile with m from 1 to 128 (rows of the tile left empty), one, two or
four warpgroups, split-K from 1 to 8 (uneven chunk counts per split), and a bias.

Bound: relative Frobenius error <= 1e-2 against x . dequant(W)^T + bias in float64 (the bf16 weight after one
rounding and the bf16 output give ~3e-3), as the other weight-only GEMMs are held to.
"""

from __future__ import annotations

import pytest
import torch

from conftest import poison_cache, rel_err
from qtool_kernels import warpgroup_mm
from qtool_kernels.layout import PackedWeight, dequantize_packed, pack_weight

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def random_weight(n: int, k: int, group: int, symmetric: bool, seed: int) -> PackedWeight:
    g = torch.Generator(device="cuda").manual_seed(seed)
    groups = 1 if group <= 0 else -(-k // group)
    codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8, generator=g)
    scale = torch.rand(n, groups, device="cuda", generator=g) / 50 + 1e-3
    zero = None if symmetric else torch.randint(-8, 8, (n, groups), device="cuda", dtype=torch.int8, generator=g)
    return pack_weight(codes, scale, zero, None, 4, group)


def reference(x: torch.Tensor, p: PackedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    w = dequantize_packed(p.qweight, p.scale, p.zero, 4, p.group_size, p.out_features, torch.float64)
    y = x.double() @ w[:, :x.shape[1]].T
    return y if bias is None else y + bias.double()


SHAPES = [(4096, 4096, 128, True), (4096, 1000, 128, False), (576, 1536, 128, False), (1024, 776, 64, True),
          (2048, 512, -1, False)]


@pytest.mark.parametrize("k,n,group,symmetric", SHAPES)
@pytest.mark.parametrize("m", [1, 9, 16, 17, 32, 33, 64, 100, 128])
def test_plan_matches_float64(hopper, k, n, group, symmetric, m):
    p = random_weight(n, k, group, symmetric, seed=k + n + m)
    assert warpgroup_mm.takes(p, m, torch.bfloat16)
    x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
    x[:, k:] = 0  # the kernel layout's padding columns, as packed_linear pads them
    poison_cache()
    y = warpgroup_mm.wgmma_linear(x, p, None)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    assert rel_err(y, reference(x, p, None)) <= 1e-2


@pytest.mark.parametrize("warpgroups", [1, 2, 4])
@pytest.mark.parametrize("split", [1, 3, 8])
@pytest.mark.parametrize("tile,m", [(16, 5), (32, 32), (64, 40), (128, 128)])
def test_every_schedule_matches_float64(hopper, warpgroups, split, tile, m):
    if (tile, warpgroups) == (128, 4):
        pytest.skip("tile 128 takes one or two warpgroups")
    k, n = 1600, 1000  # 25 chunks: uneven over 3 and 8 splits; 1000 rows: partial 64- and 128-row tiles
    p = random_weight(n, k, 64, False, seed=split * 100 + tile + warpgroups)
    bias = torch.randn(n, device="cuda")
    x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
    y = warpgroup_mm.wgmma_linear(x, p, bias, warpgroup_mm.Plan(tile, warpgroups, split))
    assert rel_err(y, reference(x, p, bias)) <= 1e-2


@pytest.mark.parametrize("warpgroups", [1, 2])
@pytest.mark.parametrize("split", [1, 3])
@pytest.mark.parametrize("tile,m", [(16, 5), (32, 32), (64, 40)])
@pytest.mark.parametrize("group,symmetric", [(64, False), (128, True), (-1, True)])
def test_tall_tile_matches_float64(hopper, warpgroups, split, tile, m, group, symmetric):
    """128 rows a warpgroup (each warp its stripe and the one 64 rows below): N = 1000 leaves the last CTA's second
    stripes partly and wholly past the weight; K = 1600 splits unevenly."""
    k, n = 1600, 1000
    p = random_weight(n, k, group, symmetric, seed=split * 100 + tile + warpgroups + 7)
    bias = torch.randn(n, device="cuda")
    x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
    y = warpgroup_mm.wgmma_linear(x, p, bias, warpgroup_mm.Plan(tile, warpgroups, split, True))
    assert rel_err(y, reference(x, p, bias)) <= 1e-2


@pytest.mark.parametrize("warpgroups,tall,post", [(1, False, False), (2, False, False), (1, True, False),
                                                  (1, False, True), (2, False, True)])
@pytest.mark.parametrize("k,split", [(1664, 1), (1664, 3), (1664, 8), (256, 3), (1000, 3)])
@pytest.mark.parametrize("tile,m", [(16, 9), (32, 32)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_g128_schedules_match_float64(hopper, warpgroups, tall, post, k, split, tile, m, symmetric):
    """g128 on an even count of chunks, where the post-scale form scales the groups after the MMA (two sets of
    partial sums alternating group by group) and cuts K at whole groups: K = 1664 (13 groups: the last group's set
    is folded after the loop) splits unevenly over 3 and 8; K = 256 (2 groups) over 3 leaves the form's third CTA no
    chunk; K = 1000 (16 chunks, the last group short, k_pad 1024 zero-filled)."""
    n = 1000
    p = random_weight(n, k, 128, symmetric, seed=k + split * 100 + tile + warpgroups + tall + 2 * post)
    bias = torch.randn(n, device="cuda")
    x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
    y = warpgroup_mm.wgmma_linear(x, p, bias, warpgroup_mm.Plan(tile, warpgroups, split, tall, post))
    assert rel_err(y, reference(x, p, bias)) <= 1e-2


@pytest.mark.parametrize("group,k", [(-1, 1664), (64, 1600), (128, 1600), (256, 1792)])
@pytest.mark.parametrize("tile,m,warpgroups", [(16, 16, 1), (32, 20, 2)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_post_form_other_groups_match_float64(hopper, group, k, tile, m, warpgroups, symmetric):
    """The post-scale form on what its group loop does not take: per channel (the scales once after the loop), g64,
    g128 on an odd count of chunks (25) and g256 (the plain mainloop inside the form's kernel), split 3."""
    n = 1000
    p = random_weight(n, k, group, symmetric, seed=k + group + tile + 5 * symmetric)
    x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
    y = warpgroup_mm.wgmma_linear(x, p, None, warpgroup_mm.Plan(tile, warpgroups, 3, post=True))
    assert rel_err(y, reference(x, p, None)) <= 1e-2


def test_tall_tile_refuses_what_it_lacks(hopper):
    p = random_weight(512, 1024, 128, True, seed=3)
    x = torch.randn(100, p.k_padded, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="tall tile"):
        warpgroup_mm.wgmma_linear(x, p, None, warpgroup_mm.Plan(128, 1, 1, True))
    for plan in (warpgroup_mm.Plan(128, 1, 1, post=True), warpgroup_mm.Plan(32, 4, 1, post=True),
                 warpgroup_mm.Plan(32, 1, 1, True, True)):
        with pytest.raises(RuntimeError, match="post-scale form"):
            warpgroup_mm.wgmma_linear(x[:32] if plan.tile == 32 else x, p, None, plan)


@pytest.mark.parametrize("stages", [2, 3, 8, 16])
@pytest.mark.parametrize("tile,m,warpgroups", [(16, 16, 4), (64, 50, 1), (128, 128, 2)])
def test_every_stage_count_matches_float64(hopper, monkeypatch, stages, tile, m, warpgroups):
    """The activation ring's stage count (the ring wraps many times, odd counts) leaves the product unchanged; a
    count past shared memory is refused by name."""
    k, n = 2880, 520  # 45 chunks over 2 splits
    p = random_weight(n, k, 128, False, seed=stages * 10 + tile)
    x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
    monkeypatch.setattr(warpgroup_mm, "STAGES", stages)
    if stages * tile * 128 > 200 * 1024:
        with pytest.raises(RuntimeError, match="shared memory"):
            warpgroup_mm.wgmma_linear(x, p, None, warpgroup_mm.Plan(tile, warpgroups, 2))
        return
    y = warpgroup_mm.wgmma_linear(x, p, None, warpgroup_mm.Plan(tile, warpgroups, 2))
    assert rel_err(y, reference(x, p, None)) <= 1e-2


def test_device_plan_fits_one_wave(hopper):
    """The occupancy API's cluster counts: positive, fewer for larger clusters, and the plan's grid within them."""
    for tile in warpgroup_mm.TILES:
        counts = [warpgroup_mm.max_clusters(0, tile, 1, split) for split in (1, 2, 4, 8)]
        assert all(c > 0 for c in counts) and counts == sorted(counts, reverse=True), counts
    for m, n_pad, k_pad in ((16, 4096, 4096), (64, 8192, 8192), (128, 14336, 4096), (32, 4096, 14336)):
        plan = warpgroup_mm.device_plan(m, n_pad, k_pad, 0)
        assert -(-n_pad // (64 * plan.warpgroups)) <= warpgroup_mm.max_clusters(
            0, plan.tile, plan.warpgroups, plan.split), plan


def test_compiled_call_plans_inside_the_op(hopper):
    """Under torch.compile the schedule is chosen inside the custom op (tile 0), not while tracing."""
    p = random_weight(1024, 2048, 128, True, seed=7)
    x = torch.randn(24, p.k_padded, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(lambda t: warpgroup_mm.wgmma_linear(t, p, None), fullgraph=True)
    assert rel_err(compiled(x), reference(x, p, None)) <= 1e-2
