"""CPU tests of the Hopper dispatch: the mixed-input schedules' rules, the measured routes of kernels/tuning.py
(weight-only and W8A8) and their fallbacks, the FP8 block GEMM's operand checks, and QTOOL_HOPPER_COPY. The
kernels are stand-ins here; tests/test_mixed_gpu.py and tests/test_w8a8_gpu.py run the real ones."""

from __future__ import annotations

import pytest
import torch

from qtool_kernels import int8_planes, layout, scaled_mm, tuning, weight_only
from qtool_kernels.layout import pack_weight


@pytest.fixture(autouse=True)
def h200_tables(monkeypatch):
    """These tests replace and read the H200's tables: no card's cells over them, on whatever card runs them."""
    monkeypatch.setattr(tuning, "_card", ["H200"])
    tuning.clear_cache()
    yield
    tuning.clear_cache()


def test_mixed_ktile_rules():
    """128-k stages only where built (<= 128 tokens, cooperative) and where scales change at tile edges."""
    from qtool_kernels import mixed_mm

    assert mixed_mm.takes_ktile(64, 4096, 64, 4096)
    assert mixed_mm.takes_ktile(128, 128, 128, 4096) and mixed_mm.takes_ktile(128, 16, 576, 576)
    assert not mixed_mm.takes_ktile(128, 129, 128, 4096)
    assert not mixed_mm.takes_ktile(128, 16, 64, 4096)
    assert not mixed_mm.takes_ktile(128, 16, 128, 4096, pingpong=1)
    w = mixed_mm.MixedWeight(torch.zeros(8, 64, dtype=torch.uint8), torch.ones(2, 8), torch.zeros(2, 8), 64)
    with pytest.raises(ValueError, match="ktile=128"):
        mixed_mm.mixed_linear(torch.zeros(4, 128), w, ktile=128)
    with pytest.raises(ValueError, match="token tile 256"):  # a token tile past the 128-k tiles
        mixed_mm.check_schedule(16, 128, 4096, 0, 128, 0, 256)
    mixed_mm.check_schedule(300, 128, 4096, 0, 128, 0, 64)  # 64-token tiles of 128 k serve any batch


