"""GPU tests of wo_gemv's split variant (csrc/wo_split.cu: 4-bit weights at 1-32 tokens, each block quantizing its K
slice of x into int8 planes in shared memory, split-K over a thread block cluster) against float64, and the layer
routed there (QTOOL_SPLIT_GEMV) eagerly and replayed in a CUDA graph."""

from __future__ import annotations

import pytest
import torch

from conftest import cluster_w4_problems, poison_cache, random_qtensor, rel_err, replayed
from qtool_kernels import int8_planes, weight_only
from qtool_kernels.layout import EPILOGUE, PDL_STATIC_WEIGHT, pack_weight
from quantize.linear import QuantLinear, prepare_for_cuda
from quantize.scheme import QuantScheme

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                                 reason="the split variant runs on thread block clusters (sm_90)")]

SPLIT = int8_planes.SPLIT_VARIANT


def split_gemv(kernels, x, p, bias, n, variant=SPLIT):
    return kernels.wo_gemv(x, p.qweight, p.scale, p.zero, bias, 4, p.group_size, n, EPILOGUE, None, variant)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [64, 128, -1])
def test_split_gemv_matches_float64(kernels, group_size, symmetric, dtype):
    """Variant 7 at 1-32 tokens (two, four and eight n-tiles, full and partial; zero points to 16), the plan's splits,
    forced ones (1, 3, 5, 6, 7, 8; the uneven ones leave a shorter last split; where the slice fits shared memory)
    and with PDL, with bias, on ragged K and N (576 x 200: one row block, a last g128 group of 64; 14336 x 64: eight
    splits of 28 chunks; 4096 x 1536; 1024 x 4096: 32 row blocks), an outlier and all-zero tokens, against float64
    (the planes are ~2^-16 of each slice's range: far inside the output's rounding). Every output element is written (the cache is poisoned with NaN first)."""
    for k, n, p, bias, xp, zeros, ref in cluster_w4_problems(group_size, symmetric, dtype):
        m = xp.shape[0]
        forced = (1, 3, 5, 6, 7, 8) if k <= 1024 else (3, 5, 6, 7, 8) if k <= 4096 else (8,)  # slices that fit
        for variant in (SPLIT, SPLIT + PDL_STATIC_WEIGHT) + tuple(SPLIT + 32 * s for s in forced):
            poison_cache()
            out = split_gemv(kernels, xp, p, bias, n, variant)
            assert out.shape == (m, n) and out.dtype == dtype, (k, n, m, variant)
            assert rel_err(out, ref) < 1e-2, (k, n, m, variant, rel_err(out, ref))
            for z in zeros:
                torch.testing.assert_close(out[z].float(), bias.to(dtype).float(), rtol=1e-2, atol=1e-2)


def test_split_gemv_is_deterministic_and_refuses_by_name(kernels):
    """The cluster's sum runs in rank order: two calls give the same bits. 3-bit codes, groups of 32, zero points
    past 16 tokens, 33 tokens, 9 forced splits and a slice past the device's shared memory (one split of K = 4096
    at 32 tokens) are refused with the value named."""
    qt, _, _ = random_qtensor(4, 128, True, False, 4096, 1024, seed=5)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, 128)
    x = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(split_gemv(kernels, x, p, None, 1024), split_gemv(kernels, x, p, None, 1024))
    with pytest.raises(RuntimeError, match="at most 32 tokens with variant 7, got x"):
        split_gemv(kernels, torch.randn(33, 4096, device="cuda", dtype=torch.bfloat16), p, None, 1024)
    with pytest.raises(RuntimeError, match="s <= 8 splits.*got 295"):
        split_gemv(kernels, x, p, None, 1024, SPLIT + 9 * 32)
    with pytest.raises(RuntimeError, match=r"within the block's shared memory .* got 4-bit, group_size 128 .* 331904 bytes"):
        split_gemv(kernels, torch.randn(32, 4096, device="cuda", dtype=torch.bfloat16), p, None, 1024, SPLIT + 32)
    qa, _, _ = random_qtensor(4, 128, False, False, 576, 200)
    pa = pack_weight(qa.values, qa.scale, qa.zero_point, None, 4, 128)
    with pytest.raises(RuntimeError, match="at most 16 tokens with variant 7"):
        split_gemv(kernels, torch.randn(17, pa.k_padded, device="cuda", dtype=torch.bfloat16), pa, None, 200)
    for bits, group in ((3, 128), (4, 32)):
        qb, _, _ = random_qtensor(bits, group, True, False, 576, 200)
        pb = pack_weight(qb.values, qb.scale, qb.zero_point, None, bits, group)
        xb = torch.randn(9, pb.k_padded, device="cuda", dtype=torch.bfloat16)
        with pytest.raises(RuntimeError, match=rf"variant 7 \(split\) takes 4-bit .* got {bits}-bit, group_size {group}"):
            kernels.wo_gemv(xb, pb.qweight, pb.scale, None, None, bits, group, 200, EPILOGUE, None, SPLIT)


@pytest.mark.parametrize("symmetric", [True, False])
def test_quant_linear_on_the_split_variant_matches_float64(kernels, symmetric, monkeypatch):
    """QTOOL_SPLIT_GEMV=32: a W4 g128 QuantLinear at 9-32 tokens (zero points to 16) routed to variant 7, eager and
    replayed in a CUDA graph on new inputs, against float64."""
    monkeypatch.setattr(int8_planes, "SPLIT_MAX_M", 32)
    qt, args, dense = random_qtensor(4, 128, symmetric, False, 4096, 1536, seed=7)
    layer = QuantLinear.from_qtensor(qt, QuantScheme(weights=args), bias=None).cuda()
    for m in (9, 16, 20, 32) if symmetric else (9, 16):
        x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
        assert weight_only.route(prepare_for_cuda(layer), m, x.dtype) == "wo_split", m
        assert rel_err(layer(x), x.double() @ dense.T) < 1e-2, m
    x = torch.randn(12, 4096, device="cuda", dtype=torch.bfloat16)
    assert rel_err(replayed(layer, x), x.double() @ dense.T) < 1e-2, "graph"
