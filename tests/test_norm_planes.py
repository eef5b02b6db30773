"""kernels/norm_planes.py on the CPU: the graph pass finds a decoder layer's residual add, RMSNorm and x_planes under
torch.compile and puts norm_planes in their place (stand-in ops with the reference as their CPU kernels, since
qtool_cuda exists only on CUDA), the compiled result equals the eager one, and the pass leaves alone what the kernel
cannot take or what it would change (the norm's output used elsewhere, K not a multiple of 64). Then the route:
with NORM_PLANES a layer with norm_input takes the planes at one token on any shape. The kernel itself against this
reference: tests/test_norm_planes_gpu.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_routes import Recorder

from qtool_kernels import fakes, int8_planes, layout, norm_planes, reference, weight_only
from qtool_kernels.layout import pack_weight

Tensor = torch.Tensor


@torch.library.custom_op("qtool_npt::x_planes", mutates_args=())
def _x_planes(x: Tensor, pdl: int = 0, natural: int = 0, gated: int = 0) -> tuple[Tensor, Tensor]:
    return reference.x_planes(x, bool(natural))


CALLS: list[bool] = []  # per call of the norm_planes stand-in: whether it was given the residual


@torch.library.custom_op("qtool_npt::norm_planes", mutates_args=())
def _norm_planes(x: Tensor, residual: Tensor | None, weight: Tensor, eps: float, pdl: int = 0,
                 natural: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    CALLS.append(residual is not None)
    s, planes, xscale = reference.norm_planes(x, residual, weight, eps, bool(natural))
    return s.clone(), planes, xscale  # (an output may not alias an input: s is x itself without residual)


_x_planes.register_fake(fakes.x_planes)
_norm_planes.register_fake(fakes.norm_planes)
OPS = torch.ops.qtool_npt


@pytest.fixture(autouse=True)
def _pass_use_restored():
    """make_pass marks a pass in use for the process (norm_planes.IN_USE): put the mark back for the tests after."""
    before = norm_planes.IN_USE[0]
    yield
    norm_planes.IN_USE[0] = before


def _layer(residual, out, weight, with_add=True, keep_norm=False):
    """A decoder layer's tail as transformers and QuantLinear write it: the add, the norm module's F.rms_norm, the
    rows reshaped to [m, K] and their planes (a stand-in GEMV consumes them)."""
    s = residual + out if with_add else out
    n = F.rms_norm(s, (s.shape[-1],), weight, 1e-5)
    rows = n.reshape(-1, n.shape[-1])
    if rows.shape[1] % 64:  # padded to the weight's K as weight_only._kernel_input does
        rows = F.pad(rows, (0, 64 - rows.shape[1] % 64))
    planes, xscale = OPS.x_planes(rows, 1)
    y = reference.planes_to_x(planes, xscale).sum(-1) + s.float().sum((0, 1))[:1]
    return (s * 2, y, n) if keep_norm else (s * 2, y)


def _compiled(fn, *args, **kwargs):
    torch._dynamo.reset()
    graph_pass = norm_planes.make_pass(OPS, "cpu")
    options = {"post_grad_custom_pre_pass": graph_pass, "fx_graph_cache": False}  # a cached graph skips the pass
    out = torch.compile(fn, options=options)(*args, **kwargs)
    torch._dynamo.reset()
    return out, graph_pass.rewrites


def _inputs(k=256, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    residual, out = (torch.randn(2, 1, k, generator=g).to(dtype) for _ in range(2))
    return residual, out, (torch.rand(k, generator=g) + 0.5).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("with_add", [True, False])
def test_pass_folds_add_norm_and_planes(dtype, with_add):
    """One rewrite per layer; the sum exact and the reconstructed rows within the planes' bound (s / 508) plus one
    unit of the norm's rounding (the reference rounds once, the eager CPU norm may differ by a unit) of eager's."""
    args = _inputs(dtype=dtype, seed=1 + with_add)
    CALLS.clear()
    (s2, y), rewrites = _compiled(_layer, *args, with_add=with_add)
    want_s2, want_y = _layer(*args, with_add=with_add)
    assert rewrites == 1 and CALLS == [with_add]
    torch.testing.assert_close(s2, want_s2, rtol=0, atol=0)
    unit = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    bound = float(want_y.abs().max()) * unit + 1e-3
    assert float((y - want_y).abs().max()) <= bound


def test_pass_leaves_a_norm_used_elsewhere():
    """The norm's output also returned: folding would drop it, so the pattern does not match; results as eager."""
    args = _inputs(seed=3)
    (s2, y, n), rewrites = _compiled(_layer, *args, keep_norm=True)
    assert rewrites == 0
    want = _layer(*args, keep_norm=True)
    torch.testing.assert_close(s2, want[0], rtol=0, atol=0)
    torch.testing.assert_close(n.float(), want[2].float(), rtol=2e-2, atol=2e-2)


def test_pass_leaves_what_the_kernel_cannot_take():
    """K = 96, padded to 128 before x_planes (as the weight is): no rewrite, the x_planes stand-in runs."""
    args = _inputs(k=96, seed=4)
    (_, y), rewrites = _compiled(_layer, *args)
    assert rewrites == 0 and torch.isfinite(y).all()


