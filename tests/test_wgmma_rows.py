"""The wgmma kernel's 8-bit rows path without a GPU: its byte moves (prmt, the warp's transposition buffer, ldmatrix)
and its int8 / E4M3 / E5M2 -> bf16 conversions (csrc/sm90/wgmma_weights.cuh, rows_to_a), emulated step by step on a
16-row x 64-k tile, must put in every lane's A registers exactly the weights wgmma's fragment layout asks for."""

from __future__ import annotations

import pytest
import torch

from qtool_kernels import warpgroup_mm


def prmt(a: int, b: int, selector: int) -> int:
    """PTX prmt.b32 (no sign replication): byte i of the result is byte (selector >> 4 i) & 7 of {b, a}."""
    pool = a.to_bytes(4, "little") + b.to_bytes(4, "little")
    return int.from_bytes(bytes(pool[(selector >> (4 * i)) & 7] for i in range(4)), "little")


def lop3_ea(a: int, b: int, c: int) -> int:
    return (a & b) | c


def bf16_pair(word: int) -> torch.Tensor:
    return torch.tensor([word & 0xFFFF, word >> 16], dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


def codes_to_bf16(e: int, hi: bool, fp8: bool | str, block_scale: float | None = None) -> torch.Tensor:
    """codes_to_bf16<W>: two codes of the word e -> their bf16 pair (float32 here, exact; times the block's bf16
    scale, rounded once, for fp8-block)."""
    if not fp8:
        v = prmt(e, 0, 0x4342 if hi else 0x4140)
        low, sub = lop3_ea(v, 0x007F007F, 0x43004300), lop3_ea(v, 0x00800080, 0x43004300)
        return (bf16_pair(low) - bf16_pair(sub)).float()  # bf16 arithmetic, as __hsub2
    v = prmt(e, 0, 0x3424 if hi else 0x1404)
    e5m2 = fp8 == "e5m2"
    bits = lop3_ea(v >> (3 if e5m2 else 4), 0x0FE00FE0 if e5m2 else 0x07F007F0, v & 0x80008000)
    pair = bf16_pair(bits) * bf16_pair(0x77807780 if e5m2 else 0x7B807B80)  # times 2^112 / 2^120, as __hmul2
    if block_scale is not None:
        pair = pair * torch.tensor(block_scale).to(torch.bfloat16)
    return pair.float()


def words(row: bytes) -> list[int]:
    return [int.from_bytes(row[4 * i:4 * i + 4], "little") for i in range(4)]


def rows_to_a(tile: torch.Tensor, fp8: bool | str, block_scale: float | None = None) -> torch.Tensor:
    """tile uint8 [16, 64] (a warp's rows, one chunk) -> a [32 lanes, 16 registers, 2] float32, by the kernel's
    steps: each lane's 16 bytes of rows r, r + 8 at k 16 q, the prmt regrouping, the buffer, ldmatrix."""
    buffer = {}
    for lane in range(32):
        q, r = lane % 4, lane // 4
        for half in (0, 1):
            w = words(bytes(tile[r + 8 * half, 16 * q:16 * q + 16].tolist()))
            regrouped = [prmt(w[0], w[2], 0x5410), prmt(w[0], w[2], 0x7632), prmt(w[1], w[3], 0x5410),
                         prmt(w[1], w[3], 0x7632)]
            buffer[(half, q, (r ^ (2 * q)) & 7)] = regrouped  # st.shared.v4 at [half][step q][row r, swizzled]
    a = torch.empty(32, 16, 2)
    for lane in range(32):
        for j in range(4):  # ldmatrix matrix j: its row rho at the address lane 8 j + rho gives
            e0 = buffer[(0, j, ((lane // 4) ^ (2 * j)) & 7)][lane % 4]
            e1 = buffer[(1, j, ((lane // 4) ^ (2 * j)) & 7)][lane % 4]
            for p, (e, hi) in enumerate(((e0, False), (e1, False), (e0, True), (e1, True))):
                a[lane, 4 * j + p] = codes_to_bf16(e, hi, fp8, block_scale)
    return a


def fragment(w: torch.Tensor) -> torch.Tensor:
    """w [16, 64] float -> what wgmma's register A wants: lane (r, q), register p of step j holds rows
    r + 8 (p % 2), k 16 j + 2 q + 8 (p // 2) + {0, 1}."""
    a = torch.empty(32, 16, 2)
    for lane in range(32):
        q, r = lane % 4, lane // 4
        for j in range(4):
            for p in range(4):
                k = 16 * j + 2 * q + 8 * (p // 2)
                a[lane, 4 * j + p] = w[r + 8 * (p % 2), k:k + 2]
    return a


def test_int8_rows_reach_the_fragments_exactly():
    codes = torch.randint(-128, 128, (16, 64), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    codes[0, :8] = torch.tensor([-128, 127, -1, 0, 1, -127, 64, -64], dtype=torch.int8)  # the range's edges
    assert torch.equal(rows_to_a(codes.view(torch.uint8), fp8=False), fragment(codes.float()))


@pytest.mark.parametrize("fmt,dtype,finite", [("e4m3", torch.float8_e4m3fn, lambda b: (b & 0x7F) != 0x7F),
                                              ("e5m2", torch.float8_e5m2, lambda b: (b & 0x7C) != 0x7C)])
def test_fp8_rows_reach_the_fragments_exactly(fmt, dtype, finite):
    every = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    every = every[finite(every)]  # no NaN (nor E5M2's infinities): never a weight
    g = torch.Generator().manual_seed(1)
    tile = torch.cat([every, every[torch.randint(0, every.numel(), (16 * 64 - every.numel(),), generator=g)]])
    tile = tile[torch.randperm(tile.numel(), generator=g)].view(16, 64)  # every code, subnormals and -0 included
    expected = fragment(tile.view(dtype).float())
    assert torch.equal(rows_to_a(tile, fp8=fmt if fmt == "e5m2" else True), expected)


def test_e4m3_block_scale_rounds_once():
    tile = torch.randint(0, 0x7F, (16, 64), generator=torch.Generator().manual_seed(2), dtype=torch.int32)
    tile = tile.to(torch.uint8)  # positive codes; the sign is the test above's
    scale = 0.0123
    expected = (tile.view(torch.float8_e4m3fn).float() * torch.tensor(scale).bfloat16().float()).bfloat16().float()
    assert torch.equal(rows_to_a(tile, fp8=True, block_scale=scale), fragment(expected))


@pytest.mark.parametrize("blocks,dtype,scale,ok", [(True, torch.float8_e4m3fn, (8, 5), True),
                                                   (True, torch.int8, (8, 5), False),
                                                   (True, torch.float8_e4m3fn, (1000, 1), False),
                                                   (False, torch.float8_e4m3fn, (8, 5), False)])
def test_takes_rows_with_blocks(blocks, dtype, scale, ok):
    weight = torch.zeros(1000, 576, dtype=dtype)  # blocks: ceil(1000 / 128) x ceil(576 / 128) = 8 x 5
    assert warpgroup_mm.takes_rows(weight, torch.ones(scale), 64, torch.bfloat16, blocks) is ok


@pytest.mark.parametrize("dtype,shape,scale,m,ok", [
    (torch.int8, (4096, 4096), (4096, 1), 64, True), (torch.float8_e4m3fn, (1000, 576), (1,), 17, True),
    (torch.float8_e5m2, (64, 64), (64,), 32, True), (torch.int8, (64, 72), (64,), 32, False),
    (torch.int8, (64, 64), (2, 1), 32, False), (torch.int8, (64, 64), (64,), 129, False)])
def test_takes_rows(dtype, shape, scale, m, ok):
    weight = torch.zeros(shape, dtype=dtype)
    assert warpgroup_mm.takes_rows(weight, torch.ones(scale), m, torch.bfloat16) is ok
    assert not warpgroup_mm.takes_rows(weight, torch.ones(scale), m, torch.float16)


def test_w8_tokens_switch_names_itself():
    with pytest.raises(ValueError, match="QTOOL_WGMMA_W8_TOKENS"):
        warpgroup_mm.parse_tokens("17", "QTOOL_WGMMA_W8_TOKENS")
