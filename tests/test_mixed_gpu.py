"""The Hopper W4A16 and W8A16 GEMMs (kernels/mixed_mm.py, csrc/sm90/mixed_mm_sm90.cu) against float64 on
fresh random weights: symmetric and asymmetric, groups of 64 and 128, per channel, a ragged last group
(K = 576 at g128), N not a multiple of the 128-row tile, every token tile (m from 17 to 4096), token tiles
smaller than the batch, clusters of two row tiles, and every schedule the measured routes (kernels/tuning.py)
can name.

Bound: relative Frobenius error <= 1e-2 against x . dequant(W)^T in float64 (the kernel's bf16 scales
and zeros, and its bf16 output, give ~3e-3); the mma.sync path is held to the same bound.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import poison_cache, rel_err
from qtool_kernels import mixed_mm, sm90
from qtool_kernels.layout import PackedWeight, dequantize_packed, pack_weight, unpack_codes
from qtool_kernels.weight_only import packed_linear

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def hopper(kernels):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the W4A16 wgmma GEMM is for Hopper (sm_90)")
    assert mixed_mm.available(), "libqtool_sm90_mixed did not build or load"
    return kernels


def random_weight(n: int, k: int, group: int, symmetric: bool, seed: int, bits: int = 4) -> PackedWeight:
    assert mixed_mm.available(bits), f"the {bits}-bit library did not build or load"
    g = torch.Generator(device="cuda").manual_seed(seed)
    groups = 1 if group <= 0 else -(-k // group)
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    codes = torch.randint(lo, hi, (n, k), device="cuda", dtype=torch.int8, generator=g)
    scale = torch.rand(n, groups, device="cuda", generator=g) / 50 + 1e-3
    zero = None if symmetric else torch.randint(lo, hi, (n, groups), device="cuda", dtype=torch.int8, generator=g)
    p = pack_weight(codes, scale, zero, None, bits, group)
    p.mixed = mixed_mm.pack_mixed(unpack_codes(p.qweight, bits), p.scale, p.zero, p.group_size, bits)
    assert p.mixed.bits == bits
    return p


@pytest.mark.parametrize("k,n,group,symmetric", [(4096, 4096, 128, True), (4096, 1000, 128, False),
                                                  (576, 1536, 128, False), (1024, 768, 64, True),
                                                  (2048, 512, -1, False)])
@pytest.mark.parametrize("m", [5, 17, 32, 33, 64, 100, 128, 256, 1000, 4096])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("ktile", [64, 128])
def test_mixed_mm_matches_float64(hopper, k, n, group, symmetric, m, bits, ktile):
    p = random_weight(n, k, group, symmetric, seed=k + n + m, bits=bits)
    if not mixed_mm.takes_ktile(ktile, m, p.mixed.group, p.k_padded):
        pytest.skip(f"no {ktile}-k tiles for m={m}, group={group}")
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    poison_cache()
    y = mixed_mm.mixed_linear(F.pad(x, (0, p.k_padded - k)), p.mixed, ktile=ktile)[:, :n]
    ref = x.double() @ dequantize_packed(p.qweight, p.scale, p.zero, bits, p.group_size, n, torch.float64)[:, :k].T
    assert y.shape == (m, n) and y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) <= 1e-2


@pytest.mark.parametrize("bits", [4, 8])
def test_dispatch_uses_it_and_quantlinear_matches(hopper, bits):
    """QuantLinear's CUDA route builds the copy and sends batches of >= MIXED_MIN_M tokens to it."""
    from quantize.linear import QuantLinear, prepare_for_cuda
    from quantize.primitives import QTensor
    from quantize.scheme import QuantArgs, QuantScheme

    args = QuantArgs(num_bits=bits, group_size=128, symmetric=False)
    w = torch.randn(512, 576, device="cuda") * 0.05
    from quantize.primitives import choose_qparams, quantize

    scale, zp = choose_qparams(w, args)
    layer = QuantLinear.from_qtensor(QTensor(quantize(w, scale, zp, args), scale, zp, args), QuantScheme(weights=args))
    packed = prepare_for_cuda(layer)
    assert packed is not None and packed.mixed is not None and packed.mixed.bits == bits
    x = torch.randn(3, 40, 576, device="cuda", dtype=torch.bfloat16)
    y = layer(x)
    ref = x.double() @ layer.dequantize_weight(torch.float64).T
    assert rel_err(y, ref) <= 1e-2
    y_small = layer(x[:1, :2])  # the GEMV
    assert rel_err(y_small, ref[:1, :2]) <= 1e-2
    assert torch.allclose(packed_linear(x.reshape(-1, 576), packed, None, hopper).reshape(y.shape), y)


