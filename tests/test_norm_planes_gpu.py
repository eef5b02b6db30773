"""GPU tests of norm_planes (csrc/norm_planes.cu) and its graph pass (kernels/norm_planes.py): the kernel against
reference.norm_planes on fresh random rows (both dtypes, K from 576 to 28672, 1-16 tokens, with and without the
residual, slot and natural order), and a small quantized Llama whose decode forward, compiled with the pass,
rewrites every norm before a planes GEMV and gives the eager model's logits."""

from __future__ import annotations

import pytest
import torch

from conftest import rel_err
from qtool_kernels import int8_planes, norm_planes, reference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _pass_use_restored():
    """make_pass marks a pass in use for the process (norm_planes.IN_USE): put the mark back for the tests after."""
    before = norm_planes.IN_USE[0]
    yield
    norm_planes.IN_USE[0] = before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [576, 4096, 14336, 28672])
def test_kernel_matches_reference(kernels, dtype, k):
    """The sum bit for bit; the scales within two units of the norm's rounding (the largest |n| may round the other
    way: the sum of squares adds in another order); the planes' rows within s / 508 of each side plus one unit of
    the norm's rounding of the reference's n; where a row's scale is the reference's, at most 1% of its bytes
    different (an element whose n rounds the other way)."""
    unit = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    for m in (1, 3, 16):
        g = torch.Generator(device="cuda").manual_seed(k + m)
        x, residual = (torch.randn(m, k, device="cuda", generator=g).to(dtype) for _ in range(2))
        x[0, 7] *= 25
        weight = (torch.rand(k, device="cuda", generator=g) + 0.5).to(dtype)
        for with_residual in (True, False):
            for natural in (0, 1):
                res = residual if with_residual else None
                s, planes, xscale = kernels.norm_planes(x, res, weight, 1e-5, 1, natural)
                want_s, want_planes, want_scale = reference.norm_planes(x, res, weight, 1e-5, bool(natural))
                case = f"k={k} m={m} residual={with_residual} natural={natural}"
                assert torch.equal(s, want_s), case
                torch.testing.assert_close(xscale, want_scale, rtol=2 * unit, atol=0, msg=case)
                got = reference.planes_to_x(planes, xscale, bool(natural))
                n = reference.planes_to_x(want_planes, want_scale, bool(natural))  # n within s / 508
                bound = want_scale[:, None] * (2.1 / 508) + n.abs() * 2 * unit
                assert ((got - n).abs() <= bound).all(), case
                same = (xscale == want_scale).repeat_interleave(2)  # planes rows 2r, 2r + 1: token r's
                assert (planes[same] != want_planes[same]).float().mean().nan_to_num() < 0.01, case


def test_refuses_bad_rows_by_name(kernels):
    x = torch.randn(2, 4096, device="cuda", dtype=torch.bfloat16)
    weight = torch.ones(4096, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="k must be a positive multiple of 64"):
        kernels.norm_planes(x[:, :100].contiguous(), None, weight[:100], 1e-5)
    with pytest.raises(RuntimeError, match="residual must be"):
        kernels.norm_planes(x, x[:1], weight, 1e-5)
    with pytest.raises(RuntimeError, match="weight must be"):
        kernels.norm_planes(x, None, weight.float(), 1e-5)


def test_compiled_llama_rewrites_every_norm_before_planes(kernels, monkeypatch):
    """A 2-layer Llama (hidden 256) quantized W4A16 g128, q/k/v, gate/up and the norms fused as `qtool bench` fuses
    them, one token compiled with NORM_PLANES and the pass: four rewrites (layer 0's input norm alone, the other
    three with their residual add), logits within 2% of the eager model's (which runs the ring GEMV on bf16 rows)."""
    from quantize.cli_tools import bench_plan
    from quantize.fusion import fuse_projections
    from quantize.mlp import fuse_mlps
    from quantize.norms import fuse_norms
    from quantize.quantizer import quantize_model
    from quantize.shapes import TINY, random_model

    config = {**TINY, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
              "num_key_value_heads": 2}
    model = random_model(config, dtype=torch.bfloat16, device="cuda")
    quantize_model(model, bench_plan("w4a16", None), device="cuda", progress=False)
    fuse_mlps(model)  # gate/up first, as qtool bench's _fuse
    fuse_projections(model)
    fuse_norms(model)
    ids = torch.tensor([[3]], device="cuda")
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits.float()
        monkeypatch.setattr(int8_planes, "NORM_PLANES", True)
        graph_pass = norm_planes.make_pass()
        torch._dynamo.reset()
        options = {"post_grad_custom_pre_pass": graph_pass, "fx_graph_cache": False}
        compiled = torch.compile(lambda t: model(t, use_cache=False).logits, options=options)(ids).float()
        torch._dynamo.reset()
    assert graph_pass.rewrites == 4
    assert rel_err(compiled, eager) < 2e-2


