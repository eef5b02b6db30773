"""wo_gemm (csrc/wo_gemm.cu) against float64 on shapes that split k (few row blocks, deep k), ragged k (576: a last
piece of half a group), rows not a multiple of 16, groups smaller than a 128-k piece (parameters loaded at each group
boundary) and of one or more pieces (loaded a piece ahead with the codes), bias and SiLU, 1 to 130 tokens.

Run on a GPU (dev/gpu_check.sh); output memory is poisoned with NaN first, so an unwritten element fails.
"""

from __future__ import annotations

import pytest
import torch

from conftest import poison_cache, random_qtensor, rel_err
from qtool_kernels.layout import pack_weight

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# (bits, group, symmetric, k, n): split k at small m (n = 200: two row blocks, the second with idle warps)
CASES = [(4, 128, True, 4096, 200), (4, 128, False, 576, 200), (4, 32, False, 4096, 1536), (4, -1, True, 14336, 512),
         (8, -1, True, 4096, 200), (8, 64, False, 576, 1536), (8, 256, True, 8192, 200)]
TOKENS = (1, 7, 8, 9, 16, 17, 32, 33, 64, 65, 130)


def test_matches_float64(kernels):
    for bits, group, symmetric, k, n in CASES:
        qt, _, dense = random_qtensor(bits, group, symmetric, False, k, n, seed=k + n)
        p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, group)
        bias = torch.randn(n, device="cuda")
        for dtype in (torch.bfloat16, torch.float16):
            for m in TOKENS:
                x = torch.randn(m, k, device="cuda", dtype=dtype)
                xp = torch.nn.functional.pad(x, (0, p.k_padded - k))
                ref = torch.nn.functional.silu(x.double() @ dense.T + bias.double())
                poison_cache()
                out = kernels.wo_gemm(xp, p.qweight, p.scale, p.zero, bias, bits, p.group_size, n, "silu")
                assert out.shape == (m, n) and rel_err(out, ref) < 1e-2, (bits, group, symmetric, k, n, m, dtype)


def test_split_inside_graph_capture(kernels):
    """A split call captured in a CUDA graph (its split sums and finishing kernel inside the graph): replays
    match an eager call."""
    qt, _, _ = random_qtensor(4, 128, True, False, 4096, 200, seed=3)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, 128)
    x = torch.randn(16, p.k_padded, device="cuda", dtype=torch.bfloat16)
    args = (p.qweight, p.scale, p.zero, None, 4, p.group_size, 200, "none")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            captured = kernels.wo_gemm(x, *args)
        for _ in range(3):
            graph.replay()
        stream.synchronize()
        eager = kernels.wo_gemm(x, *args)
    torch.cuda.synchronize()
    assert rel_err(captured, eager) < 1e-2  # split sums added in another order