def test_w4_mm_in_cuda_graph(hopper):
    p = random_weight(1024, 1024, 128, False, seed=5)
    x = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16)
    eager = mixed_mm.mixed_linear(x, p.mixed)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mixed_mm.mixed_linear(x, p.mixed)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, eager)


@pytest.mark.parametrize("split,pingpong,ktile", [(1, 0, 64), (4, 0, 64), (-1, 0, 64), (0, 1, 64), (3, 1, 64),
                                                  (0, 0, 128), (4, 0, 128), (-1, 0, 128)])
@pytest.mark.parametrize("m", [5, 17, 64, 128, 200])
@pytest.mark.parametrize("bits", [4, 8])
def test_mixed_mm_schedules(hopper, split, pingpong, ktile, m, bits):
    """Every schedule the dispatcher or the benchmark can pick: no split, split-K, stream-K, ping-pong,
    stages of 64 or 128 k."""
    n, k = 768, 2048
    p = random_weight(n, k, 128, False, seed=m + split, bits=bits)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    if not mixed_mm.takes_ktile(ktile, m, p.mixed.group, k, pingpong):
        with pytest.raises(ValueError, match="ktile"):
            mixed_mm.mixed_linear(x, p.mixed, split=split, pingpong=pingpong, ktile=ktile)
        return
    if pingpong and m > 64:  # ping-pong tiles hold up to 64 tokens
        with pytest.raises(ValueError, match="pingpong"):
            mixed_mm.mixed_linear(x, p.mixed, split=split, pingpong=pingpong, ktile=ktile)
        return
    poison_cache()
    y = mixed_mm.mixed_linear(x, p.mixed, split=split, pingpong=pingpong, ktile=ktile)[:, :n]
    ref = x.double() @ dequantize_packed(p.qweight, p.scale, p.zero, bits, p.group_size, n, torch.float64)[:, :k].T
    assert rel_err(y, ref) <= 1e-2


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("k,n,group", [(4096, 1000, 128), (576, 1536, 128), (2048, 512, -1)])
@pytest.mark.parametrize("m", [1, 5, 16, 17, 33, 64])
@pytest.mark.parametrize("split", [0, -1])
@pytest.mark.parametrize("bits", [4, 8])
def test_mixed_mm_256_row_tiles(hopper, symmetric, k, n, group, m, split, bits):
    """256-row tiles (variant 1: ktile 128, m <= 64)."""
    p = random_weight(n, k, group, symmetric, seed=k + n + m, bits=bits)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    poison_cache()
    y = mixed_mm.mixed_linear(F.pad(x, (0, p.k_padded - k)), p.mixed, split=split, ktile=128, variant=1)[:, :n]
    ref = x.double() @ dequantize_packed(p.qweight, p.scale, p.zero, bits, p.group_size, n, torch.float64)[:, :k].T
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) <= 1e-2


@pytest.mark.parametrize("variant,ktile,token_tile", [(0, 64, 32), (0, 64, 64), (0, 128, 16), (0, 128, 64),
                                                      (1, 128, 32), (2, 64, 0), (2, 64, 64), (2, 64, 128)])
