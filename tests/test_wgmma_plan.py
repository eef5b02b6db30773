"""The wgmma W4A16 kernel's schedule (kernels/warpgroup_mm.py) and what it takes, without a GPU."""

from __future__ import annotations

import pytest
import torch

from qtool_kernels import int8_planes, layout, tuning, warpgroup_mm, weight_only
from qtool_kernels.layout import pack_weight


def one_wave(plan, n_pad, capacity):
    return -(-n_pad // (64 * plan.warpgroups)) <= capacity(plan.tile, plan.warpgroups, plan.split)


def test_plan_fills_the_sms_in_one_wave():
    plan = warpgroup_mm.plan(64, 4096, 4096, 132)  # one CTA an SM: 16 row tiles of 4 warpgroups x 8 splits
    assert plan == warpgroup_mm.Plan(64, 4, 8)
    assert warpgroup_mm.plan(17, 28672, 8192, 132) == warpgroup_mm.Plan(32, 4, 1)  # 112 row tiles: no split
    assert warpgroup_mm.plan(128, 1024, 256, 132).split == 1  # 4 chunks: no split below 8 chunks each
    assert warpgroup_mm.plan(128, 1024, 8192, 132).warpgroups <= 2  # tile 128 takes one or two


def test_plan_keeps_clusters_within_what_the_gpu_holds():
    """Session 66: 32 clusters of 4 where the GPCs hold 30 ran as two waves; the plan must not choose it."""
    def capacity(tile, wg, split):  # two CTAs an SM below four warpgroups, clusters lost to GPC edges
        per_sm = 2 if wg < 4 else 1
        return {1: 132, 2: 66, 3: 42, 4: 30, 5: 24, 6: 20, 7: 16, 8: 14}[split] * per_sm

    for m, n_pad, k_pad in ((16, 4096, 4096), (64, 8192, 8192), (128, 14336, 4096), (32, 4096, 14336)):
        plan = warpgroup_mm.plan(m, n_pad, k_pad, 132, capacity)
        assert one_wave(plan, n_pad, capacity), plan
        assert k_pad // 64 // plan.split >= warpgroup_mm.MIN_SPLIT_CHUNKS or plan.split == 1
        assert plan.tile == next(t for t in warpgroup_mm.TILES if t >= m)
    none_fit = warpgroup_mm.plan(16, 65536, 4096, 132, lambda t, wg, s: 8)
    assert none_fit == warpgroup_mm.Plan(16, 4, 1)  # more row tiles than any wave: the fewest CTAs


def test_parse_plan_names_the_bad_value():
    assert warpgroup_mm.parse_plan("64,1,8") == warpgroup_mm.Plan(64, 1, 8)
    assert warpgroup_mm.parse_plan(" ") is None
    for bad in ("48,2,1", "64,3,1", "64,2,9", "64,2", "128,4,1"):
        with pytest.raises(ValueError, match="QTOOL_WGMMA_PLAN"):
            warpgroup_mm.parse_plan(bad)


def test_parse_tokens_names_the_bad_value():
    assert warpgroup_mm.parse_tokens("17, 128") == (17, 128)
    assert warpgroup_mm.parse_tokens("0,0") == (0, 0)
    for bad in ("17", "a,b", "64,32", "1,256"):
        with pytest.raises(ValueError, match="QTOOL_WGMMA_TOKENS"):
            warpgroup_mm.parse_tokens(bad)


@pytest.mark.parametrize("bits,group,m,dtype,ok", [(4, 128, 64, torch.bfloat16, True), (4, -1, 1, torch.bfloat16, True),
                                                   (4, 32, 64, torch.bfloat16, False), (8, 128, 64, torch.bfloat16, False),
                                                   (4, 128, 129, torch.bfloat16, False), (4, 128, 64, torch.float16, False)])
def test_takes(bits, group, m, dtype, ok):
    codes = torch.randint(-8, 8, (64, 256), dtype=torch.int8)
    p = pack_weight(codes, torch.rand(64, 1 if group < 0 else 256 // group), None, None, bits, group)
    assert warpgroup_mm.takes(p, m, dtype) is ok


def kernel_dequant(p) -> torch.Tensor:
    """The kernel's conversion (csrc/sm90/wo_wgmma_sm90.cu, dequant) emulated: register p of lane l, word j of a
    chunk holds nibbles p (element 0) and p + 4 (element 1) of row l // 4 + 8 (p % 2) at k = 16 j + 2 (l % 4) +
    8 (p // 2) + h; 0x4300 | u is the bf16 128 + u, minus 136 + z exactly, times the bf16 scale rounded once."""
    stripes, chunks = p.qweight.shape[:2]
    words = p.qweight.to(torch.int64) & 0xFFFFFFFF  # [stripes, chunks, 32 lanes, 4 words]
    out = torch.zeros(stripes * 16, chunks * 64, dtype=torch.bfloat16)
    lane = torch.arange(32).view(1, 1, 32, 1)
    j = torch.arange(4).view(1, 1, 1, 4)
    stripe = torch.arange(stripes).view(-1, 1, 1, 1)
    chunk = torch.arange(chunks).view(1, -1, 1, 1)
    group = torch.arange(chunks * 64) // (p.group_size if p.group_size > 0 else chunks * 64)
    for reg in range(4):
        for h in range(2):
            u = (words >> (4 * reg + 16 * h)) & 0xF
            row = (stripe * 16 + lane // 4 + 8 * (reg % 2)).expand_as(u)
            k = (chunk * 64 + 16 * j + 2 * (lane % 4) + 8 * (reg // 2) + h).expand_as(u)
            scale = p.scale[group[k], row].to(torch.bfloat16)
            zero = torch.zeros(()) if p.zero is None else p.zero[group[k], row]
            t = (128 + u).to(torch.bfloat16) - (136 + zero).to(torch.bfloat16)  # exact small integers
            out[row, k] = t * scale
    return out


@pytest.mark.parametrize("group,symmetric", [(128, True), (64, False), (-1, False)])
def test_kernel_conversion_matches_the_layout(group, symmetric):
    """The kernel reads the GEMVs' int4 layout as wgmma's register A: its extraction gives every code where
    `dequantize_packed` has it, within the bf16 roundings of the scale and of the product (2^-8 relative, bounded
    by 2^-7 here); a code read from the wrong place is off by a quantization step."""
    from qtool_kernels.layout import dequantize_packed

    n, k = 48, 576  # a ragged last group at g128
    groups = 1 if group < 0 else -(-k // group)
    codes = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    zero = None if symmetric else torch.randint(-8, 8, (n, groups), dtype=torch.int8)
    p = pack_weight(codes, torch.rand(n, groups) / 50 + 1e-3, zero, None, 4, group)
    ref = dequantize_packed(p.qweight, p.scale, p.zero, 4, p.group_size, n)
    got = kernel_dequant(p)[:n].float()
    assert torch.allclose(got, ref, rtol=2**-7, atol=0)


def test_route_takes_it_where_switched_on(monkeypatch):
    """The dispatcher's order: the GEMVs and the split variant first, then the wgmma kernel in its token range, then
    the Hopper copy's routes."""
    from qtool_kernels import weight_only

    p = pack_weight(torch.randint(-8, 8, (2048, 2048), dtype=torch.int8), torch.rand(2048, 16), None, None, 4, 128)
    monkeypatch.setattr(warpgroup_mm, "available", lambda: True)
    monkeypatch.setattr(weight_only, "WGMMA_TOKENS", (0, 0))
    assert weight_only.route(p, 64, torch.bfloat16) != "wo_wgmma"
    monkeypatch.setattr(weight_only, "WGMMA_TOKENS", (17, 128))
    assert weight_only.route(p, 64, torch.bfloat16) == "wo_wgmma"
    assert weight_only.route(p, 129, torch.bfloat16) != "wo_wgmma"
    assert weight_only.route(p, 64, torch.float16) != "wo_wgmma"
    assert weight_only.route(p, 1, torch.bfloat16) != "wo_wgmma"


def test_measured_wgmma_routes(monkeypatch):
    """A tuning cell naming the wgmma kernel ("wgmma", "wgmma w1 s6") runs it with that schedule where it runs (a
    Hopper GPU, 4-bit codes in the kernel layout, groups of 64k), else the plain Hopper schedule; malformed routes
    are refused by name."""
    from qtool_kernels import mixed_mm

    assert tuning.parse("wgmma w1 s6") == "wgmma w1 s6" and tuning.parse("wgmma") == "wgmma"
    assert warpgroup_mm.route_plan("wgmma", 20, 4096) is None
    assert warpgroup_mm.route_plan("wgmma w1 s6", 20, 4096) == warpgroup_mm.Plan(32, 1, 6)
    assert warpgroup_mm.route_plan("wgmma w2 s8", 128, 256) == warpgroup_mm.Plan(128, 2, 4)  # 4 chunks: 4 splits
    assert warpgroup_mm.route_plan("wgmma w2 s4 tall", 20, 4096) == warpgroup_mm.Plan(32, 2, 4, True)
    assert warpgroup_mm.route_plan("wgmma w1 s3 post", 9, 4096) == warpgroup_mm.Plan(16, 1, 3, post=True)
    assert tuning.parse("wgmma w2 s2 post") == "wgmma w2 s2 post"
    for bad in ("wgmma w4 s2", "wgmma w3 s2", "wgmma w1 s9", "wgmma w1", "wgmma w1 s2 tal", "wgmma w1 s2 tall",
                "wgmma w4 s2 tall", "wgmma w1 s2 post", "wgmma w4 s2 post", "wgmma w1 s2 tall post"):
        with pytest.raises(ValueError, match="wgmma"):
            warpgroup_mm.route_plan(bad, 100, 4096)

    calls = []
    monkeypatch.setattr(weight_only, "mixed_linear", lambda x2, mixed, **kw: calls.append(("mixed", kw)) or
                        torch.zeros(x2.shape[0], mixed.w.shape[0], dtype=x2.dtype))
    monkeypatch.setattr(warpgroup_mm, "wgmma_linear", lambda x2, w, bias, plan: calls.append(("wgmma", plan)) or
                        torch.zeros(x2.shape[0], w.out_features, dtype=x2.dtype))
    monkeypatch.setattr(int8_planes, "GEMV_PLANES", False)
    monkeypatch.setattr(tuning, "MIXED", {(4, 4096, 4096): {8: "wo_gemm", 32: "wgmma w1 s6", 64: "wgmma"}})
    tuning.clear_cache()
    k = n = 4096
    codes = torch.zeros(n, k, dtype=torch.int8)
    w = pack_weight(codes, torch.ones(n, k // 128), None, None, 4, 128)
    w.mixed = mixed_mm.MixedWeight(torch.zeros(n, 1, dtype=torch.uint8), torch.ones(1, n), torch.zeros(1, n), 128)
    try:
        for runs in (True, False):
            monkeypatch.setattr(warpgroup_mm, "available", lambda runs=runs: runs)
            calls.clear()
            weight_only.packed_linear(torch.zeros(20, k, dtype=torch.bfloat16), w, None, layout.ReferenceOps)
            weight_only.packed_linear(torch.zeros(40, k, dtype=torch.bfloat16), w, None, layout.ReferenceOps)
            if runs:
                assert calls == [("wgmma", warpgroup_mm.Plan(32, 1, 6)), ("wgmma", None)]
            else:
                assert [c[0] for c in calls] == ["mixed", "mixed"] and calls[0][1]["token_tile"] == 0
    finally:
        tuning.clear_cache()


def test_a_measured_wgmma_cell_displaces_the_split_gemv(monkeypatch):
    """Where the split GEMV would run (int8_planes.takes_split: 9-16 tokens), a cell naming the wgmma kernel runs
    the kernel instead (session 70: the tall tile led the split GEMV on 4096 x 4096 at 16 tokens); a cell naming
    another route, or a GPU the kernel cannot run on, leaves the split GEMV; a weight with zero points takes the
    kernel's plan where a cell names the tall tile; a form met past its tokens gives way to its plain schedule."""
    from qtool_kernels import mixed_mm

    k = n = 4096
    w = pack_weight(torch.zeros(n, k, dtype=torch.int8), torch.ones(n, k // 128), None, None, 4, 128)
    w.mixed = mixed_mm.MixedWeight(torch.zeros(n, 1, dtype=torch.uint8), torch.ones(1, n), torch.zeros(1, n), 128)
    monkeypatch.setattr(int8_planes, "_has_clusters", lambda t: True)
    monkeypatch.setattr(int8_planes, "SPLIT_MAX_M", None)
    monkeypatch.setattr(int8_planes, "GEMV_PLANES", False)
    monkeypatch.setattr(warpgroup_mm, "available", lambda: True)
    monkeypatch.setattr(tuning, "_card", ["H200"])  # the table below alone, no card's cells over it
    try:
        for cell, expect in (("wgmma w1 s8 tall", "wgmma w1 s8 tall"), ("wo_gemm", "wo_split")):
            monkeypatch.setattr(tuning, "MIXED", {(4, k, n): {8: "wo_gemm", 16: cell, 32: "wgmma w2 s7"}})
            tuning.clear_cache()
            assert [weight_only.route(w, m, torch.bfloat16) for m in (9, 12, 16)] == [expect] * 3, cell
            assert weight_only.route(w, 17, torch.bfloat16) == "wgmma w2 s7"  # past the split GEMV: the table
        monkeypatch.setattr(tuning, "MIXED", {(4, k, n): {16: "wgmma w1 s8 tall", 32: "wgmma w2 s4 tall"}})
        tuning.clear_cache()
        # zero points: the tall tile's cells give way to the kernel's plan (warpgroup_mm.for_weight)
        asym = pack_weight(torch.zeros(n, k, dtype=torch.int8), torch.ones(n, k // 128),
                           torch.zeros(n, k // 128, dtype=torch.int8), None, 4, 128)
        asym.mixed = w.mixed
        assert weight_only.route(asym, 16, torch.bfloat16) == weight_only.route(asym, 32, torch.bfloat16) == "wgmma"
        assert weight_only.route(w, 32, torch.bfloat16) == "wgmma w2 s4 tall"
        # past the row's last batch the last cell serves: a form whose kernel lacks the tile gives way to its plain one
        assert weight_only.route(w, 100, torch.bfloat16) == "wgmma w2 s4"
        monkeypatch.setattr(tuning, "MIXED", {(4, k, n): {16: "wgmma w1 s3 post", 32: "wgmma w2 s2 post"}})
        tuning.clear_cache()
        assert weight_only.route(asym, 16, torch.bfloat16) == "wgmma w1 s3 post"  # zero points: the form's cells hold
        assert weight_only.route(w, 40, torch.bfloat16) == "wgmma w2 s2"
        monkeypatch.setattr(warpgroup_mm, "available", lambda: False)
        assert weight_only.route(w, 16, torch.bfloat16) == "wo_split"
    finally:
        tuning.clear_cache()


def test_for_weight_fits_the_route_to_the_weight_and_batch():
    """warpgroup_mm.for_weight: every route it returns is one route_plan accepts for that batch."""
    cases = [("wgmma w1 s3 post", False, 16, "wgmma w1 s3 post"), ("wgmma w1 s3 post", True, 32, "wgmma w1 s3 post"),
             ("wgmma w1 s3 post", False, 40, "wgmma w1 s3"), ("wgmma w2 s4 tall", False, 64, "wgmma w2 s4 tall"),
             ("wgmma w1 s8 tall", False, 100, "wgmma w1 s8"), ("wgmma w1 s8 tall", True, 16, "wgmma"),
             ("wgmma w4 s2", False, 100, "wgmma"), ("wgmma w4 s2", False, 64, "wgmma w4 s2"), ("wgmma", True, 9, "wgmma")]
    for route, asym, m, expect in cases:
        got = warpgroup_mm.for_weight(route, asym, m)
        assert got == expect, (route, asym, m)
        warpgroup_mm.route_plan(got, m, 4096)  # raises where it would not run
