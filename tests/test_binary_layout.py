"""The 1-bit kernels' layouts (qtool_kernels.binary) on the CPU: round trips, and models of the kernels'
arithmetic over them (csrc/w1_gemv.cu's fragment decode, csrc/w1a1.cu's AND-popcount identity) against
the float64 reference. The kernels themselves run in tests/test_binary_gpu.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import qtool_kernels.reference as ref
from conftest import host_program
from qtool_kernels import binary
from qtool_kernels.layout import UnsupportedLayout
from quantize.primitives import pack_int

GROUPS = [32, 64, 128, 256, 512, -1]


def make(n, k, group_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = (torch.randint(0, 2, (n, k), generator=g) * 2 - 1).to(torch.int8)
    groups = 1 if group_size <= 0 else -(-k // group_size)
    scale = torch.rand(n, groups, generator=g) + 0.5
    dense = codes.double() * ref.expand_groups(scale.double(), group_size, k)
    return pack_int(codes, 1), scale, dense


def test_gemv_bit_map_is_a_bijection():
    row, k = binary.gemv_bit_map()
    flat = (row * 256 + k).reshape(-1)
    assert torch.equal(flat.sort().values, torch.arange(16 * 256))


@pytest.mark.parametrize("group_size", GROUPS)
def test_gemv_layout_round_trip(group_size):
    qweight, scale, dense = make(40, 576, group_size)
    w = binary.pack_gemv(qweight, scale, group_size, 576)
    assert w.qweight.shape == (4, 3, 32, 4) and w.k_padded == 768
    codes, per_k = binary.unpack_gemv(w)
    torch.testing.assert_close((codes.double() * per_k.double())[:40, :576], dense, rtol=0, atol=0)
    assert torch.equal(codes[40:], -torch.ones_like(codes[40:]))  # padding rows decode to -1 with scale 0
    assert per_k[40:].abs().max() == 0


def emulate_w1_gemv(x: torch.Tensor, w: binary.GemvWeight) -> torch.Tensor:
    """csrc/w1_gemv.cu's math, lane by lane: sign_pair decode, the permuted B loads, mma.m16n8k16 as
    A @ B over logical k, per-group float scaling; x [m, K_pad] float64 -> [m, N]."""
    stripes, chunks = w.qweight.shape[:2]
    gpc = binary.gemv_groups_per_chunk(w.group_size)
    ns = max(gpc, 1)
    words = w.qweight.long() & 0xFFFFFFFF
    lane = torch.arange(32)
    g, t = lane // 4, lane % 4
    y = torch.zeros(stripes * 16, x.shape[0], dtype=torch.float64)
    for s in range(stripes):
        for c in range(chunks):
            for q in range(ns):
                d = torch.zeros(16, x.shape[0], dtype=torch.float64)
                for j in range(q * 16 // ns, (q + 1) * 16 // ns):
                    a = torch.zeros(16, 16, dtype=torch.float64)
                    for p in range(4):
                        v = (words[s, c, :, j // 4] << (4 * (j % 4) + p)) & 0x80008000
                        for h, bit in ((0, 0x8000), (1, 0x80000000)):
                            a[g + 8 * (p % 2), 2 * t + 8 * (p // 2) + h] = torch.where(v & bit != 0, 1.0, -1.0).double()
                    b = torch.zeros(16, x.shape[0], dtype=torch.float64)
                    base = c * 256 + 16 * j
                    for tt in range(4):
                        for h in range(2):
                            b[2 * tt + h] = x[:, base + 4 * tt + h]
                            b[2 * tt + 8 + h] = x[:, base + 4 * tt + 2 + h]
                    d += a @ b
                if gpc == 0:
                    y[16 * s:16 * s + 16] += d
                else:
                    sc = w.scale[s, c, :, :, q].double().T.reshape(16)  # [row // 8, g] -> row 8 * (row // 8) + g
                    y[16 * s:16 * s + 16] += sc[:, None] * d
    if gpc == 0:
        y *= w.scale.double()[:, None]
    return y[: w.out_features].T


@pytest.mark.parametrize("group_size", GROUPS)
def test_gemv_kernel_model_matches_reference(group_size):
    qweight, scale, dense = make(40, 576, group_size, seed=1)
    w = binary.pack_gemv(qweight, scale, group_size, 576)
    x = torch.randn(3, 576, dtype=torch.float64)
    out = emulate_w1_gemv(torch.nn.functional.pad(x, (0, w.k_padded - 576)), w)
    torch.testing.assert_close(out, x @ dense.T)


def test_unsupported_groups_raise():
    qweight, scale, _ = make(8, 96, 48)
    with pytest.raises(UnsupportedLayout):
        binary.pack_gemv(qweight, scale, 48, 96)
    with pytest.raises(UnsupportedLayout):
        binary.pack_gemm(qweight, scale, 48, 96)


def emulate_w1a1(x: torch.Tensor, w: binary.GemmWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """csrc/w1a1.cu's arithmetic: binarize, then per group scale * (4 popc(a & b) - 2 popc(a)) plus cterm,
    times mean|x|. Returns (output float64 [m, N], integer +-1 dot products per channel [m, N])."""
    k = w.in_features
    xb = torch.nn.functional.pad((x >= 0).long(), (0, w.k_padded - k))
    wb = ((w.bits.long() & 0xFFFFFFFF)[..., None] >> torch.arange(32)) & 1
    wb = wb.reshape(w.bits.shape[0], -1)
    width = k if w.group_size < 0 else w.group_size
    acc = torch.zeros(x.shape[0], wb.shape[0], dtype=torch.float64)
    for grp in range(w.scale.shape[0]):
        cols = slice(grp * width, min((grp + 1) * width, w.k_padded))
        pop = xb[:, cols] @ wb[:, cols].T
        acc += w.scale[grp].double() * (4 * pop - 2 * xb[:, cols].sum(1, keepdim=True))
    xs = x.double().abs().mean(1, keepdim=True)
    out = torch.where(xs > 0, xs, 1.0) * (acc + w.cterm.double())
    dots = 4 * (xb @ wb.T) - 2 * xb.sum(1, keepdim=True) - 2 * wb.sum(1) + k
    return out[:, : w.out_features], dots[:, : w.out_features]


@pytest.mark.parametrize("group_size", GROUPS)
def test_w1a1_identity_matches_reference(group_size):
    qweight, scale, dense = make(40, 576, group_size, seed=2)
    w = binary.pack_gemm(qweight, scale, group_size, 576)
    assert w.bits.shape == (256, 32) and w.scale.shape[1] == 256
    x = torch.randn(5, 576)
    out, dots = emulate_w1a1(x, w)
    xs = x.double().abs().mean(1, keepdim=True)
    torch.testing.assert_close(out, (torch.where(x >= 0, 1.0, -1.0).double() * xs) @ dense.T, rtol=1e-5, atol=1e-5)  # cterm is float32
    signs = torch.where(x >= 0, 1, -1)
    assert torch.equal(dots, signs @ ref.unpack_weight(qweight, 1, 576).long().T)


# --- the W1A16 launch plan (csrc/w1_gemv_plan.h) against the hardware's shared-memory rules ----------

ROOT = Path(__file__).resolve().parents[1]
OPTIN = {"sm_90": 227 << 10, "sm_80": 163 << 10, "sm_89": 99 << 10}  # cudaDevAttrMaxSharedMemoryPerBlockOptin


@pytest.fixture(scope="module")
def plan_exe(tmp_path_factory) -> Path:
    """tests/w1_gemv_plan_check.cu compiled (host code only)."""
    return host_program(tmp_path_factory, "w1_gemv_plan_check.cu")


def gemv_plans(exe, cases):
    """cases: (m, n_padded, k_padded, gpc, optin) -> dict of the plan's fields per case, from the C++ header."""
    stdin = "\n".join(" ".join(map(str, c)) for c in cases) + "\n"
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True, check=True).stdout.split()
    keys = ("blocks", "threads", "xs", "ring_offset", "partial_offset", "smem", "opt_in", "xs_row_bytes",
            "ring_bytes", "partial_bytes")
    rows = [dict(zip(keys, map(int, out[i:i + len(keys)]), strict=True)) for i in range(0, len(out), len(keys))]
    assert len(rows) == len(cases)
    return rows


