"""The wgmma kernel on 8-bit row-major codes (warpgroup_mm.w8_mm: int8, FP8 E4M3 and E5M2, per-channel and per-tensor
scales, bf16 activations) against float64 on fresh random weights: K a multiple of 16 but not of 64 (a partial last
chunk), N not a multiple of 16 (rows past N zero-filled) nor of the CTA's rows, every token tile with m from 1 to
128, one, two or four warpgroups, split-K from 1 to 8, a bias; E4M3 with every code (subnormals included) and with
128 x 128 block scales (fp8-block, ragged last blocks); and the two dispatchers (W8A16 rows layers, W8A8 layers) sending their tokens here when QTOOL_WGMMA_W8_TOKENS says so.

Bound: relative Frobenius error <= 1e-2 against x . (codes * scale)^T + bias in float64 (the codes are exact in bf16;
the bf16 output gives ~3e-3), as the other weight-only GEMMs are held to.
"""

from __future__ import annotations

import pytest
import torch

from conftest import poison_cache, rel_err
from qtool_kernels import scaled_mm, warpgroup_mm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def random_rows(n: int, k: int, dtype: torch.dtype, per_tensor: bool, seed: int, blocks: bool = False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if dtype == torch.int8:
        weight = torch.randint(-128, 128, (n, k), device="cuda", dtype=torch.int8, generator=g)
    elif dtype == torch.float8_e4m3fn:  # every E4M3 code but NaN, uniformly: subnormals, zeros of both signs, +-448
        codes = torch.randint(0, 254, (n, k), device="cuda", dtype=torch.int32, generator=g)
        codes = codes + (codes >= 127).int()  # skip 0x7F
        weight = codes.to(torch.uint8).view(torch.float8_e4m3fn)
    else:  # every finite E5M2 code, uniformly (0x7C-0x7F and 0xFC-0xFF are infinities and NaN)
        codes = torch.randint(0, 248, (n, k), device="cuda", dtype=torch.int32, generator=g)
        codes = codes + 4 * (codes >= 124).int()
        weight = codes.to(torch.uint8).view(torch.float8_e5m2)
    shape = (-(-n // 128), -(-k // 128)) if blocks else (1 if per_tensor else n,)
    return weight, torch.rand(shape, device="cuda", generator=g) / 100 + 1e-4


def reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if scale.dim() == 2:  # 128 x 128 blocks
        n, k = weight.shape
        w = weight.double() * scale.double().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    else:
        w = weight.double() * scale.double().reshape(-1, 1)
    y = x.double() @ w.T
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("k,n,per_tensor", [(4096, 4096, False), (576, 1000, True), (1040, 776, False)])
@pytest.mark.parametrize("m", [1, 9, 16, 17, 33, 64, 100, 128])
def test_plan_matches_float64(hopper, dtype, k, n, per_tensor, m):
    weight, scale = random_rows(n, k, dtype, per_tensor, seed=k + n + m)
    assert warpgroup_mm.takes_rows(weight, scale, m, torch.bfloat16)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    poison_cache()
    y = warpgroup_mm.rows_linear(x, weight, scale, None)
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    assert rel_err(y, reference(x, weight, scale, None)) <= 1e-2


@pytest.mark.parametrize("k,n", [(4096, 4096), (1040, 776)])
@pytest.mark.parametrize("m", [9, 32, 64, 128])
def test_blocks_match_float64(hopper, k, n, m):
    weight, scale = random_rows(n, k, torch.float8_e4m3fn, False, seed=k + m, blocks=True)
    assert warpgroup_mm.takes_rows(weight, scale, m, torch.bfloat16, blocks=True)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y = warpgroup_mm.rows_linear(x, weight, scale, None, blocks=True)
    assert rel_err(y, reference(x, weight, scale, None)) <= 1e-2


@pytest.mark.parametrize("warpgroups", [1, 2, 4])
@pytest.mark.parametrize("split", [1, 3, 8])
@pytest.mark.parametrize("tile,m", [(16, 5), (32, 32), (64, 40), (128, 128)])
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn])
def test_every_schedule_matches_float64(hopper, warpgroups, split, tile, m, dtype):
    if (tile, warpgroups) == (128, 4):
        pytest.skip("tile 128 takes one or two warpgroups")
    k, n = 1600, 1000  # 25 chunks: uneven over 3 and 8 splits; 1000 rows: partial 64- and 128-row tiles
    weight, scale = random_rows(n, k, dtype, False, seed=split * 100 + tile + warpgroups)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)  # not float32: rows_linear converts it
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y = warpgroup_mm.rows_linear(x, weight, scale, bias, warpgroup_mm.Plan(tile, warpgroups, split))
    assert rel_err(y, reference(x, weight, scale, bias)) <= 1e-2


@pytest.mark.parametrize("dtype,blocks", [(torch.int8, False), (torch.float8_e4m3fn, False),
                                          (torch.float8_e4m3fn, True)])
def test_w8a8_layers_route_here_when_switched_on(hopper, monkeypatch, dtype, blocks):
    monkeypatch.setattr(warpgroup_mm, "W8_TOKENS", (17, 128))
    calls = []
    real = warpgroup_mm.rows_linear
    monkeypatch.setattr(warpgroup_mm, "rows_linear", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    weight, scale = random_rows(1024, 2048, dtype, False, seed=7, blocks=blocks)
    x = torch.randn(48, 2048, device="cuda", dtype=torch.bfloat16)
    fmt = "int8" if dtype == torch.int8 else "e4m3"
    block = 128 if blocks else 0
    y = scaled_mm.w8a8_linear_cuda(x, weight, scale if blocks else scale.reshape(-1, 1), None, None, fmt, block,
                                   block, block)
    assert calls == [1]
    assert rel_err(y, reference(x, weight, scale, None)) <= 1e-2


def test_w8a16_rows_layers_route_here_when_switched_on(hopper, monkeypatch):
    from qtool_kernels import weight_only
    from qtool_kernels.layout import pack_rows

    monkeypatch.setattr(warpgroup_mm, "W8_TOKENS", (33, 128))
    calls = []
    real = warpgroup_mm.rows_linear
    monkeypatch.setattr(warpgroup_mm, "rows_linear", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    weight, scale = random_rows(768, 1024, torch.int8, False, seed=8)
    packed = pack_rows(weight, scale.reshape(-1, 1))
    bias = torch.randn(768, device="cuda")
    x = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16)
    y = weight_only.packed_linear(x, packed, bias, torch.ops.qtool_cuda)
    assert calls == [1]
    assert rel_err(y, reference(x, weight, scale, bias)) <= 1e-2
