"""`qtool_cuda::w4_gemv` (row-major W4A16, csrc/w4_gemv.cu) against float64 on fresh random inputs, on a GPU.

Bound: 1e-2 relative (Frobenius) to the float64 product of the same codes, scales and zero points: the kernel's
products are exact (small integers times bf16/fp16 activations), its sums float32, its output rounded once to
bf16/fp16 (~4e-3).
"""

from __future__ import annotations

import pytest
import torch

from conftest import poison_cache, rel_err
from qtool_kernels.w4_rows import pack_w4_rows, reference_w4_gemv

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def weight(n, k, group_size, asym, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    groups = 1 if group_size <= 0 else -(-k // group_size)
    codes = torch.randint(-8, 8, (n, k), generator=g, device="cuda", dtype=torch.int8)
    scale = torch.rand(n, groups, generator=g, device="cuda") / 50 + 1e-3
    zero = torch.randint(-3, 4, (n, groups), generator=g, device="cuda").float() if asym else None
    return codes, scale, zero


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("n,k,group_size", [(1536, 576, 128), (4096, 1024, -1), (5000, 2048, 256), (16, 128, 128)])
def test_w4_gemv_matches_float64(kernels, dtype, asym, n, k, group_size):
    codes, scale, zero = weight(n, k, group_size, asym, seed=n + k)
    w = pack_w4_rows(codes, scale, zero, group_size)
    bias = torch.randn(w.rows.shape[0], device="cuda")
    gs = w.group_size if group_size > 0 else k
    z = 0.0 if zero is None else zero.double().repeat_interleave(gs, 1)[:, :k]
    dense = (codes.double() - z) * scale.double().repeat_interleave(gs, 1)[:, :k]
    for m in (1, 2, 7, 8, 9, 16):
        x = torch.zeros(m, w.k_padded, device="cuda", dtype=dtype)
        x[:, :k] = torch.randn(m, k, device="cuda", dtype=dtype)
        poison_cache()
        out = kernels.w4_gemv(x, w.rows, w.scale, w.zero, bias, w.group_size)
        assert out.shape == (m, w.rows.shape[0]) and out.dtype == dtype
        expected = x[:, :k].double() @ dense.T + bias[:n].double()
        assert rel_err(out[:, :n], expected) < 1e-2, f"m={m}"
        ref = reference_w4_gemv(x, w.rows, w.scale, w.zero, bias, w.group_size)
        assert rel_err(out[:, :n], ref[:, :n].double()) < 1e-2, f"m={m}: kernel vs reference"


def test_w4_gemv_rejects_bad_input(kernels):
    codes, scale, _ = weight(32, 256, 128, False, seed=0)
    w = pack_w4_rows(codes, scale, None, 128)
    x = torch.randn(17, 256, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="m <= 16"):
        kernels.w4_gemv(x, w.rows, w.scale, None, None, 128)
    with pytest.raises(RuntimeError, match="multiple of 128"):
        kernels.w4_gemv(x[:4], w.rows, w.scale, None, None, 64)