def test_w1_gemv_kernel_has_no_static_shared_memory():
    """The plan counts dynamic shared memory only; a static __shared__ array would be invisible to it (the
    first GPU run: 41 KB of x + 8 KB static partial sums > 48 KB without the opt-in, launch refused)."""
    src = (ROOT / "kernels" / "csrc" / "w1_gemv.cu").read_text()
    static = [line for line in src.splitlines() if "__shared__" in line and "extern" not in line]
    assert not static, static


def ring_slot_bytes(gpc):
    return 2 * 32 * 16 + (2 * 8 * 2 * gpc * 4 if gpc else 0)  # both stripes' lane words, then their scales


@pytest.mark.parametrize("gpc", [0, 1, 2, 4, 8])
def test_w1_gemv_launch_plan_fits_shared_memory(plan_exe, gpc):
    ks = [256 * i for i in range(1, 257)]  # every k_padded up to 65536
    cases = [(m, 64, k, gpc, optin) for optin in OPTIN.values() for k in ks for m in range(1, binary.GEMV_MAX_M + 1)]
    for (m, n_pad, k_pad, _, optin), p in zip(cases, gemv_plans(plan_exe, cases), strict=True):
        where = f"m={m} k_padded={k_pad} gpc={gpc} optin={optin}: {p}"
        assert p["smem"] <= optin, where
        assert p["opt_in"] == (p["smem"] > 48 << 10), where  # every byte above 48 KB needs the opt-in
        assert p["blocks"] * binary.GEMV_ROWS == n_pad and p["threads"] >= m * binary.GEMV_ROWS, where
        # regions in order, 16-byte aligned, none overlapping: [x][8 warps' rings][partial sums]
        assert p["ring_offset"] % 16 == 0 and p["partial_offset"] % 16 == 0, where
        assert p["ring_bytes"] == 8 * 4 * ring_slot_bytes(gpc), where  # the kernel's last slot: warp 7, slot 3
        assert p["ring_offset"] + p["ring_bytes"] == p["partial_offset"], where
        assert p["partial_offset"] + p["partial_bytes"] == p["smem"], where
        if p["xs"]:
            row = p["xs_row_bytes"]
            assert row % 16 == 0 and row >= 2 * k_pad, where
            # the last byte cp.async writes, and the last 8-byte B load (token m - 1, lane t = 3, last step)
            assert (m - 1) * row + 2 * k_pad <= p["ring_offset"], where
            assert (m - 1) * row + 4 * (k_pad // 2 - 8 + 2 * 3 + 2) <= p["ring_offset"], where
            assert 2 * p["smem"] + 2048 <= optin, where  # x is staged only while two blocks fit an SM
        else:
            assert p["ring_offset"] == 0, where


def test_w1_gemv_plan_stages_x_where_the_gpu_tests_expect(plan_exe):
    """test_w1_gemv_both_activation_paths needs both paths at K = 14336, g64 on the H200: m = 1 staged,
    m = 3, 4, 8 through L1; 8192 x 8192 stages x up to m = 3."""
    cases = [(m, 64, k, 4, OPTIN["sm_90"]) for k in (14336, 8192) for m in range(1, 9)]
    assert [p["xs"] for p in gemv_plans(plan_exe, cases)] == [1, 1, 0, 0, 0, 0, 0, 0] + [1, 1, 1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("group_size", [32, 64, 128, 512, -1])
def test_w1_gemv_global_reads_stay_in_the_layout(group_size):
    """csrc/w1_gemv.cu's cp.async source indices (uint4 units), every block, warp, lane and chunk, against the
    sizes of the tensors pack_gemv builds."""
    qweight, scale, _ = make(96, 1000, group_size)
    w = binary.pack_gemv(qweight, scale, group_size, 1000)
    stripes, nchunks = w.qweight.shape[:2]
    ns = max(binary.gemv_groups_per_chunk(w.group_size), 1)
    block, s, c, lane = torch.meshgrid(torch.arange(stripes // 2), torch.arange(2), torch.arange(nchunks),
                                       torch.arange(32), indexing="ij")
    bits = (2 * block + s) * nchunks * 32 + c * 32 + lane
    assert bits.max() < w.qweight.numel() // 4 and torch.equal(bits.flatten().sort().values, torch.arange(bits.numel()))
    if w.scale.dim() > 1:
        i = torch.arange(2 * 4 * ns)  # pieces of one chunk, both stripes
        s2 = i // (4 * ns)
        src = (2 * block[..., :1] * nchunks + s2 * nchunks + c[..., :1]) * 4 * ns + (i - s2 * 4 * ns)
        assert src.max() < w.scale.numel() // 4
        assert torch.equal(src.flatten().unique(), torch.arange(w.scale.numel() // 4))  # each piece, all of them


def w1_plan(m, k_padded, gpc, optin):
    """plan_w1_gemv (csrc/w1_gemv_plan.h) in Python: (xs, ring_offset, partial_offset, smem_bytes)."""
    slot = ring_slot_bytes(gpc)
    ring, partial = 8 * 4 * slot, 8 * 32 * 8 * 4
    xs_bytes = m * (2 * k_padded + 32)
    xs = xs_bytes <= 96 << 10 and ring + partial + xs_bytes <= optin // 2 - 1024
    ring_off = xs_bytes if xs else 0
    return xs, ring_off, ring_off + ring, ring_off + ring + partial


@pytest.mark.parametrize("group_size", [32, 64, 128, 512, -1])
@pytest.mark.parametrize("k,m,optin", [(1000, 1, 227 << 10), (1000, 8, 99 << 10), (9000, 2, 227 << 10),
                                       (9000, 5, 163 << 10)])
def test_w1_gemv_ring_and_shared_addressing(group_size, k, m, optin):
    """csrc/w1_gemv.cu's shared memory, block by block and warp by warp: x staged (when planned) and every ring
    slot filled with cp.async, the commit/wait_group counts (kW1Ring = 4 groups in flight per warp, the x group
    first), __syncwarp before a slot is refilled; each lane's words, scales and B loads read back from the byte
    offsets the kernel computes, against pack_gemv's tensors. K = 9000 (36 chunks) refills every slot, K = 1000
    (4 chunks) leaves warps 4..7 idle."""
    qweight, scale, _ = make(96, k, group_size)
    w = binary.pack_gemv(qweight, scale, group_size, k)
    stripes, nchunks = w.qweight.shape[:2]
    k_pad, gpc = w.k_padded, binary.gemv_groups_per_chunk(w.group_size)
    ns = max(gpc, 1)
    xs, ring_off, partial_off, smem = w1_plan(m, k_pad, gpc, optin)
    slot_bytes, row_bytes = ring_slot_bytes(gpc), 2 * k_pad + 32
    x = torch.randn(m, k_pad).half()
    xb = x.view(torch.uint8).reshape(-1).numpy()
    qb = w.qweight.view(torch.uint8).reshape(-1).numpy()
    sb = w.scale.view(torch.uint8).reshape(-1).numpy() if gpc else None
    def run_block(block):
        stripe0 = 2 * block
        mem = np.full(smem, 0xA5, np.uint8)
        pend = np.zeros(smem // 16, np.int64)
        groups = [[] for _ in range(8)]  # per warp: committed groups, oldest first
        opened = [[] for _ in range(8)]

        def copy(warp, dst, src):
            assert dst % 16 == 0 and dst + 16 <= smem and src.size == 16
            pend[dst // 16] += 1
            opened[warp].append((dst, src))

        def commit(warp):
            groups[warp].append(opened[warp])
            opened[warp] = []

        def wait(warp, n):
            while len(groups[warp]) > n:
                for dst, src in groups[warp].pop(0):
                    mem[dst:dst + 16] = src
                    pend[dst // 16] -= 1

        def read(off, nbytes):
            assert off >= 0 and off + nbytes <= smem and not pend[off // 16:(off + nbytes - 1) // 16 + 1].any(), off
            return mem[off:off + nbytes]

        def issue(warp, slot, c):
            if c < nchunks:
                dst = ring_off + (warp * 4 + slot) * slot_bytes
                assert ring_off <= dst and dst + slot_bytes <= partial_off
                for s in range(2):
                    for lane in range(32):
                        src = ((stripe0 + s) * nchunks * 32 + c * 32 + lane) * 16
                        assert src + 16 <= qb.size
                        copy(warp, dst + (s * 32 + lane) * 16, qb[src:src + 16])
                for i in range(2 * 4 * ns if gpc else 0):  # lanes i, i + 32, ...
                    s = i // (4 * ns)
                    src = ((stripe0 * nchunks * 4 * ns) + (s * nchunks + c) * 4 * ns + (i - s * 4 * ns)) * 16
                    assert src + 16 <= sb.size
                    copy(warp, dst + (2 * 32 + i) * 16, sb[src:src + 16])
            commit(warp)

        if xs:
            vecs = k_pad // 8
            for i in range(m * vecs):
                tok = i // vecs
                copy(i % 256 // 32, (tok * row_bytes // 16 + i - tok * vecs) * 16, xb[i * 16:i * 16 + 16])
            for warp in range(8):
                commit(warp)
        for warp in range(8):
            for r in range(4):
                issue(warp, r, warp + r * 8)
        if xs:
            for warp in range(8):
                wait(warp, 4)
        for warp in range(8):  # warps are independent until the epilogue's __syncthreads
            slot = 0
            for c in range(warp, nchunks, 8):
                wait(warp, 3)
                base = ring_off + (warp * 4 + slot) * slot_bytes
                for s in range(2):
                    words = read(base + s * 32 * 16, 512)
                    st = ((stripe0 + s) * nchunks + c) * 512
                    assert np.array_equal(words, qb[st:st + 512]), (block, warp, c, s)
                    if gpc:
                        for lane in range(32):
                            f = base + 1024 + ((lane // 4) * 2 * ns + s * 16 * ns) * 4
                            got = read(f, 8 * ns).view(np.float32)
                            want = w.scale[stripe0 + s, c, lane // 4].reshape(-1).numpy()  # [row // 8, q]
                            assert np.array_equal(got, want), (block, warp, c, s, lane)
                issue(warp, slot, c + 32)  # after __syncwarp: every lane holds the slot's words and scales
                slot = (slot + 1) % 4
                for lane in range(32):
                    g, t = lane // 4, lane % 4
                    tok = g if g < m else 0
                    for j in range(16):
                        k0 = c * 256 + 16 * j + 4 * t
                        if xs:
                            off = (tok * (row_bytes // 4) + 2 * t + c * 128 + 8 * j) * 4
                            assert off + 8 <= ring_off
                            assert np.array_equal(read(off, 8).view(np.float16), x[tok, k0:k0 + 4].numpy())
                        else:
                            assert (tok * (k_pad // 2) + 2 * t + c * 128 + 8 * j) * 4 + 8 <= x.numel() * 2
            wait(warp, 0)
        assert not pend.any()
        assert partial_off + 8 * 32 * 8 * 4 == smem

    for block in range(stripes // 2):
        run_block(block)