class Recorder:
    """Stands in for torch.ops.qtool_cuda: records each call as (op,) or, for wo_gemv, (op, launch variant), and
    returns zeros of the op's output shape. The ring GEMV's variants (0-2) and the split one (7) must come with the
    static-weight flag (programmatic dependent launch for prepared layers), variant 3 without it."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def run(x, *args):
            if name == "wo_gemv":
                variant = args[-1]
                pdl = variant >= weight_only.PDL_STATIC_WEIGHT
                assert pdl == (variant % weight_only.PDL_STATIC_WEIGHT in (0, 1, 2, int8_planes.SPLIT_VARIANT)), variant
                self.calls.append((name, variant % weight_only.PDL_STATIC_WEIGHT))
            else:
                self.calls.append((name,))
            if name == "x_planes":
                return torch.zeros(2 * x.shape[0], x.shape[1], dtype=torch.int8), torch.ones(x.shape[0])
            if name == "wo_planes_gemv":  # (planes, xscale, qweight, scale, zero, bias, group, n, dtype, variant, bits)
                gated = args[8] >= int8_planes.GATED_FLAG  # silu(gate) * up of interleaved rows: half the width
                assert args[8] % int8_planes.GATED_FLAG >= weight_only.PDL_STATIC_WEIGHT, args[8]
                self.calls[-1] += (args[8] % weight_only.PDL_STATIC_WEIGHT,) + (("gated",) if gated else ())
                return torch.zeros(x.shape[0] // 2, args[6] // (2 if gated else 1), dtype=args[7])
            if name == "dequant_int":  # (qweight, scale, zero, bits, group, n, dtype): dense [n, K_pad]
                return torch.zeros(args[4], x.shape[1] * layout.chunk_k(args[2]), dtype=args[5])
            return torch.zeros(x.shape[0], args[6], dtype=x.dtype)
        return run


def test_packed_linear_runs_the_planes_pair():
    """At 2-4 tokens a 4-bit weight (zero points or none) runs x_planes then wo_planes_gemv with its stripes
    (int8_planes.planes_route) and PDL; a 4-bit one with groups of 32 the GEMVs as before."""
    recorder = Recorder()
    planes = [("x_planes",), ("wo_planes_gemv", 1)]
    for symmetric, group, want in ((True, -1, planes), (False, 64, planes), (True, 32, [("wo_gemv", 1)])):
        codes = torch.zeros(16, 64, dtype=torch.int8)
        groups = 1 if group < 0 else 64 // group
        w = pack_weight(codes, torch.ones(16, groups), None if symmetric else torch.zeros(16, groups, dtype=torch.int8),
                        None, 4, group)
        w = layout.PackedWeight(w.qweight.new_zeros(14336 // 16, 4096 // 64, 32, 4), w.scale, w.zero, None, 4, group,
                                4096, 14336)
        recorder.calls.clear()
        y = weight_only.packed_linear(torch.zeros(2, 4096, dtype=torch.bfloat16), w, None, recorder)
        assert recorder.calls == want and y.shape == (2, 14336) and y.dtype == torch.bfloat16


def test_fused_planes_under_compile(monkeypatch):
    """QTOOL_FUSED_PLANES (int8_planes.FUSED_PLANES): under torch.compile a layer whose input Inductor makes
    (planes_fuse) takes the planes at 1-2 tokens on any shape, from PyTorch ops (no x_planes kernel), which give the
    kernel's planes within a code; without the switch, the flag or compilation, the measured rule as before."""
    recorder = Recorder()
    codes = torch.zeros(16, 64, dtype=torch.int8)
    w = pack_weight(codes, torch.ones(16, 1), None, None, 4, -1)
    w = layout.PackedWeight(w.qweight.new_zeros(4096 // 16, 4096 // 64, 32, 4), w.scale, None, None, 4, -1, 4096, 4096)

    def calls(m, fuse, compiling, switch):
        monkeypatch.setattr(int8_planes, "FUSED_PLANES", switch)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
        recorder.calls.clear()
        weight_only.packed_linear(torch.randn(m, 4096, dtype=torch.bfloat16), w, None, recorder, None, fuse)
        return recorder.calls

    assert calls(1, True, True, True) == [("wo_planes_gemv", 0)] == calls(2, True, True, True)
    assert calls(3, True, False, True) == [("x_planes",), ("wo_planes_gemv", 0)]
    for args in ((1, False, True, True), (1, True, False, True), (1, True, True, False)):
        assert calls(*args) == [("wo_gemv", 2)], args


def test_low_bit_planes_only_where_switched_on(monkeypatch):
    """QTOOL_LOWBIT_PLANES (int8_planes.LOWBIT_PLANES, on): symmetric 2- and 3-bit weights with groups >= 64 or per
    channel run x_planes + wo_planes_gemv with their width by the 4-bit rule (3-4 tokens on every shape, 2 where
    N > 4096, one past 8192 x 8192); switched off, or outside that, the GEMVs."""
    recorder = Recorder()

    def calls(bits, group, m, symmetric=True):
        codes = torch.zeros(16, 256, dtype=torch.int8)
        groups = 1 if group < 0 else 256 // group
        w = pack_weight(codes, torch.ones(16, groups), None if symmetric else torch.zeros(16, groups, dtype=torch.int8),
                        None, bits, group)
        recorder.calls.clear()
        weight_only.packed_linear(torch.zeros(m, 256, dtype=torch.bfloat16), w, None, recorder)
        return recorder.calls

    for bits, group, m in ((2, 64, 3), (3, 128, 4), (3, -1, 3)):
        assert calls(bits, group, m) == [("x_planes",), ("wo_planes_gemv", 0)], (bits, group, m)
    assert calls(2, 64, 1)[0][0] == "wo_gemv" and calls(3, 128, 2)[0][0] == "wo_gemv"  # a small weight: the ring
    assert calls(2, 32, 3)[0][0] == "wo_gemv" and calls(3, 128, 5)[0][0] == "wo_gemv"
    assert calls(3, 128, 3, symmetric=False)[0][0] == "wo_gemv"
    monkeypatch.setattr(int8_planes, "LOWBIT_PLANES", False)
    assert calls(3, 128, 4)[0][0] == "wo_gemv"


def test_split_variant_by_the_measured_rule_or_the_switch(monkeypatch):
    """wo_gemv's variant 7 (int8_planes.takes_split) where the device has clusters: by default symmetric 4-bit weights
    (groups >= 64 or per channel) of 2048 x 2048 ... 4096 x 4096, 4096 x 6144, 14336 x 4096 and 2048 x 16384 at 9-16
    tokens, 4096 x 14336 at 9-12, the cells sessions 58, 60 and 63 measured it faster on; with QTOOL_SPLIT_GEMV=N
    (SPLIT_MAX_M) every shape at SPLIT_MIN_M..N tokens, zero points to 16; 0: nowhere. 3-bit codes, groups of 32, fp32 activations, 8 tokens (the
    planes pair) and devices without clusters never."""
    recorder = Recorder()
    monkeypatch.setattr(int8_planes, "_has_clusters", lambda t: True)

    def first(m, bits=4, group=128, symmetric=True, dtype=torch.bfloat16, n=4096, k=4096):
        codes = torch.zeros(16, 64, dtype=torch.int8)
        groups = 1 if group < 0 else -(-64 // group)
        w = pack_weight(codes, torch.ones(16, groups), None if symmetric else torch.zeros(16, groups, dtype=torch.int8),
                        None, bits, group)
        groups = 1 if group < 0 else k // group
        w = layout.PackedWeight(w.qweight.new_zeros(n // 16, k // layout.chunk_k(bits), w.qweight.shape[2], 4),
                                torch.ones(groups, n), None if symmetric else torch.zeros(groups, n), None, bits,
                                group, k, n)
        recorder.calls.clear()
        weight_only.packed_linear(torch.zeros(m, k, dtype=dtype), w, None, recorder)
        return recorder.calls[0]

    split = ("wo_gemv", int8_planes.SPLIT_VARIANT)
    monkeypatch.setattr(int8_planes, "SPLIT_MAX_M", None)
    assert first(9) == first(16) == first(16, group=-1) == first(12, group=64) == split
    assert first(16, n=6144) == first(9, n=14336) == first(12, n=14336) == split
    assert first(9, k=14336) == first(16, k=14336) == split
    assert first(16, n=2048) == first(9, k=2048, n=2048) == split
    assert first(16, k=2048, n=16384) == first(12, k=3072, n=3072) == split
    assert split not in (first(17), first(16, symmetric=False), first(16, n=14336), first(9, n=16384),
                         first(16, k=1024, n=2048), first(16, k=2048, n=32768), first(16, k=16384),
                         first(16, k=8192, n=8192))
    monkeypatch.setattr(int8_planes, "SPLIT_MAX_M", 0)
    assert first(16) != split
    monkeypatch.setattr(int8_planes, "SPLIT_MAX_M", 32)
    for m in (9, 16, 32):
        assert first(m) == split == first(m, n=6144), m
    assert first(16, symmetric=False) == split != first(17, symmetric=False)
    assert first(8) == ("x_planes",) and first(33) != split
    assert first(16, bits=3) != split and first(16, group=32) != split and first(16, dtype=torch.float32) != split
    monkeypatch.setattr(int8_planes, "_has_clusters", lambda t: False)
    assert first(16) != split


def test_dispatcher_routes_by_tokens_and_shape(monkeypatch):
    """packed_linear's routes (kernels/weight_only.py): the GEMV's lean launch where rows >= columns, then for a
    weight with a Hopper copy the measured route of the nearest measured shape and the next measured batch
    (kernels/tuning.py), then wo_gemm_v3 / wo_gemm / dequantization without one."""
    from qtool_kernels import mixed_mm

    recorder = Recorder()
    calls = recorder.calls

    def fake_mixed(x2, mixed, split=0, pingpong=0, ktile=64, variant=0, token_tile=0, checked=False):
        calls.append(("mixed", ktile, token_tile, variant, split))
        return torch.zeros(x2.shape[0], mixed.w.shape[0], dtype=x2.dtype)

    monkeypatch.setattr(weight_only, "mixed_linear", fake_mixed)
    monkeypatch.setattr(int8_planes, "GEMV_PLANES", False)  # the planes' routes: test_planes_route_*
    monkeypatch.setattr(int8_planes, "LOWBIT_PLANES", False)
    monkeypatch.setattr(tuning, "MIXED", {
        (4, 4096, 4096): {8: "wo_gemm", 64: "k128 t32 v0 s2", 256: "k64 t64 v2 s1", 4096: "dequant"},
        (4, 8192, 28672): {8: "k128 t16 v1 s0", 4096: "k64 t256 v0 s-1"},
        (8, 4096, 4096): {8: "k128 t16 v0 s0"}})
    tuning.clear_cache()

    def route(bits, k, n, m, copy=True, group=-1):
        codes = torch.zeros(16, 64, dtype=torch.int8)
        w = pack_weight(codes, torch.ones(16, 1), None, None, bits, -1)
        mixed = mixed_mm.MixedWeight(torch.zeros(n, 1, dtype=torch.int8 if bits == 8 else torch.uint8),
                                      torch.ones(1, n), torch.zeros(1, n), k if group < 0 else group) if copy else None
        w = layout.PackedWeight(w.qweight.new_zeros(n // 16, k // layout.chunk_k(bits), w.qweight.shape[2], 4),
                                w.scale, None, None, bits, -1, k, n, mixed)
        calls.clear()
        weight_only.packed_linear(torch.zeros(m, k, dtype=torch.bfloat16), w, None, recorder)
        return calls[0]

    try:
        assert route(4, 8192, 8192, 1) == ("wo_gemv", 1) and route(4, 28672, 8192, 1) == ("wo_gemv", 2)
        assert route(4, 4096, 4096, 1) == ("wo_gemv", 2) == route(4, 14336, 4096, 1)  # <= 4096 rows: wide
        # 4-bit: the ring GEMV at 2 tokens, variant 3 ("stream") at 3-4, to 8 on small weights (<= 8192 rows,
        # <= 32 MiB of codes), the measured route past that on large ones; at 3 tokens the ring GEMV where
        # K <= 4096 < N (session 27)
        assert route(4, 8192, 8192, 2) == ("wo_gemv", 1) and route(4, 28672, 8192, 2) == ("wo_gemv", 2)
        assert route(4, 8192, 8192, 3) == ("wo_gemv", 3) == route(4, 28672, 8192, 4) == route(4, 14336, 4096, 8)
        assert route(4, 4096, 14336, 3) == ("wo_gemv", 1) == route(4, 4096, 6144, 3)
        assert route(4, 4096, 4096, 3) == ("wo_gemv", 3) == route(4, 4096, 14336, 4)
        assert route(4, 4096, 4096, 8) == ("wo_gemv", 3) == route(4, 8192, 8192, 5)
        assert route(4, 8192, 14336, 5) == ("mixed", 128, 16, 1, 0) and route(4, 4096, 4096, 9)[0] == "mixed"
        # 8-bit: the ring GEMV on small weights to 8 tokens; on large ones stream at 4, at 2-3 where K >= 16384
        assert route(8, 4096, 6144, 8) == ("wo_gemv", 1) and route(8, 4096, 4096, 6) == ("wo_gemv", 2)
        assert route(8, 8192, 8192, 4) == ("wo_gemv", 3) and route(8, 8192, 8192, 3) == ("wo_gemv", 1)
        assert route(8, 28672, 8192, 2) == ("wo_gemv", 3) and route(8, 8192, 8192, 5)[0] == "mixed"
        assert route(8, 14336, 4096, 8)[0] == "mixed"  # 56 MiB of codes: past the small-weight rule
        assert route(4, 4096, 4096, 9) == ("mixed", 128, 32, 0, 2) == route(4, 4096, 4096, 64)
        assert route(4, 4096, 4096, 65) == ("mixed", 64, 64, 2, 1)
        assert route(4, 4096, 4096, 300) == ("dequant_int",) and route(4, 4096, 4096, 9000) == ("dequant_int",)
        assert route(4, 4096, 6144, 200) == ("mixed", 64, 64, 2, 1)  # the nearest measured shape
        assert route(4, 8192, 14336, 8) == ("mixed", 128, 16, 1, 0)
        assert route(4, 4096, 4096, 16, group=64) == ("mixed", 64, 32, 0, 2)  # g64: no 128-k stages
        assert route(8, 8192, 8192, 16) == ("mixed", 128, 16, 0, 0)
        # no copy: wo_gemm_v3 past 16 tokens where the weight is large, wo_gemm to 64, then dequantization
        assert route(4, 8192, 8192, 16, copy=False) == ("wo_gemm",)
        assert route(4, 8192, 8192, 32, copy=False) == ("wo_gemm_v3",) and route(4, 4096, 4096, 32, copy=False) == (
            "wo_gemm",)
        assert route(4, 8192, 8192, 65, copy=False) == ("dequant_int",)
        # 2- and 3-bit: the native GEMVs up to 8 tokens (variant 3 from 2), with a (4-bit) Hopper copy or
        # without; the copy takes the 4-bit route past them, and where that is wo_gemm (4-bit chunks only) the
        # copy's plain schedule
        for bits in (2, 3):
            assert route(bits, 8192, 8192, 1) == ("wo_gemv", 1) and route(bits, 8192, 28672, 16)[0] == "mixed"
            assert route(bits, 8192, 8192, 3) == ("wo_gemv", 3) == route(bits, 28672, 8192, 8)
            # 2 tokens: the ring GEMV on weights larger than 4096 x 4096 with K < 16384 (session 27)
            assert route(bits, 8192, 8192, 2) == ("wo_gemv", 1) and route(bits, 14336, 4096, 2) == ("wo_gemv", 2)
            assert route(bits, 4096, 4096, 2) == ("wo_gemv", 3) == route(bits, 28672, 8192, 2)
            assert route(bits, 8192, 8192, 9)[0] == "mixed" and route(bits, 4096, 4096, 17)[0] == "mixed"
            assert route(bits, 4096, 4096, 16) == ("wo_gemv", 3)  # small: variant 3 to 16 tokens
            with monkeypatch.context() as patch:  # 8 tokens past the GEMVs, where the 4-bit winner is wo_gemm
                patch.setattr(weight_only, "GEMV_KIND_MAX_M", 4)
                patch.setattr(weight_only, "STREAM_LOW_BITS_MAX_M", 4)
                assert route(bits, 4096, 4096, 8) == ("mixed", 128, 0, 0, 0)
            assert route(bits, 4096, 4096, 300) == ("dequant_int",)
            assert route(bits, 8192, 8192, 8, copy=False) == ("wo_gemv", 3)
            assert route(bits, 8192, 8192, 9, copy=False) == ("dequant_int",)
    finally:
        tuning.clear_cache()


def test_gemv_rule_without_a_hopper_copy(monkeypatch):
    """The GEMV rule holds for weights without a Hopper copy (fp16, other GPUs): one token on the ring GEMV,
    2-16 tokens of small 2-/3-bit and 3-8 of small 4-bit weights on variant 3, small 8-bit weights on the ring GEMV
    to 8; past those wo_gemm (4-, 8-bit) or dequantization + cuBLAS (2-, 3-bit). (With the planes on, symmetric
    4-bit weights at 2-4 tokens take them: test_packed_linear_runs_the_planes_pair.)"""
    monkeypatch.setattr(int8_planes, "GEMV_PLANES", False)
    recorder = Recorder()

    def route(bits, m, dtype=torch.bfloat16):
        w = pack_weight(torch.zeros(64, 256, dtype=torch.int8), torch.ones(64, 2), None, None, bits, 128)
        recorder.calls.clear()
        weight_only.packed_linear(torch.zeros(m, 256, dtype=dtype), w, None, recorder)
        return recorder.calls[0]

    for bits in (2, 3, 4, 8):
        assert route(bits, 1) == ("wo_gemv", 2), bits
        assert route(bits, 17) == (("dequant_int",) if bits < 4 else ("wo_gemm",)), bits
    for bits in (2, 3):
        assert route(bits, 2) == route(bits, 16, torch.float16) == ("wo_gemv", 3), bits
    assert route(4, 2) == ("wo_gemv", 2) and route(4, 3) == route(4, 8, torch.float16) == ("wo_gemv", 3)
    assert route(8, 2) == route(8, 8, torch.float16) == ("wo_gemv", 2)
    assert route(4, 9) == route(8, 9) == ("wo_gemm",)


def test_route_memos_answer_as_the_tables_walked_and_forget_with_clear_cache(monkeypatch):
    """lookup and mixed_schedule keep their answers per argument tuple (an eager call's host time): each is the
    table walk's answer at every measured shape, near and past its batches, groups that do and do not take
    128-k stages; a replaced table is read after clear_cache; a full memo starts over."""
    tuning.clear_cache()
    try:
        for (bits, k, n) in tuning.MIXED:
            for m in (1, 16, 48, 100, 256, 5000):
                for group in (128, 64, k):
                    route = tuning._lookup("mixed", bits, k + 64, n, m, False)
                    parsed = None if route is None else tuning.parse(route)
                    want = (tuning.plain_schedule(m, group, k + 64) if parsed is None else
                            tuning.fit(parsed, m, group, k + 64) if isinstance(parsed, dict) else parsed)
                    for _ in range(2):  # the walk, then the memo
                        assert tuning.lookup("mixed", bits, k + 64, n, m) == route
                        assert tuning.mixed_schedule(bits, k + 64, n, m, group) == want
        for (kind, k, n) in tuning.W8A8:
            for m in (1, 9, 300, 9000):
                for within in (False, True):
                    want = tuning._lookup("w8a8", kind, k, n, m, within)
                    assert tuning.lookup("w8a8", kind, k, n, m, within) == want
                    assert tuning.lookup("w8a8", kind, k, n, m, within) == want
        before = tuning.lookup("w8a8", "fp8", 4096, 4096, 64, within=True)  # now in the memo
        monkeypatch.setattr(tuning, "W8A8", {("fp8", 4096, 4096): {16: "gemv", 64: "a replaced table"}})
        tuning.clear_cache()
        assert tuning.lookup("w8a8", "fp8", 4096, 4096, 64, within=True) == "a replaced table" != before
        monkeypatch.setattr(tuning, "SCHEDULES_MAX", 3)
        for m in range(1, 10):
            tuning.lookup("w8a8", "fp8", 4096, 4096, m)
            tuning.mixed_schedule(4, 4096, 4096, m + 16, 128)
        assert 0 < len(tuning._looked_up) <= 3 and 0 < len(tuning._schedules) <= 3
    finally:
        tuning.clear_cache()


def test_measured_schedules_are_valid():
    """Every route in kernels/tuning.py (the H200's tables and each card's cells) parses, and each schedule is one
    the libraries build at the batch it was measured at (group 128, and per channel for 8 bits); W8A8 routes name
    a kernel that takes them."""
    from qtool_kernels import mixed_mm, warpgroup_mm

    cards = tuning.CARD_TABLES.values()
    mixed = [*tuning.MIXED.items(), *(row for names in cards for row in getattr(tuning, names["mixed"]).items())]
    w8a8 = [*tuning.W8A8.items(), *(row for names in cards for row in getattr(tuning, names["w8a8"]).items())]
    halves = [(key, m, half) for key, cells in mixed for m, text in cells.items()  # "A | B": both routes
              for half in text.split(tuning.ZERO_ROUTE)]
    for (bits, k, n), m, text in halves:
        assert bits in (4, 8) and k % 64 == 0 and n % 64 == 0
        route = tuning.parse(text)
        if isinstance(route, dict):
            mixed_mm.check_schedule(m, 128 if bits == 4 else k, k, 0, route["ktile"], route["variant"],
                                    route["token_tile"])
            assert route["split"] >= -1
        elif route.startswith("wgmma"):  # the wgmma kernel: 4 bits, a schedule it takes at that batch
            assert bits == 4 and m <= warpgroup_mm.TILES[-1]
            warpgroup_mm.route_plan(route, m, k)
        else:
            assert route in ("wo_gemm", "dequant") and (route != "wo_gemm" or m <= 64)
    from qtool_kernels import block_mm

    for (codes, k, n), cells in w8a8:
        assert codes in ("fp8", "int8", "fp8-block") and k % 16 == 0 and n % 8 == 0
        for m, route in cells.items():
            names = block_mm.CONFIGS if codes == "fp8-block" else scaled_mm.SM90_CONFIGS
            assert route in names or route in ("gemv", "cublas")
            assert route != "gemv" or m <= scaled_mm.W8_GEMV_KERNEL_MAX_M
            assert route != "cublas" or codes != "int8"


def test_measured_routes_trace_under_compile():
    """torch.compile traces a route lookup in one graph (the nearest shape is a constant to it), one graph per
    batch bucket, and picks the same routes as eager code."""
    def scaled(x):
        route = tuning.lookup("mixed", 4, 4096, x.shape[1], x.shape[0])
        return x * (2 if route.startswith("k") else 3)

    compiled = torch.compile(scaled, fullgraph=True)
    for m in (8, 64, 100):
        x = torch.ones(m, 4096)
        assert torch.equal(compiled(x), scaled(x))


def test_block_mm_rejects_bad_operands_by_name():
    """The FP8 block GEMM's checks run before the library is touched, so they hold on any machine."""
    from qtool_kernels import block_mm

    e4m3 = torch.float8_e4m3fn
    xq, wq = torch.zeros(8, 256, dtype=e4m3), torch.zeros(16, 256, dtype=e4m3)
    xs, ws = torch.ones(2, 8).t(), torch.ones(1, 2)  # [8, 2] column-major, [1, 2]
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        block_mm.fp8_block_mm(xq.view(torch.int8), xs, wq, ws)
    with pytest.raises(ValueError, match="k % 128"):
        block_mm.fp8_block_mm(xq[:, :200], xs, wq[:, :200], ws)
    with pytest.raises(ValueError, match="column-major"):
        block_mm.fp8_block_mm(xq, xs.contiguous(), wq, ws)
    with pytest.raises(ValueError, match="w_scale"):
        block_mm.fp8_block_mm(xq, xs, wq, torch.ones(2, 2))
    for config in (7, 7 + block_mm.OVERLAP, 32):  # tiles 0-6, plus OVERLAP, plus PDL; orders on large / split only
        with pytest.raises(ValueError, match=f"config={config}"):
            block_mm.fp8_block_mm(xq, xs, wq, ws, config)
    for config in (block_mm.NARROW, block_mm.NARROW + block_mm.OVERLAP):  # 16 rows: one 64-row scale row
        with pytest.raises(ValueError, match=rf"w_scale must be contiguous float32 \[1, 2\] with config {config}"):
            block_mm.fp8_block_mm(xq, xs, wq, torch.ones(2, 2), config)
    if not block_mm.available():  # valid operands where the library cannot run: one line that says why
        with pytest.raises(RuntimeError, match="needs a Hopper GPU and libqtool_sm90_block"):
            block_mm.fp8_block_mm(xq, xs, wq, ws, block_mm.CONFIGS["block-large-overlap"])


def test_narrow_scales_repeat_each_block_per_64_rows():
    """The narrow tile's weight scales: each 128-row block's row twice, cut to ceil(n / 64) rows, computed once per
    tensor and again after an in-place change."""
    from qtool_kernels import block_mm

    ws = torch.arange(6.0).reshape(3, 2)  # n in (256, 384]: 3 blocks of 128 rows, 2 k blocks
    got = block_mm.narrow_scales(ws, 300)  # ceil(300 / 64) = 5 rows of 64
    assert torch.equal(got, torch.tensor([[0.0, 1], [0, 1], [2, 3], [2, 3], [4, 5]]))
    assert block_mm.narrow_scales(ws, 300) is got
    ws.mul_(2)
    assert torch.equal(block_mm.narrow_scales(ws, 300)[4], torch.tensor([8.0, 10]))


def test_narrow_scales_not_kept_from_a_graph_capture(monkeypatch):
    """Met first inside a CUDA graph capture, the narrow scales are made for that call and not kept (a capture
    records the expansion without running it); the next eager call makes and keeps them."""
    from qtool_kernels import block_mm, build

    ws = torch.arange(6.0).reshape(3, 2)
    monkeypatch.setattr(build, "capturing", lambda: True)
    first = block_mm.narrow_scales(ws, 300)
    assert block_mm.narrow_scales(ws, 300) is not first and id(ws) not in block_mm._narrow
    monkeypatch.setattr(build, "capturing", lambda: False)
    kept = block_mm.narrow_scales(ws, 300)
    assert torch.equal(kept, first) and block_mm.narrow_scales(ws, 300) is kept
    monkeypatch.setattr(build, "capturing", lambda: True)
    assert block_mm.narrow_scales(ws, 300) is kept  # kept before the capture: the graph reads it


def test_w8a8_routes_stay_within_measured_batches(monkeypatch):
    """W8A8 takes a measured route only on Hopper (where libqtool_sm90, which the table measured, runs) and inside
    the measured batches of the nearest shape (elsewhere the rules of kernels/scaled_mm.py), and the route of the
    next measured batch inside."""
    monkeypatch.setattr(scaled_mm.sm90, "load", lambda: False)
    assert scaled_mm.w8a8_route(64, 4096, 4096, "int8") is None
    monkeypatch.setattr(scaled_mm.sm90, "load", lambda: True)
    cells = tuning.W8A8[("int8", 4096, 4096)]
    low, high = min(cells), max(cells)
    assert scaled_mm.w8a8_route(low - 1, 4096, 4096, "int8") is None
    assert scaled_mm.w8a8_route(high + 1, 4096, 4096, "int8") is None
    above = min(m for m in cells if m > low)
    assert scaled_mm.w8a8_route(low + 1, 4096, 4096, "int8") == cells[above]
    assert scaled_mm.w8a8_route(low, 4000, 4100, "int8") == cells[low]  # the nearest measured shape


def test_hopper_copy_setting():
    """QTOOL_HOPPER_COPY picks the code widths that get the Hopper GEMM's second copy of the codes."""
    from qtool_kernels import mixed_mm

    assert mixed_mm.copy_bits_from("4 8") == (4, 8) and mixed_mm.copy_bits_from("4") == (4,)
    assert mixed_mm.copy_bits_from("") == () and mixed_mm.copy_bits_from("8,4") == (8, 4)
    for bad in ("3", "four", "4 x"):
        with pytest.raises(ValueError, match="QTOOL_HOPPER_COPY"):
            mixed_mm.copy_bits_from(bad)


def test_a_row_measured_at_some_batches_serves_those_only(monkeypatch):
    """A shape swept at a few batches takes its own routes there; outside them the nearest shape measured at that
    batch answers (not the partial row's first or last cell)."""
    from qtool_kernels import tuning

    monkeypatch.setattr(tuning, "W8A8", {
        ("fp8-block", 4096, 4096): {1: "gemv", 16: "gemv", 64: "block-narrow", 1024: "cublas"},
        ("fp8-block", 4096, 6144): {16: "block-skinny", 64: "block-narrow"}})
    tuning.clear_cache()
    try:
        at = {m: tuning.lookup("w8a8", "fp8-block", 4096, 6144, m) for m in (1, 8, 16, 40, 64, 65, 2000)}
        assert at == {1: "gemv", 8: "gemv", 16: "block-skinny", 40: "block-narrow", 64: "block-narrow",
                      65: "cublas", 2000: "cublas"}
        assert tuning.lookup("w8a8", "fp8-block", 4096, 6144, 9000, within=True) is None
        assert tuning.lookup("w8a8", "int8", 4096, 6144, 16) is None  # nothing measured for that kind
    finally:
        tuning.clear_cache()


def test_hopper_libraries_build_several_at_once_within_memory():
    """`qtool kernels build` compiles the missing Hopper libraries in parallel: one per library, bounded by cores
    and by COMPILE_GB of free memory each (one when memory is unknown); without CUDA each says why it was skipped."""
    from qtool_kernels import sm90

    assert sm90.build_jobs(4, 16, 120.0) == 4  # the device: every library at once
    assert sm90.build_jobs(4, 2, 64.0) == 2  # two cores
    assert sm90.build_jobs(4, 16, 23.0) == 1 and sm90.build_jobs(4, 16, 30.0) == 2  # ~12 GB per compile
    assert sm90.build_jobs(4, 16, 5.0) == 1 and sm90.build_jobs(4, 16, None) == 1 and sm90.build_jobs(1, None, 64) == 1
    if not torch.cuda.is_available():
        status = sm90.build_all()
        assert set(status) == {lib.stem for lib in sm90.ALL}
        assert all(s.startswith("skipped: ") for s in status.values())

