"""CPU tests of the int8-planes path (activations as two int8 planes on the int8 tensor cores: kernels/int8_planes.py,
csrc/planes.cuh, csrc/wo_planes*.cu, csrc/w8_planes.cu): the planes' reference and its product, their routes, and
the kernels' fragment helpers compiled for the host by nvcc when it is installed (tests/kernels_host_check.cu)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from conftest import host_program, random_weight
from qtool_kernels import int8_planes, layout, reference, weight_only
from qtool_kernels.layout import PackedWeight, ReferenceOps, pack_weight

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def host_check(tmp_path_factory):
    """tests/kernels_host_check.cu compiled once (host code only), or a skip without nvcc."""
    return host_program(tmp_path_factory, "kernels_host_check.cu")


def test_host_decode_helpers_match_layout(host_check):
    """Compile tests/kernels_host_check.cu (host code only) and decode packed chunks with the kernels' helpers."""
    exe = host_check
    signed = subprocess.run([str(exe)], input="0 0\n", capture_output=True, text=True, check=True).stdout
    assert signed.split() == ["0"], signed  # int8_pair_bf16_signed: all 65536 code pairs exact
    for bits in (2, 3, 4, 8):
        codes, scale, zero, _ = random_weight(32, 256, bits, 64, symmetric=False, seed=bits)
        p = pack_weight(codes, scale, zero, None, bits, 64)
        words = (p.qweight.to(torch.int64) & 0xFFFFFFFF)
        if bits == 3:  # each lane's 16 bytes of low bits, then its 8 bytes of high bits
            words = torch.cat([words[:, :, :32], words[:, :, 32:].reshape(*words.shape[:2], 32, 2)], dim=-1)
        words = words.reshape(-1, words.shape[-1])  # (stripe, chunk, lane) order
        stdin = f"{bits} {words.shape[0]}\n" + "\n".join(" ".join(map(str, w)) for w in words.tolist())
        out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout.split("\n")
        unsigned = layout.unpack_codes(p.qweight, bits).long() + (1 << (bits - 1))
        kc, chunks = layout.chunk_k(bits), p.qweight.shape[1]
        lines = [list(map(float, line.split())) for line in out if line]
        assert len(lines) == words.shape[0] * 8 * (kc // 16)
        for lane, _, _, _, row, col, f32, bf16, fp16 in lines:
            stripe, chunk = divmod(int(lane) // 32, chunks)
            u = unsigned[stripe * 16 + int(row), chunk * kc + int(col)].item()
            assert f32 == (256 if bits == 8 else 128) + u
            assert (bf16, fp16) == ((u, 1024 + u) if bits == 8 else (128 + u, 1024 + u))


def test_host_planes_product_matches_codes(host_check):
    """wo_planes.cu's int8 fragments, emulated on the CPU with the kernel's own helpers (int4_word_s8x16 for A from
    the wo layout, plane_slot for the staged x): each 16-row, 64-k chunk's product equals 16 q . x exactly."""
    exe = host_check
    g = torch.Generator().manual_seed(36)
    codes = torch.randint(-8, 8, (32, 192), generator=g, dtype=torch.int8)
    p = pack_weight(codes, torch.ones(32, 2), None, None, 4, 128)
    words = (p.qweight.to(torch.int64) & 0xFFFFFFFF).reshape(2, 3, 32, 4)  # (stripe, chunk, lane, word)
    x = torch.randint(-128, 128, (192,), generator=g)
    lines = []
    for stripe in range(2):
        for chunk in range(3):
            lines += [" ".join(map(str, words[stripe, chunk].reshape(-1).tolist())),
                      " ".join(map(str, x[64 * chunk:64 * chunk + 64].tolist()))]
    out = subprocess.run([str(exe)], input="-4 6\n" + "\n".join(lines), capture_output=True, text=True, check=True)
    got = torch.tensor([[int(v) for v in line.split()] for line in out.stdout.splitlines()]).reshape(2, 3, 16)
    for stripe in range(2):
        for chunk in range(3):
            rows = codes[16 * stripe:16 * stripe + 16, 64 * chunk:64 * chunk + 64].long()
            assert torch.equal(got[stripe, chunk], 16 * rows @ x[64 * chunk:64 * chunk + 64]), (stripe, chunk)


def test_planes_reference_reconstructs_x_and_the_product():
    """x_planes' oracle (reference.x_planes, planes_to_x): plane_slots is a permutation that puts k = 16j + (2t,
    2t + 8, 2t + 1, 2t + 9) in lane t's word of subtile j (the host check above feeds the kernel that order); the
    planes give x back within s / 508 per token (an outlier, an all-zero token); ReferenceOps.wo_planes_gemv is
    x @ W^T within that bound."""
    slots = reference.plane_slots(128)
    assert torch.equal(slots.sort().values, torch.arange(128))
    for k in (64, 576, 4096):  # the gather x_planes uses (fusable under torch.compile) is the inverse
        assert torch.equal(reference.plane_sources(k)[reference.plane_slots(k)], torch.arange(k))
    assert slots[[0, 8, 1, 9, 2, 10, 16, 70]].tolist() == [0, 1, 2, 3, 16, 17, 4, 112]
    g = torch.Generator().manual_seed(37)
    x = torch.randn(3, 192, generator=g)
    x[0, 5] *= 50
    x[2] = 0
    planes, s = reference.x_planes(x)
    assert planes.dtype == torch.int8 and planes.shape == (6, 192) and planes.abs().max() <= 127
    back = reference.planes_to_x(planes, s)
    assert ((back - x).abs() <= s[:, None] * (1 / 508 + 1e-5)).all() and torch.equal(back[2], x[2])
    assert (back - x).abs().max() < x.abs().max() / 2**14  # ~2^-16 of the range, not 8 bits
    codes, scale, _, _ = random_weight(40, 192, 4, 64, symmetric=True, seed=37)
    dense = codes.double() * scale.double().repeat_interleave(64, 1)
    pk = pack_weight(codes, scale, None, None, 4, 64)
    bias = torch.randn(40, generator=g)
    y = ReferenceOps.wo_planes_gemv(planes, s, pk.qweight, pk.scale, None, bias, 64, 40, torch.float32)

    def within_bound(y, dense, bias):  # |y - x W^T| <= (s / 508) sum_k |w_nk| per token, plus float32 rounding
        err = (y.double() - (x.double() @ dense.T + bias)).abs()
        return bool((err <= s.double()[:, None] / 508 * dense.abs().sum(1) * (1 + 1e-3) + 1e-5).all())

    assert y.dtype == torch.float32 and within_bound(y, dense, bias.double())
    codes, scale, zero, _ = random_weight(40, 192, 4, 64, symmetric=False, seed=38)  # zero points: w = s (q - z)
    dense = (codes.double() - zero.double().repeat_interleave(64, 1)) * scale.double().repeat_interleave(64, 1)
    pk = pack_weight(codes, scale, zero, None, 4, 64)
    y = ReferenceOps.wo_planes_gemv(planes, s, pk.qweight, pk.scale, pk.zero, None, 64, 40, torch.float32)
    assert within_bound(y, dense, 0.0)
    assert not within_bound(y, dense * 1.001, 0.0)  # a 0.1% wrong weight is outside the bound
    for bits, group in ((2, 64), (3, 64)):  # 2- and 3-bit codes (wo_planes_low.cu): K = 192 pads to 256
        codes, scale, _, _ = random_weight(40, 192, bits, group, symmetric=True, seed=bits)
        dense = codes.double() * scale.double().repeat_interleave(group, 1)
        pk = pack_weight(codes, scale, None, None, bits, group)
        wide = torch.cat([planes, torch.zeros(6, 64, dtype=torch.int8)], 1)  # zero planes for the padding chunk
        y = ReferenceOps.wo_planes_gemv(wide, s, pk.qweight, pk.scale, None, None, group, 40, torch.float32, 0, bits)
        assert within_bound(y, dense, 0.0), bits
    natural, s2 = reference.x_planes(x, natural=True)  # k order (w8_planes_gemv): the same bytes, unpermuted
    assert torch.equal(natural[:, reference.plane_sources(192)], planes) and torch.equal(s2, s)
    w8 = torch.randint(-127, 128, (40, 192), generator=g, dtype=torch.int8)
    wscale = torch.rand(40, generator=g) / 100
    y = ReferenceOps.w8_planes_gemv(natural, s, w8, wscale, None, torch.float32)
    assert within_bound(y, w8.double() * wscale.double()[:, None], 0.0)


@pytest.mark.parametrize("bits", [2, 3])
def test_host_low_bit_planes_product_matches_codes(host_check, bits):
    """wo_planes_low.cu's int8 fragments for 2- and 3-bit codes, emulated on the CPU with the kernel's helpers
    (low_bit_nibbles, low_word_s8; plane_slot for x): each 16-row, 128-k chunk's product is 2^(8 - bits) q . x."""
    g = torch.Generator().manual_seed(40 + bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = torch.randint(lo, hi + 1, (32, 256), generator=g, dtype=torch.int8)
    p = pack_weight(codes, torch.ones(32, 2), None, None, bits, 128)
    words = p.qweight.to(torch.int64) & 0xFFFFFFFF  # [stripe, chunk, 32 (+16), 4]
    if bits == 3:  # each lane's 16 bytes of low bits, then its 8 bytes of high bits
        words = torch.cat([words[:, :, :32], words[:, :, 32:].reshape(*words.shape[:2], 32, 2)], dim=-1)
    x = torch.randint(-128, 128, (256,), generator=g)
    lines = []
    for stripe in range(2):
        for chunk in range(2):
            lines += [" ".join(map(str, words[stripe, chunk].reshape(-1).tolist())),
                      " ".join(map(str, x[128 * chunk:128 * chunk + 128].tolist()))]
    out = subprocess.run([str(host_check)], input=f"-{bits} 4\n" + "\n".join(lines), capture_output=True,
                         text=True, check=True)
    got = torch.tensor([[int(v) for v in line.split()] for line in out.stdout.splitlines()]).reshape(2, 2, 16)
    for stripe in range(2):
        for chunk in range(2):
            rows = codes[16 * stripe:16 * stripe + 16, 128 * chunk:128 * chunk + 128].long()
            want = (1 << (8 - bits)) * rows @ x[128 * chunk:128 * chunk + 128]
            assert torch.equal(got[stripe, chunk], want), (bits, stripe, chunk)


def test_w8_planes_fragments_give_the_row_products():
    """csrc/w8_planes.cu's fragments, emulated: lane (g, t) takes 16 bytes of rows g and g + 8 at k = 16t..16t+15 of a
    64-k chunk and the planes' same 16 bytes; tile i's a0..a3 = (row g word 2i, row g + 8 word 2i, row g word 2i + 1,
    row g + 8 word 2i + 1) and b0, b1 = plane words 2i, 2i + 1; mma.m16n8k32 (PTX's fragment layout) over both tiles
    gives every row's product with x exactly. A kernel that paired the words otherwise fails it."""
    g = torch.Generator().manual_seed(39)
    w = torch.randint(-128, 128, (16, 64), generator=g)
    x = torch.randint(-127, 128, (64,), generator=g)

    def emulate(pairing):
        d = torch.zeros(16, dtype=torch.int64)
        for tile in range(2):
            a = torch.zeros(16, 32, dtype=torch.int64)  # A [row, slot] as the fragments place it
            b = torch.zeros(32, dtype=torch.int64)  # B [slot] (one column: one plane)
            for lane in range(32):
                row, t = lane // 4, lane % 4
                words = {  # (row offset, word) -> the 4 bytes of that word in the lane's 16
                    (r, wd): (w[row + r, 16 * t + 4 * wd:16 * t + 4 * wd + 4]) for r in (0, 8) for wd in range(4)}
                regs = pairing(tile, words)
                a[row, 4 * t:4 * t + 4], a[row + 8, 4 * t:4 * t + 4] = regs[0], regs[1]
                a[row, 16 + 4 * t:20 + 4 * t], a[row + 8, 16 + 4 * t:20 + 4 * t] = regs[2], regs[3]
                b[4 * t:4 * t + 4] = x[16 * t + 8 * tile:16 * t + 8 * tile + 4]  # b0: plane word 2 tile
                b[16 + 4 * t:20 + 4 * t] = x[16 * t + 8 * tile + 4:16 * t + 8 * tile + 8]  # b1: word 2 tile + 1
            d += a @ b
        return d

    kernel = emulate(lambda i, wd: (wd[0, 2 * i], wd[8, 2 * i], wd[0, 2 * i + 1], wd[8, 2 * i + 1]))
    assert torch.equal(kernel, w @ x)
    swapped = emulate(lambda i, wd: (wd[0, 2 * i + 1], wd[8, 2 * i + 1], wd[0, 2 * i], wd[8, 2 * i]))
    assert not torch.equal(swapped, w @ x)


def test_planes_route_by_tokens_and_shape(monkeypatch):
    """x_planes + wo_planes_gemv (int8_planes.planes_route, sessions 37 and 39's measured rules): 4-bit weights with
    groups >= 64 or per channel (zero points or none) at 2-4 tokens, at one token only past 8192 x 8192; two / four
    stripes per block where that still leaves 448 blocks; symmetric ones at 5-8 tokens (two n-tiles, one stripe per
    block); nothing else, and nothing under QTOOL_GEMV_PLANES=0. wo_gemv's variants 4-6 (x
    quantized in every block) take what fits their shared memory."""
    def packed(bits, group, symmetric, k=4096, n=64):
        codes, scale, zero, _ = random_weight(64, 64, bits, group, symmetric=symmetric, seed=bits)
        w = pack_weight(codes, scale, zero, None, bits, group)
        qweight = w.qweight.new_zeros(n // 16, k // layout.chunk_k(bits), *w.qweight.shape[2:])  # the shape only
        return PackedWeight(qweight, w.scale, w.zero, None, bits, group, k, n)

    small, wide = packed(4, 128, True, 4096, 4096), packed(4, 128, True, 4096, 14336)
    widest = packed(4, -1, True, 4096, 28672)
    assert [int8_planes.planes_route(small, m) for m in range(6)] == [None, None, None, 0, 0, 0]  # 2: N <= 4096
    # 5-8 tokens: two n-tiles, one stripe per block, symmetric only; 9-16 under QTOOL_PLANES_TILE=16
    assert [int8_planes.planes_route(widest, m) for m in (5, 8, 9, 16, 17)] == [0, 0, None, None, None]
    assert int8_planes.planes_route(packed(4, 128, False), 5) is None and not int8_planes.takes_planes(small, 5)
    monkeypatch.setattr(int8_planes, "PLANES_TILE", 16)
    assert [int8_planes.planes_route(widest, m) for m in (9, 16, 17)] == [0, 0, None]
    monkeypatch.setattr(int8_planes, "PLANES_TILE", 0)
    assert int8_planes.planes_route(widest, 5) is None and int8_planes.planes_route(widest, 4) == 2
    # the tile kernel (variant 3, QTOOL_PLANES_GEMM): past PLANES_TILE, on devices with clusters only
    monkeypatch.setattr(int8_planes, "PLANES_GEMM", 32)
    monkeypatch.setattr(int8_planes, "_has_clusters", lambda t: True)
    assert [int8_planes.planes_route(widest, m) for m in (4, 5, 32, 33)] == [2, 3, 3, None]
    asym_wide = packed(4, 128, False, 4096, 28672)  # zero points: the tile kernel to 16 tokens, from 5
    assert [int8_planes.planes_route(asym_wide, m) for m in (4, 5, 16, 17)] == [2, 3, 3, None]
    monkeypatch.setattr(int8_planes, "_has_clusters", lambda t: False)
    assert int8_planes.planes_route(widest, 16) is None
    assert int8_planes.planes_route(packed(4, 128, True, 4096, 6144), 2) == 0
    assert int8_planes.planes_route(packed(4, 64, True, 8192, 8192), 1) is None
    assert int8_planes.planes_route(packed(4, 64, True, 28672, 8192), 1) == 0
    assert int8_planes.planes_route(wide, 2) == 1 and int8_planes.planes_route(widest, 1) == 2
    for other in (packed(4, 32, True), packed(8, -1, True), packed(3, 128, True)):
        assert int8_planes.planes_route(other, 2) is None
    asym = packed(4, 128, False)
    assert int8_planes.planes_route(asym, 3) == 0 and not int8_planes.takes_planes(asym, 3)  # the staged: symmetric
    assert weight_only.route(small, 3, torch.bfloat16) == "wo_planes" != weight_only.route(small, 3, torch.float32)
    monkeypatch.setattr(int8_planes, "GEMV_PLANES", False)
    assert int8_planes.planes_route(small, 3) is None and weight_only.route(small, 3, torch.bfloat16) != "wo_planes"
    long_k = packed(4, -1, True, k=14336)
    assert int8_planes.takes_planes(long_k, 3) and not int8_planes.takes_planes(long_k, 4)  # 2 * 4 * 14400 > 96 KB
    for bits, group in ((3, 128), (2, 64)):  # 2-/3-bit codes (LOWBIT_PLANES): the same rule, symmetric only
        low = [packed(bits, group, True, k, n) for k, n in ((4096, 4096), (4096, 6144), (28672, 8192))]
        assert [[int8_planes.lowbit_planes_route(w, m) for m in range(6)] for w in low] == [
            [None, None, None, 0, 0, None], [None, None, 0, 0, 0, None], [None, 0, 0, 0, 0, None]]
        assert int8_planes.lowbit_planes_route(packed(bits, group, False, 28672, 8192), 3) is None
        assert int8_planes.lowbit_planes_route(packed(bits, 32, True, 28672, 8192), 3) is None


def test_w8_planes_rule(monkeypatch):
    """int8 rows on x_planes + w8_planes_gemv (scaled_mm.takes_w8_planes, session 38's measured rule): 1-4 tokens
    where K and N are both >= 8192 (the 4096-wide shapes keep w8_gemv); k a multiple of 64; QTOOL_W8_PLANES=0 off."""
    from qtool_kernels import scaled_mm

    monkeypatch.setattr(scaled_mm, "W8_PLANES", True)
    assert [scaled_mm.takes_w8_planes(m, 8192, 8192) for m in range(6)] == [False, True, True, True, True, False]
    assert scaled_mm.takes_w8_planes(1, 8192, 28672) and scaled_mm.takes_w8_planes(4, 28672, 8192)
    for n, k in ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192 + 32)):
        assert not scaled_mm.takes_w8_planes(1, n, k), (n, k)
    monkeypatch.setattr(scaled_mm, "W8_PLANES", False)
    assert not scaled_mm.takes_w8_planes(1, 8192, 8192)
