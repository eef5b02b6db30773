"""wo_gemv's variant 3, "stream" (csrc/wo_stream.cu, session 14): every code width, group size and zero-point mode
at 1-32 tokens, in each of its three launch shapes (chosen by the row count: one 16-warp stripe up to 6144 rows,
two 8-warp stripes above at <= 8 tokens, one 8-warp stripe above at more; each forced on every layer in a child
process), against the float64 product of the checkpoint tensors on fresh random inputs. Tolerance as the other kernel tests:
relative Frobenius error below 1e-2 (outputs are rounded to bf16/fp16, 2^-8 relative; products are exact, sums
float32). Every output lands in memory poisoned with NaN first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import poison_cache, random_qtensor, rel_err
from qtool_kernels.layout import EPILOGUE, pack_weight

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DTYPES = [torch.bfloat16, torch.float16]
# (bits, group size): 2- and 3-bit groups are >= 32 (128-k chunks of 4 groups at most), 4- and 8-bit >= 16
CASES = [(b, gs) for b in (2, 3, 4, 8) for gs in (16, 32, 64, 128, -1) if not (b in (2, 3) and gs == 16)]
# K x N: ragged K (576 pads to 640 for 2-/3-bit; 4160 and 320 are not multiples of 128) and N (not multiples of
# 16 or of two stripes): one 16-warp stripe per block (13 and 263 stripes), two stripes per block (1025 stripes:
# the last block's second stripe is past the end; one 8-warp stripe past 8 tokens)
SHAPES = [(576, 200), (4160, 4200), (320, 16392)]
TOKENS = [1, 2, 5, 8, 9, 13, 16, 17, 24, 32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits,group_size", CASES)
@pytest.mark.parametrize("k,n", SHAPES)
def test_stream_matches_float64(kernels, bits, group_size, symmetric, dtype, k, n):
    qt, _, dense = random_qtensor(bits, group_size, symmetric, False, k, n, seed=k + n + bits)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, group_size)
    bias = torch.randn(n, device="cuda")
    for m in TOKENS:
        x = torch.randn(m, p.k_padded, device="cuda", dtype=dtype)
        poison_cache()
        out = kernels.wo_gemv(x, p.qweight, p.scale, p.zero, bias, bits, p.group_size, n, EPILOGUE, None, 3)
        ref = x[:, :k].double() @ dense.T + bias.double()  # padded columns of the weight dequantize to 0
        assert out.dtype == dtype and out.shape == (m, n)
        assert rel_err(out, ref) < 1e-2, f"m={m}"


def test_stream_with_prefetch_and_without_bias(kernels):
    """The L2 prefetch of the next layer's weight changes nothing in the result."""
    k, n = 4096, 1536
    qt, _, dense = random_qtensor(4, 128, False, False, k, n, seed=3)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, 128)
    nxt = torch.randn(1 << 20, device="cuda")
    for m in (1, 7, 32):
        x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
        out = kernels.wo_gemv(x, p.qweight, p.scale, p.zero, None, 4, p.group_size, n, EPILOGUE, nxt, 3)
        assert rel_err(out, x.double() @ dense.T) < 1e-2, f"m={m}"


def test_token_limits_name_the_variant(kernels):
    """Variant 3 takes up to 32 tokens, the others 8: more is refused with a message naming both."""
    qt, _, _ = random_qtensor(4, 128, True, False, 256, 64, seed=4)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, 4, 128)
    args = (p.qweight, p.scale, p.zero, None, 4, p.group_size, 64, EPILOGUE, None)
    with pytest.raises(RuntimeError, match="at most 32 tokens with variant 3"):
        kernels.wo_gemv(torch.randn(33, p.k_padded, device="cuda", dtype=torch.bfloat16), *args, 3)
    with pytest.raises(RuntimeError, match="at most 8 tokens with variant 0"):
        kernels.wo_gemv(torch.randn(9, p.k_padded, device="cuda", dtype=torch.bfloat16), *args, 0)
    # 4-6: the planes (test_kernels_gpu.py), 7: the split variant (test_split_gpu.py, since session 58)
    with pytest.raises(RuntimeError, match="variant must be 0 .* got 8"):
        kernels.wo_gemv(torch.randn(1, p.k_padded, device="cuda", dtype=torch.bfloat16), *args, 8)


FORCED_CHECK = """
import sys, torch
sys.path.insert(0, "tests")
from conftest import random_qtensor, rel_err
from qtool_kernels import build
from qtool_kernels.layout import EPILOGUE, pack_weight
ops = build.load_extension()
worst = 0.0
for bits, gs in ((4, 128), (3, 64), (8, -1), (2, 32)):
    for k, n in ((576, 200), (320, 16392)):
        qt, _, dense = random_qtensor(bits, gs, False, False, k, n, seed=bits + n)
        p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, gs)
        for m in (1, 8, 16, 32):
            x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
            out = ops.wo_gemv(x, p.qweight, p.scale, p.zero, None, bits, p.group_size, n, EPILOGUE, None, 3)
            worst = max(worst, rel_err(out, x[:, :k].double() @ dense.T))
print(worst)
"""


@pytest.mark.parametrize("switches", ["1", "2", "3"])
def test_forced_shapes(kernels, switches):
    """QTOOL_WO_STREAM (read once per process, so a child process each) forces a launch shape (1, 2, 3) on
    layers that would take another: each agrees with the float64 product."""
    out = subprocess.run([sys.executable, "-c", FORCED_CHECK], capture_output=True, text=True,
                         env={**os.environ, "QTOOL_WO_STREAM": switches})
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-2