@pytest.mark.parametrize("bits, symmetric", [(4, True), (4, False), (3, True)])
def test_gated_planes_epilogue_equals_gemv_then_silu_mul(kernels, bits, symmetric):
    """wo_planes_gemv with the gated flag (32) on interleaved gate / up rows, against the plain launch followed by the
    interleaved silu_mul kernel: the same bits, at 1-8 tokens (one and two n-tiles, symmetric 4-bit) and every
    stripe count; and that silu_mul kernel against the reference, bit for bit."""
    from conftest import random_qtensor
    from qtool_kernels.layout import pack_weight

    k, n = 4096, 1024 + 32
    qt, _, _ = random_qtensor(bits, 128, symmetric, False, k, n, seed=bits + symmetric)
    p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, 128)
    for m in range(1, 9 if bits == 4 and symmetric else 5):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        planes, xscale = kernels.x_planes(x, 1)
        for variant in (0, 1, 2):
            args = (planes, xscale, p.qweight, p.scale, p.zero, None, p.group_size, n, torch.bfloat16)
            y = kernels.wo_planes_gemv(*args, variant + 16, bits)
            gated = kernels.wo_planes_gemv(*args, variant + 16 + 32, bits)
            product = kernels.silu_mul(y, 2)
            assert torch.equal(gated, product), (m, variant)
            assert torch.equal(product, reference.silu_mul(y, interleaved=True)), (m, variant)
    with pytest.raises(RuntimeError, match="plus 32 for interleaved gate/up rows"):
        kernels.wo_planes_gemv(*args, 3 + 16 + 32, bits)  # the tile kernel has no gated epilogue


def test_interleaved_mlp_on_cuda_matches_halves(kernels, monkeypatch):
    """A W4A16 Llama (hidden 256) with its MLPs fused as halves and interleaved (GATED_EPILOGUE): at 3 tokens (the
    planes route on every shape, the product from the GEMV's epilogue) and at 16 (silu_mul on the interleaved
    output), eager and compiled, the same logits within 1e-3."""
    import copy

    from quantize import mlp as gated_mlp
    from quantize.cli_tools import bench_plan
    from quantize.quantizer import quantize_model
    from quantize.shapes import TINY, random_model

    model = random_model({**TINY, "hidden_size": 256, "intermediate_size": 512}, dtype=torch.bfloat16, device="cuda")
    quantize_model(model, bench_plan("w4a16", None), device="cuda", progress=False)
    halves, interleaved = model, copy.deepcopy(model)
    monkeypatch.setattr(gated_mlp, "GATED_EPILOGUE", False)
    gated_mlp.fuse_mlps(halves)
    monkeypatch.setattr(gated_mlp, "GATED_EPILOGUE", True)
    gated_mlp.fuse_mlps(interleaved)
    with torch.no_grad():
        for tokens in (3, 16):
            ids = torch.arange(1, tokens + 1, device="cuda")[None]
            want = halves(ids, use_cache=False).logits
            assert rel_err(interleaved(ids, use_cache=False).logits, want) < 1e-3, tokens
            compiled = []
            for model in (halves, interleaved):  # compiled against compiled: Inductor's norms round as eager's do not
                torch._dynamo.reset()
                compiled.append(torch.compile(lambda t, model=model: model(t, use_cache=False).logits)(ids))
            torch._dynamo.reset()
            assert rel_err(compiled[1], compiled[0]) < 1e-3, tokens
