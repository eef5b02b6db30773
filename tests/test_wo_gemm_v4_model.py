"""wo_gemm_v4 (csrc/wo_gemm_v4.cu) emulated on the CPU, block by block: the host plan (stages, splits) on the
shared-memory limits of sm_80/89/90, every cp.async of stage_piece (16-byte alignment and bounds of both sides,
the commit/wait_group accounting of the pipeline: no stage read before its copies land, none overwritten while
another warp may still read it), the math over the staged bytes, and the split-K epilogue (workspace, tile
counters, the last block's reduction). Shapes as in tests/test_kernels_gpu.py's v4 tests, ragged K and N.
The kernel itself runs in tests/test_kernels_gpu.py -k v4."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import random_weight
from qtool_kernels.layout import ReferenceOps, chunk_k, pack_weight, unpack_codes

WARPS, STRIPE, TILE_ROWS, PIECE_K, ROW_STRIDE, MAX_STAGES, MAX_SPLITS, MIN_PIECES = 8, 16, 128, 128, 136, 8, 16, 2
# (cudaDevAttrMaxSharedMemoryPerMultiprocessor, cudaDevAttrMaxSharedMemoryPerBlockOptin)
DEVICES = {"sm_80": (164 << 10, 163 << 10), "sm_89": (100 << 10, 99 << 10), "sm_90": (228 << 10, 227 << 10)}


def group_shift(group_size):
    return 31 if group_size <= 0 else group_size.bit_length() - 1


def groups_per_piece(shift):
    return 1 if shift >= 7 else 1 << (7 - shift)


def weight_stage_bytes(bits):
    return WARPS * (PIECE_K // chunk_k(bits)) * 512


def stage_bytes(bits, tok, shift, asym):
    return weight_stage_bytes(bits) + tok * ROW_STRIDE * 2 + groups_per_piece(shift) * TILE_ROWS * 4 * (2 if asym else 1)


def tokens_per_block(m):
    return 8 if m <= 8 else 16 if m <= 16 else 32 if m <= 32 else 64


def choose_stages(sbytes, per_sm, optin):
    two = (per_sm // 2 - 1024) // sbytes
    if two >= 4:
        return min(two, MAX_STAGES)
    return min(min(optin, per_sm - 1024) // sbytes, MAX_STAGES)


def choose_splits(tiles, npieces, slots):
    max_splits = max(npieces // MIN_PIECES, 1)
    best, best_fill = 1, 0.0
    for s in range(1, min(MAX_SPLITS, max_splits) + 1):
        pps = -(-npieces // s)
        if -(-npieces // pps) != s:
            continue
        waves = -(-(tiles * s) // slots)
        fill = tiles * s / (waves * slots)
        if fill > best_fill + 0.02:
            best, best_fill = s, fill
    return best


def plan(m, n_padded, k_padded, bits, shift, asym, device="sm_90", num_sms=132):
    """plan_wo_gemm_v4, with blocks per SM from shared memory alone (2 at most: __launch_bounds__(256, 2))."""
    per_sm, optin = DEVICES[device]
    tok = tokens_per_block(m)
    sbytes = stage_bytes(bits, tok, shift, asym)
    stages = choose_stages(sbytes, per_sm, optin)
    smem = stages * sbytes
    npieces = -(-k_padded // PIECE_K)
    tiles = -(-n_padded // TILE_ROWS) * -(-m // tok)
    slots = min(2, per_sm // (smem + 1024)) * num_sms
    splits = choose_splits(tiles, npieces, slots)
    return dict(tok=tok, sbytes=sbytes, stages=stages, smem=smem, npieces=npieces, tiles=tiles, splits=splits,
                pps=-(-npieces // splits))


# --- shared memory and cp.async groups of one block -----------------------------------------------------


class Block:
    """A block's dynamic shared memory and its cp.async groups. Copies land as late as the wait_group rules
    allow; a read of bytes that a pending copy writes (RAW) and a copy into bytes some warp read since the last
    __syncthreads (WAR) fail. Bookkeeping per 16-byte unit."""

    def __init__(self, nbytes):
        self.mem = np.full(nbytes, 0xA5, dtype=np.uint8)  # garbage, never zero
        self.pend = np.zeros(-(-nbytes // 16), dtype=np.int64)  # pending copies per unit
        self.seen = np.zeros(-(-nbytes // 16), dtype=bool)  # read since the last barrier
        self.pending, self.open = [], []

    def cp_async_16(self, dst, src):  # src: 16 bytes (np.uint8), or None for a zero-fill
        assert dst % 16 == 0 and 0 <= dst and dst + 16 <= self.mem.size, f"cp.async to shared byte {dst}"
        assert not self.seen[dst // 16], f"WAR: cp.async into shared byte {dst}, read since the last barrier"
        self.pend[dst // 16] += 1
        self.open.append((dst, np.zeros(16, np.uint8) if src is None else src))

    def commit(self):
        self.pending.append(self.open)
        self.open = []

    def wait(self, n):
        while len(self.pending) > n:
            for dst, data in self.pending.pop(0):
                self.mem[dst:dst + 16] = data
                self.pend[dst // 16] -= 1

    def barrier(self):
        self.seen[:] = False

    def read(self, off, nbytes, rows=1, stride=0):
        """`rows` ranges of nbytes, `stride` bytes apart, from byte off: [rows, nbytes] uint8."""
        starts = off + stride * np.arange(rows)
        assert off >= 0 and starts[-1] + nbytes <= self.mem.size, f"shared read [{off}, {starts[-1] + nbytes})"
        units = (starts[:, None] + np.arange(0, nbytes, 16)[None, :]) // 16
        units = np.unique(np.concatenate([units.ravel(), (starts + nbytes - 1) // 16]))
        assert not self.pend[units].any(), f"RAW: shared read at byte {off} before its copy landed"
        self.seen[units] = True
        return self.mem[starts[:, None] + np.arange(nbytes)[None, :]]


class Global:
    """A global tensor as bytes; src(i) = the 16 bytes at element i, which must be 16-byte aligned and inside."""

    def __init__(self, t):
        self.bytes = t.contiguous().view(torch.uint8).reshape(-1).numpy() if t is not None else None
        self.esize = t.element_size() if t is not None else 0

    def src(self, elem):
        off = elem * self.esize
        assert off % 16 == 0 and 0 <= off and off + 16 <= self.bytes.size, f"global element {elem} out of bounds"
        return self.bytes[off:off + 16]


def run_block(bx, by, bz, prob, pl, mem, out):
    """wo_gemm_v4_kernel for block (bx, by, bz); out: dict with y, workspace, counters (numpy)."""
    bits, shift, asym, m, n, n_padded, k_padded = (prob[k] for k in ("bits", "shift", "asym", "m", "n", "n_padded",
                                                                      "k_padded"))
    kc, cpp, tok_n, stages, sbytes = chunk_k(bits), PIECE_K // chunk_k(bits), pl["tok"], pl["stages"], pl["sbytes"]
    nchunks, npieces, gpp = k_padded // kc, pl["npieces"], groups_per_piece(shift)
    ngroups = ((k_padded - 1) >> shift) + 1
    tile_row0, tok0 = bx * TILE_ROWS, bz * tok_n
    p_beg = by * pl["pps"]
    p_end = min(npieces, p_beg + pl["pps"])
    blk = Block(pl["smem"])
    x_off, prm_off = weight_stage_bytes(bits), weight_stage_bytes(bits) + tok_n * ROW_STRIDE * 2

    def stage_piece(piece, s):
        if piece < p_end:
            base = s * sbytes
            for i in range(WARPS * cpp * 32):
                stripe, c = tile_row0 // STRIPE + i // (cpp * 32), piece * cpp + (i // 32) % cpp
                ok = stripe < n_padded // STRIPE and c < nchunks
                blk.cp_async_16(base + i * 16, mem["qweight"].src(((stripe * nchunks + c) * 32 + i % 32) * 4) if ok else None)
            for i in range(tok_n * (PIECE_K // 8)):
                r, col = divmod(i, PIECE_K // 8)
                col *= 8
                tok, k = tok0 + r, piece * PIECE_K + col
                ok = tok < m and k < k_padded
                blk.cp_async_16(base + x_off + (r * ROW_STRIDE + col) * 2, mem["x"].src(tok * k_padded + k) if ok else None)
            g_first, psegs = (piece * PIECE_K) >> shift, gpp * (TILE_ROWS // 4)
            for i in range(psegs * (2 if asym else 1)):
                which, j = divmod(i, psegs)
                grp, r4 = g_first + j // (TILE_ROWS // 4), (j % (TILE_ROWS // 4)) * 4
                row = tile_row0 + r4
                ok = grp < ngroups and row < n_padded
                src = mem["zero" if which else "scale"].src(grp * n_padded + row) if ok else None
                blk.cp_async_16(base + prm_off + ((which * gpp + j // (TILE_ROWS // 4)) * TILE_ROWS + r4) * 4, src)
        blk.commit()

    def floats(off, count):
        return blk.read(off, 4 * count)[0].view(np.float32).astype(np.float64)

    for s in range(stages - 1):
        stage_piece(p_beg + s, s)
    acc = np.zeros((WARPS, 16, tok_n))
    gacc = np.zeros((WARPS, 16, tok_n))
    sc = np.zeros((WARPS, 16))
    zf = np.zeros((WARPS, 16))
    cur = [-1] * WARPS
    active = [bx * WARPS + w < n_padded // STRIPE for w in range(WARPS)]
    for piece in range(p_beg, p_end):
        i = piece - p_beg
        slot = i % stages
        blk.wait(stages - 2)
        blk.barrier()
        stage_piece(piece + stages - 1, (i + stages - 1) % stages)
        base = slot * sbytes
        for w in range(WARPS):
            if not active[w]:
                continue
            for cc in range(cpp):
                c = piece * cpp + cc
                if c >= nchunks:
                    break
                words = blk.read(base + (w * cpp + cc) * 32 * 16, 512)[0].view(np.int32).reshape(1, 1, 32, 4)
                q = unpack_codes(torch.from_numpy(words.copy()), bits).numpy().astype(np.float64)  # [16, kc]
                for j in range(16 // bits):
                    k0 = c * kc + 16 * j
                    grp = k0 >> shift
                    if grp != cur[w]:
                        acc[w] += sc[w][:, None] * gacc[w]
                        gacc[w] = 0
                        ps = base + prm_off + ((grp - ((piece * PIECE_K) >> shift)) * TILE_ROWS + w * 16) * 4
                        sc[w] = floats(ps, 16)
                        zf[w] = floats(ps + gpp * TILE_ROWS * 4, 16) if asym else 0.0
                        cur[w] = grp
                    kk = k0 - piece * PIECE_K
                    xb = blk.read(base + x_off + kk * 2, 32, tok_n, ROW_STRIDE * 2).view(np.float16).astype(np.float64)
                    a = q[:, 16 * j:16 * j + 16] - zf[w][:, None]
                    gacc[w] += a @ xb.T
    for w in range(WARPS):
        acc[w] += sc[w][:, None] * gacc[w]
    blk.wait(0)
    blk.barrier()

    rows = tile_row0 + np.arange(WARPS)[:, None] * 16 + np.arange(16)[None, :]  # [warp, 16]
    bias = out["bias"]
    splits = pl["splits"]
    for w in range(WARPS):
        if not active[w]:
            continue
        for r in range(16):
            for t in range(tok_n):
                row, tok = rows[w, r], tok0 + t
                if row >= n or tok >= m:
                    continue
                if splits > 1:
                    out["workspace"][by, tok, row] = acc[w, r, t]
                else:
                    out["y"][tok, row] = acc[w, r, t] + bias[row]
    if splits == 1:
        return
    ctr = bz * out["grid_x"] + bx
    last = out["counters"][ctr] == splits - 1
    out["counters"][ctr] += 1
    if not last:
        return
    for q in range(min(tok_n, m - tok0) * TILE_ROWS):
        row, tok = tile_row0 + q % TILE_ROWS, tok0 + q // TILE_ROWS
        if row >= n:
            continue
        parts = out["workspace"][:, tok, row]
        assert not np.isnan(parts).any(), f"partial of (tok {tok}, row {row}) never written"
        total = 0.0
        for sp in range(splits):
            total += parts[sp]
        out["y"][tok, row] = total + bias[row]


def emulate(x, p, bias, device="sm_90", num_sms=132, splits=None, seed=0):
    """The whole launch (ops.cpp wo_gemm_v4 + launch_wo_gemm_v4): y [m, n] float64, and the plan."""
    m = x.shape[0]
    n_padded, k_padded = p.qweight.shape[0] * 16, p.k_padded
    prob = dict(bits=p.num_bits, shift=group_shift(p.group_size), asym=p.zero is not None, m=m, n=p.out_features,
                n_padded=n_padded, k_padded=k_padded)
    pl = plan(m, n_padded, k_padded, p.num_bits, prob["shift"], prob["asym"], device, num_sms)
    if splits is not None:
        pl["splits"], pl["pps"] = splits, -(-pl["npieces"] // splits)
    assert 2 <= pl["stages"] <= MAX_STAGES and pl["smem"] <= DEVICES[device][1]
    assert -(-pl["npieces"] // pl["pps"]) == pl["splits"], "an empty split"
    mem = dict(qweight=Global(p.qweight), x=Global(x), scale=Global(p.scale), zero=Global(p.zero))
    grid = (-(-n_padded // TILE_ROWS), pl["splits"], -(-m // pl["tok"]))
    out = dict(y=np.full((m, p.out_features), np.nan), workspace=np.full((pl["splits"], m, p.out_features), np.nan),
               counters=np.zeros(pl["tiles"], np.int64), grid_x=grid[0],
               bias=np.zeros(p.out_features) if bias is None else bias.double().numpy())
    assert grid[0] * grid[2] == pl["tiles"]
    blocks = [(bx, by, bz) for bx in range(grid[0]) for by in range(grid[1]) for bz in range(grid[2])]
    random.Random(seed).shuffle(blocks)  # any arrival order: the last block of a tile reduces
    for b in blocks:
        run_block(*b, prob, pl, mem, out)
    assert not np.isnan(out["y"]).any(), "an output element was never written"
    if pl["splits"] > 1:
        assert (out["counters"] == pl["splits"]).all()
    return out["y"], pl


def make_packed(bits, group_size, symmetric, k, n, seed):
    codes, scale, zero, _ = random_weight(n, k, bits, group_size, symmetric, seed=seed)
    return pack_weight(codes, scale, zero, None, bits, group_size)


CASES = [  # bits, group, symmetric, k, n, m, forced splits (None: the planner's on 132 SMs), device
    (4, 128, True, 576, 200, 5, None, "sm_90"), (4, 128, False, 576, 200, 17, 2, "sm_90"),
    (4, 32, False, 1000, 200, 33, 3, "sm_90"), (4, 16, True, 1000, 200, 9, 4, "sm_90"),
    (4, 256, False, 1000, 1000, 64, 2, "sm_90"), (4, -1, True, 576, 200, 100, 2, "sm_90"),
    (8, 128, False, 576, 200, 8, 2, "sm_90"), (8, 64, True, 1000, 200, 65, 3, "sm_90"),
    (8, -1, False, 1000, 200, 16, None, "sm_90"), (8, 16, False, 576, 200, 31, 2, "sm_90"),
    (8, 256, True, 1000, 200, 129, 4, "sm_90"), (4, 64, False, 4096, 200, 5, None, "sm_90"),
    # more pieces per split than stages: the steady-state refill of a stage just read (WAR) and the tail
    (4, 128, False, 4096, 200, 17, 1, "sm_90"), (8, 16, False, 2048, 200, 65, 2, "sm_89"),
    (4, 32, True, 3000, 200, 40, 3, "sm_80"), (8, 128, True, 1600, 200, 7, 3, "sm_89"),
]


@pytest.mark.parametrize("bits,group_size,symmetric,k,n,m,splits,device", CASES)
def test_v4_emulation_matches_reference(bits, group_size, symmetric, k, n, m, splits, device):
    p = make_packed(bits, group_size, symmetric, k, n, seed=k + m)
    g = torch.Generator().manual_seed(m)
    x = torch.nn.functional.pad(torch.randn(m, k, generator=g), (0, p.k_padded - k)).half()
    bias = torch.randn(n, generator=g)
    y, pl = emulate(x, p, bias, device=device, splits=splits)
    ref = ReferenceOps.wo_gemv(x.float(), p.qweight, p.scale, p.zero, bias, bits, p.group_size, n, "none").double()
    err = (torch.from_numpy(y) - ref).norm() / ref.norm()
    assert err < 1e-5, (err, pl)
    if k >= 1600 and splits is not None:
        assert pl["pps"] > pl["stages"] - 1, pl  # the case exercises the refill


def test_v4_stages_fit_every_device():
    """Every instantiation's plan on sm_80/89/90: 2..8 stages within the opt-in limit (and two blocks per SM
    whenever the plan counted on two); > 48 KB is exactly when ops.cpp's launcher must raise the attribute."""
    for device, (per_sm, optin) in DEVICES.items():
        for bits in (4, 8):
            for tok in (8, 16, 32, 64):
                for shift in (4, 5, 6, 7, 8, 31):
                    for asym in (False, True):
                        sbytes = stage_bytes(bits, tok, shift, asym)
                        assert sbytes % 16 == 0
                        stages = choose_stages(sbytes, per_sm, optin)
                        where = (device, bits, tok, shift, asym, stages, sbytes)
                        assert 2 <= stages <= MAX_STAGES, where
                        assert stages * sbytes <= optin, where
                        if (per_sm // 2 - 1024) // sbytes >= 4:
                            assert 2 * (stages * sbytes + 1024) <= per_sm, where


def test_v4_splits_cover_every_piece_once():
    for k_padded in [64 * i for i in range(1, 400, 7)]:
        npieces = -(-k_padded // PIECE_K)
        for tiles in (1, 2, 3, 8, 16, 64, 112, 264, 1000):
            for slots in (132, 264, 216, 128):
                s = choose_splits(tiles, npieces, slots)
                pps = -(-npieces // s)
                ranges = [range(b * pps, min(npieces, b * pps + pps)) for b in range(s)]
                covered = sorted(q for r in ranges for q in r)
                assert covered == list(range(npieces)), (k_padded, tiles, slots, s)