def test_pass_leaves_a_broadcast_add_to_inductor():
    """A residual of one row added to two (a broadcast the kernel does not do): only the norm and the planes are
    folded (one rewrite, the norm-alone pattern), the add stays Inductor's; eager's results."""
    residual, out, weight = _inputs(seed=6)
    CALLS.clear()
    (s2, y), rewrites = _compiled(_layer, residual[:1], out, weight)
    want_s2, want_y = _layer(residual[:1], out, weight)
    assert rewrites == 1 and CALLS == [False]
    torch.testing.assert_close(s2, want_s2, rtol=0, atol=0)
    assert float((y - want_y).abs().max()) <= float(want_y.abs().max()) * 2.0**-7 + 1e-3


def test_reference_norm_planes_matches_its_parts():
    """reference.norm_planes = the rounded sum, then x_planes of the norm rounded once; without residual, of x."""
    residual, out, weight = _inputs(seed=5)
    residual, out = residual[:, 0], out[:, 0]
    s, planes, xscale = reference.norm_planes(out, residual, weight, 1e-5)
    assert torch.equal(s, (residual.float() + out.float()).to(torch.bfloat16))
    n = (s.float() * torch.rsqrt(s.float().pow(2).mean(-1, keepdim=True) + 1e-5) * weight.float()).bfloat16()
    want_planes, want_scale = reference.x_planes(n)
    assert torch.equal(planes, want_planes) and torch.equal(xscale, want_scale)
    s0, planes0, _ = reference.norm_planes(out, None, weight, 1e-5, natural=True)
    assert s0.numel() == 0 and planes0.shape == (2 * out.shape[0], out.shape[1])


def test_route_takes_free_planes_with_norm_input(monkeypatch):
    """NORM_PLANES: under torch.compile, with the pass in use, a layer whose input is an RMSNorm's (norm_input) takes
    x_planes + wo_planes_gemv at one token on 4096 x 4096, where the measured rule keeps the ring GEMV (the pass then
    folds x_planes into the norm); without the switch, the flag, compilation or a pass, the ring GEMV."""
    recorder = Recorder()
    w = pack_weight(torch.zeros(16, 64, dtype=torch.int8), torch.ones(16, 1), None, None, 4, -1)
    w = layout.PackedWeight(w.qweight.new_zeros(4096 // 16, 4096 // 64, 32, 4), w.scale, None, None, 4, -1, 4096, 4096)

    def calls(norm_input, compiling, switch, in_use=True):
        monkeypatch.setattr(int8_planes, "NORM_PLANES", switch)
        monkeypatch.setattr(norm_planes, "IN_USE", [in_use])
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
        recorder.calls.clear()
        weight_only.packed_linear(torch.randn(1, 4096, dtype=torch.bfloat16), w, None, recorder, None, False,
                                  norm_input)
        return recorder.calls

    assert calls(True, True, True) == [("x_planes",), ("wo_planes_gemv", 0)]
    for args in ((False, True, True), (True, False, True), (True, True, False), (True, True, True, False)):
        assert calls(*args) == [("wo_gemv", 2)], args


def test_pass_rewrites_every_norm_of_a_fused_llama(monkeypatch):
    """transformers' Llama decoder layers, fused as `qtool bench` fuses them (gate/up, q/k/v, the norms), their fused
    layers' inputs taken as planes the way packed_linear takes them (rows reshaped, then x_planes): one rewrite per
    norm before a fused layer (layer 0's input norm alone, the three others with their residual add), and the
    compiled logits as eager's."""
    from quantize.cli_tools import bench_plan
    from quantize.fusion import fuse_projections
    from quantize.linear import QuantLinear
    from quantize.mlp import fuse_mlps
    from quantize.norms import fuse_norms
    from quantize.quantizer import quantize_model
    from quantize.shapes import random_model

    model = random_model("tiny", dtype=torch.bfloat16)
    quantize_model(model, bench_plan("w8a16", None), device="cpu", progress=False)
    fuse_mlps(model)
    fuse_projections(model)
    fuse_norms(model)
    original = QuantLinear.forward

    def planes_forward(self, x):
        if not self.norm_input:
            return original(self, x)
        planes, xscale = OPS.x_planes(x.reshape(-1, x.shape[-1]), 1)
        return original(self, reference.planes_to_x(planes, xscale).to(x.dtype).view(x.shape))

    monkeypatch.setattr(QuantLinear, "forward", planes_forward)
    ids = torch.tensor([[3]])
    with torch.no_grad():
        eager = model(ids, use_cache=False).logits.float()
        compiled, rewrites = _compiled(lambda t: model(t, use_cache=False).logits, ids)
    assert rewrites == 2 * model.config.num_hidden_layers
    assert float((compiled.float() - eager).norm() / eager.norm()) < 2e-2


def test_bench_runs_on_without_the_pass_where_it_cannot_be_made(monkeypatch):
    """A torch whose pattern API the pass cannot use: qtool bench's compile options leave it out with a warning that
    says why, and the routes do not count the planes as free (no pass in use)."""
    from qtool_kernels import build
    from quantize import bench

    def broken(*args, **kwargs):
        raise TypeError("register_replacement() got an unexpected keyword argument 'scalar_workaround'")

    monkeypatch.setattr(build, "loaded", lambda: True)
    monkeypatch.setattr(norm_planes, "make_pass", broken)
    monkeypatch.setattr(norm_planes, "IN_USE", [False])
    with pytest.warns(RuntimeWarning, match="norm_planes graph pass is off: TypeError"):
        options = bench.decode_compile_options()
    assert "post_grad_custom_pre_pass" not in options and not norm_planes.IN_USE[0]