@pytest.mark.parametrize("m", [5, 100, 300])
@pytest.mark.parametrize("split", [0, 1, -1])
@pytest.mark.parametrize("k,n,group,symmetric", [(2048, 640, 128, False), (576, 768, 128, True)])
@pytest.mark.parametrize("bits", [4, 8])
def test_mixed_mm_token_tiles_and_clusters(hopper, variant, ktile, token_tile, m, split, k, n, group, symmetric,
                                           bits):
    """A token tile smaller than the batch (several token tiles per row tile) and clusters of two row tiles
    (variant 2; 640 rows = an odd count of 128-row tiles, so one cluster is half empty)."""
    p = random_weight(n, k, group, symmetric, seed=k + m + variant + token_tile, bits=bits)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    poison_cache()
    y = mixed_mm.mixed_linear(F.pad(x, (0, p.k_padded - k)), p.mixed, split=split, ktile=ktile, variant=variant,
                              token_tile=token_tile)[:, :n]
    ref = x.double() @ dequantize_packed(p.qweight, p.scale, p.zero, bits, p.group_size, n, torch.float64)[:, :k].T
    assert torch.isfinite(y).all()
    assert rel_err(y, ref) <= 1e-2


def test_sm90_libraries_export_only_their_entry_points(hopper):
    """Each Hopper library exports its C entry points and, of the rest, only what libstdc++'s headers declare
    visible (std::ctype<char>::do_widen): CUTLASS's inline host functions exported by libqtool_sm90
    (RTLD_GLOBAL) once served the mixed library's cluster launches (session 13)."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    for lib in sm90.ALL:
        if lib.load():
            out = subprocess.run([nm, "-D", "--defined-only", str(lib.path())], capture_output=True, text=True)
            names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
            others = [name for name in names if not name.startswith("qtool_sm90")]
            assert len(others) < len(names) and all(re.match(r"_ZN?K?St|_ZSt", name) for name in others), others


def test_cluster_gemm_after_the_w8a8_library_loaded(hopper):
    """A 2-CTA cluster launch of the mixed GEMM in a process that loaded libqtool_sm90 first (the order that
    failed in session 13); in a child process, so that no earlier test has loaded the mixed library."""
    script = """
import torch, torch.nn.functional as F, sys
sys.path.insert(0, "tests")
import quantize
from qtool_kernels import build, mixed_mm, sm90
from qtool_kernels.layout import dequantize_packed
from test_mixed_gpu import random_weight
build.load_extension()
assert sm90.ALL[0].load()
p = random_weight(768, 2048, 128, True, seed=1)
x = torch.randn(100, 2048, device="cuda", dtype=torch.bfloat16)
y = mixed_mm.mixed_linear(x, p.mixed, ktile=64, variant=2)
ref = x.double() @ dequantize_packed(p.qweight, p.scale, p.zero, 4, 128, 768, torch.float64).T
print("rel_err", float((y.double() - ref).norm() / ref.norm()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) < 1e-2


def test_mixed_mm_configuration_rules(hopper):
    p = random_weight(512, 1024, 128, True, seed=1)
    x = torch.randn(65, 1024, device="cuda", dtype=torch.bfloat16)
    for variant, ktile, m in ((1, 64, 16), (1, 128, 65), (2, 128, 16), (3, 64, 16)):
        with pytest.raises(ValueError, match="variant"):
            mixed_mm.mixed_linear(x[:m], p.mixed, ktile=ktile, variant=variant)
    with pytest.raises(ValueError, match="token_tile=300"):
        mixed_mm.mixed_linear(x, p.mixed, token_tile=300)
    with pytest.raises(ValueError, match="pingpong"):
        mixed_mm.mixed_linear(x, p.mixed, pingpong=1, token_tile=128)


@pytest.mark.parametrize("bits", [4, 8])
def test_shuffle_is_a_permutation(hopper, bits):
    """shuffle_codes moves every code once: the output holds the input's codes, each as often (a slot written
    twice or never would change the counts). The GEMM tests check where they go."""
    n, k = 64, 256
    codes = (torch.arange(n * k, device="cuda") % (1 << bits) - (1 << (bits - 1))).to(torch.int8).view(n, k)
    w = mixed_mm.shuffle_codes(codes, bits)
    if bits == 4:
        got = torch.stack([(w & 0xF).to(torch.int16), (w >> 4).to(torch.int16)], -1).flatten()
        want = codes.flatten().to(torch.int16) & 0xF
    else:
        got, want = w.flatten().to(torch.int16), codes.flatten().to(torch.int16)
    assert torch.equal(torch.sort(got).values, torch.sort(want).values)
