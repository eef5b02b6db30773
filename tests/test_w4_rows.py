"""The row-major 4-bit layout of `qtool_cuda::w4_gemv` (kernels/w4_rows.py): packing, its word order (what the
kernel's one-LOP3 decode relies on), and the reference the GPU kernel is checked against."""

import pytest
import torch

from qtool_kernels import layout
from qtool_kernels.w4_rows import NIBBLE_ORDER, pack_w4_rows, reference_w4_gemv, unpack_w4_rows


def random_weight(n, k, group_size, asym, seed=0):
    g = torch.Generator().manual_seed(seed)
    groups = 1 if group_size <= 0 else -(-k // group_size)
    codes = torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, groups, generator=g) + 0.5
    zero = torch.randint(-3, 4, (n, groups), generator=g).float() if asym else None
    return codes, scale, zero


@pytest.mark.parametrize("n,k,group_size", [(40, 576, 128), (16, 256, -1), (48, 1024, 256), (33, 300, -1)])
def test_pack_round_trip_and_padding(n, k, group_size):
    codes, scale, zero = random_weight(n, k, group_size, asym=True)
    w = pack_w4_rows(codes, scale, zero, group_size)
    assert w.rows.dtype == torch.uint8 and w.rows.shape[0] % 16 == 0 and w.k_padded % 128 == 0
    assert w.k_padded % w.group_size == 0 and w.scale.shape == (w.rows.shape[0], w.k_padded // w.group_size)
    back = unpack_w4_rows(w.rows)
    assert torch.equal(back[:n, :k], codes)
    assert not back[n:].any() and not back[:, k:].any()  # padding holds q = 0


def test_word_order_gives_the_pairs_the_kernel_decodes():
    """(word >> 4p) & 0x000f000f must be the pair (k_2p, k_2p+1) of the word's 8 consecutive k."""
    codes = (torch.arange(16 * 128) % 16 - 8).to(torch.int8).view(16, 128)
    w = pack_w4_rows(codes, torch.ones(16, 1), None, -1)
    words = w.rows.view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # little-endian: byte 0 is bits 0-7
    u = codes.to(torch.int64) + 8
    for p in range(4):
        lo, hi = (words >> (4 * p)) & 0xF, (words >> (4 * p + 16)) & 0xF
        assert torch.equal(lo, u[:, 2 * p::8]) and torch.equal(hi, u[:, 2 * p + 1::8]), p
    assert sorted(NIBBLE_ORDER) == list(range(8))


@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("group_size", [128, -1])
def test_reference_matches_float64(asym, group_size):
    n, k, m = 40, 576, 5
    codes, scale, zero = random_weight(n, k, group_size, asym, seed=1)
    w = pack_w4_rows(codes, scale, zero, group_size)
    x = torch.randn(m, w.k_padded, dtype=torch.float64)
    x[:, k:] = 0  # the caller pads activations with zeros
    bias = torch.randn(w.rows.shape[0])
    out = layout.ReferenceOps.w4_gemv(x.float(), w.rows, w.scale, w.zero, bias, w.group_size)
    gs = w.group_size if group_size > 0 else k
    per_k = scale.double().repeat_interleave(gs, 1)[:, :k]
    z = 0.0 if zero is None else zero.double().repeat_interleave(gs, 1)[:, :k]
    expected = x[:, :k] @ ((codes.double() - z) * per_k).T + bias[:n].double()
    assert torch.allclose(out[:, :n].double(), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(reference_w4_gemv(x.float(), w.rows, w.scale, w.zero, bias, w.group_size), out)


def test_bad_weights_are_named():
    codes, scale, _ = random_weight(16, 256, 64, asym=False)
    with pytest.raises(layout.UnsupportedLayout, match="group_size=64"):
        pack_w4_rows(codes, scale, None, 64)
    with pytest.raises(layout.UnsupportedLayout, match=r"\[-8, 7\]"):
        pack_w4_rows(codes.clamp(-8, 7) * 2, torch.ones(16, 2), None, 128)
