"""Fused q/k/v and gate/up projections compute what the separate layers do, eager and compiled."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
from transformers import StaticCache
from typer.testing import CliRunner

from quantize.cli import app
from quantize.fusion import (
    FusedHead,
    FusedModelError,
    FusedTail,
    fuse_group,
    fuse_projections,
    incompatibility,
)
from quantize.linear import QuantLinear
from quantize.mlp import fuse_mlps
from quantize.norms import fuse_norms
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe, RecipeEntry
from quantize.scheme import QuantArgs, QuantScheme, Strategy, preset
from quantize.shapes import random_model

W4_G32_ASYM = QuantScheme(weights=QuantArgs(num_bits=4, symmetric=False, group_size=32))
W4_CHANNEL = QuantScheme(weights=QuantArgs(num_bits=4, strategy=Strategy.CHANNEL, group_size=None))
W8 = preset("w8a16")
# W8A8 too: q/k/v see one input, so per-token activation scales (and codes) are the same for the
# stacked layer as for each member.
SCHEMES = {"w4-g32-asym": W4_G32_ASYM, "w4-channel": W4_CHANNEL, "w8": W8, "w8a8-int8": preset("w8a8-int8"),
           "fp8": preset("fp8")}
# float32 throughout. The reference op dequantizes and multiplies row by row, and the stacked
# layer's rows are the members' rows, so the results agree to rounding of the matmul's blocking.
TOL = dict(rtol=1e-5, atol=1e-6)


def quantized_tiny(recipe: Recipe, calibration: list | None = None) -> torch.nn.Module:
    model = random_model("tiny", dtype=torch.float32)  # 2 blocks, hidden 64, 4 heads, 2 KV heads
    quantize_model(model, recipe, calibration=calibration, device="cpu", progress=False)
    return model


@pytest.fixture(scope="module", params=list(SCHEMES))
def pair(request):
    """(unfused, fused) copies of one quantized tiny Llama, and the fused group count."""
    model = quantized_tiny(Recipe.single(SCHEMES[request.param], "rtn"))
    fused = copy.deepcopy(model)
    return model, fused, fuse_projections(fused)


def ids(batch: int = 2, length: int = 9) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(0))


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


def test_fused_logits_equal_unfused(pair):
    model, fused, count = pair
    assert count == 2 * 2  # q/k/v and gate/up in each of 2 blocks
    attn, mlp = fused.model.layers[0].self_attn, fused.model.layers[0].mlp
    assert isinstance(attn.q_proj, FusedHead) and isinstance(attn.v_proj, FusedTail)
    assert attn.q_proj.fused.out_features == 64 + 32 + 32 and mlp.gate_proj.fused.out_features == 2 * 128
    torch.testing.assert_close(logits(fused, ids()), logits(model, ids()), **TOL)
    assert attn.q_proj.group.pending is None


def test_fusing_twice_fuses_nothing(pair):
    assert fuse_projections(copy.deepcopy(pair[1])) == 0


def test_mixed_schemes_are_left_alone():
    # k_proj and up_proj on another scheme: neither group qualifies.
    w8_some = QuantScheme(weights=W8.weights, targets=(r"k_proj$", r"up_proj$"))
    model = quantized_tiny(Recipe((RecipeEntry(w8_some, "rtn"), RecipeEntry(W4_G32_ASYM, "rtn"))))
    before = logits(model, ids())
    assert fuse_projections(model) == 0
    assert isinstance(model.model.layers[1].self_attn.q_proj, QuantLinear)
    assert torch.equal(logits(model, ids()), before)


@pytest.mark.parametrize("name, groups", [("fp8-static", 0), ("fp8-block", 2)])
def test_w8a8_groups_stack_only_whole_scales(name, groups):
    # fp8-static: one weight scale per tensor (per member): nothing fuses. fp8-block: 128-row blocks,
    # so gate/up (128 rows each) fuse and q/k/v (64, 32, 32 rows) stay apart.
    model = quantized_tiny(Recipe.single(preset(name), "rtn"), calibration=[ids(2, 32)])
    before = logits(model, ids())
    assert fuse_projections(model) == groups
    assert isinstance(model.model.layers[0].self_attn.q_proj, QuantLinear)
    torch.testing.assert_close(logits(model, ids()), before, **TOL)


def test_w8a8_static_scales_fuse_only_when_equal():
    scheme = preset("w8a8-int8-static")
    model = quantized_tiny(Recipe.single(scheme, "rtn"), calibration=[ids(2, 32)])
    for layer in model.modules():
        if isinstance(layer, QuantLinear):
            layer.input_scale.fill_(1.0)
    attn = model.model.layers[0].self_attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        proj.input_scale.fill_(0.03)
    attn.k_proj.input_scale.fill_(0.05)  # block 0's q/k/v differ; every other group shares 1.0
    before = logits(model, ids())
    fused = copy.deepcopy(model)
    assert fuse_projections(fused) == 3
    assert isinstance(fused.model.layers[0].self_attn.q_proj, QuantLinear)
    torch.testing.assert_close(logits(fused, ids()), before, **TOL)


def test_act_order_group_is_left_alone():
    # GPTQ act-order without static groups stores one input permutation (g_idx) per layer.
    scheme = QuantScheme(weights=QuantArgs(num_bits=4, group_size=32, actorder=True))
    model = random_model("tiny", dtype=torch.float32)
    quantize_model(model, Recipe.single(scheme, "gptq", {"static_groups": False}),
                   calibration=[ids(2, 32)], device="cpu", progress=False)
    before = logits(model, ids())
    assert fuse_projections(model) == 0
    assert isinstance(model.model.layers[0].mlp.gate_proj, QuantLinear)
    assert torch.equal(logits(model, ids()), before)


def test_missing_member_is_left_alone(pair):
    block = copy.deepcopy(pair[0].model.layers[0])
    assert not fuse_group(block, ("self_attn.q_proj", "self_attn.no_such_proj"))
    assert isinstance(block.self_attn.q_proj, QuantLinear)


def test_tail_without_its_head_computes_its_slice(pair):
    model, fused, _ = pair
    ref, got = model.model.layers[0].self_attn, fused.model.layers[0].self_attn
    x, other = torch.randn(2, 3, 64), torch.randn(2, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(got.k_proj(x), ref.k_proj(x), **TOL)  # no head call at all
        q = got.q_proj(x)
        torch.testing.assert_close(got.v_proj(other), ref.v_proj(other), **TOL)  # head saw another tensor
        k = got.k_proj(x)  # its slot: a view of the head's output, no copy
        torch.testing.assert_close(k, ref.k_proj(x), **TOL)
        assert k.untyped_storage().data_ptr() == q.untyped_storage().data_ptr()
        torch.testing.assert_close(got.k_proj(x), ref.k_proj(x), **TOL)  # slot taken: computes again
        torch.testing.assert_close(got.v_proj(x), ref.v_proj(x), **TOL)
    assert got.q_proj.group.pending is None


def _step(model, tokens, cache, positions):
    """One decode step as bench's token loop runs it: logits [B, 1, V] of the last position."""
    return model(input_ids=tokens, past_key_values=cache, cache_position=positions, use_cache=True,
                 logits_to_keep=1).logits


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_decode_step_equals_eager(backend):
    model = quantized_tiny(Recipe.single(W4_G32_ASYM, "rtn"))
    fused = copy.deepcopy(model)
    fuse_projections(fused)
    torch._dynamo.reset()
    step = torch.compile(_step, backend=backend, fullgraph=True)  # fullgraph: the stash must not break the graph
    prompt = ids(2, 5)
    out = {}
    for name, net, fn in (("eager", model, _step), ("compiled", fused, step)):
        cache = StaticCache(config=model.config, max_cache_len=8)
        with torch.no_grad():
            _step(net, prompt, cache, torch.arange(5))
            out[name] = torch.cat([fn(net, prompt[:, i:i + 1], cache, torch.tensor([5 + i])) for i in range(3)], 1)
    torch.testing.assert_close(out["compiled"], out["eager"], **TOL)
    assert fused.model.layers[0].mlp.gate_proj.group.pending is None  # nothing stashed outlives the graph


def test_fused_model_refuses_state_dict(pair):
    with pytest.raises(FusedModelError, match="save the model before|Save the model before"):
        pair[1].state_dict()


def test_bench_cli_fuses_by_default(tmp_path):
    """--fuse (the default): 4 projection groups, 2 of them gated MLPs (quantize/mlp.py), and the quantized
    model's 5 RMSNorms (quantize/norms.py); --no-fuse: none."""
    common = ["bench", "tiny", "--random-weights", "--scheme", "w8a16", "--device", "cpu", "--batch-sizes", "1",
              "--decode-tokens", "2", "--prefill-len", "8"]
    for flag, expected in (("--fuse", (4, 2, 5, True)), ("--no-fuse", (None, None, None, None))):
        out = tmp_path / f"{flag}.json"
        res = CliRunner().invoke(app, [*common, flag, "--json", str(out)])
        assert res.exit_code == 0, res.output
        fused = json.loads(out.read_text())
        assert (fused["fused_groups"], fused["fused_mlps"], fused["fused_norms"], fused["decode_attention"]) == expected
    assert "fused 4 projection groups" in CliRunner().invoke(app, common).output


def test_bench_cli_fuses_the_baseline_when_asked(tmp_path):
    """--fuse-baseline fuses the float baseline like the quantized model (same counts); without it the baseline
    stays transformers' own; with --no-fuse it is refused."""
    common = ["bench", "tiny", "--random-weights", "--scheme", "w8a16", "--device", "cpu", "--batch-sizes", "1",
              "--decode-tokens", "2", "--prefill-len", "8"]
    for extra, expected in ((["--fuse-baseline"], (4, 2, 5, True)), ([], (0, 0, 0, False))):
        out = tmp_path / f"base{len(extra)}.json"
        res = CliRunner().invoke(app, [*common, *extra, "--json", str(out)])
        assert res.exit_code == 0, res.output
        base = json.loads(out.read_text())["base_fused"]
        assert (base["fused_groups"], base["fused_mlps"], base["fused_norms"], base["decode_attention"]) == expected
    res = CliRunner().invoke(app, [*common, "--no-fuse", "--fuse-baseline"])
    assert res.exit_code == 2 and "--fuse-baseline" in res.output


def test_float_linears_fuse_exactly():
    """A float model's q/k/v and gate/up fused as one nn.Linear each, its MLPs with silu_mul and its RMSNorms as
    F.rms_norm: the logits match the unfused model's (float32: summation order and one rounding fewer differ)."""
    model = random_model("tiny", dtype=torch.float32)
    fused = copy.deepcopy(model)
    assert fuse_mlps(fused) == 2 and fuse_projections(fused) == 2 and fuse_norms(fused) == 5
    x = ids(2, 7)
    with torch.no_grad():
        torch.testing.assert_close(fused(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)
    assert incompatibility([nn.Linear(4, 3), nn.Linear(5, 3)]) == "different in_features"
    assert incompatibility([nn.Linear(4, 3), nn.Linear(4, 3, bias=False)]) == "bias differs in presence or dtype"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_decode_on_cuda_graphs_matches_unfused():
    """On the GPU (CUDA kernels, bf16, torch.compile reduce-overhead with CUDA graphs, layers linked for
    L2 prefetch as qtool bench does): the fused model decodes the tokens the unfused one does, and its
    step logits agree with the unfused eager ones."""
    from quantize.bench import _decode_loop_fn
    from quantize.prefetch import link_weight_prefetch

    model = random_model("tiny", dtype=torch.bfloat16, device="cuda")
    quantize_model(model, Recipe.single(W4_G32_ASYM, "rtn"), device="cuda", progress=False)
    fused = copy.deepcopy(model)
    assert fuse_projections(fused) == 4
    prompt = torch.randint(0, 256, (1, 8), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    ids = torch.randint(0, 256, (1, 5), device="cuda")
    with torch.no_grad():
        expected = model(ids).logits.float()
        assert link_weight_prefetch(fused, lambda: fused(ids), 4 << 20) == 8  # per block: q/k/v, o, gate/up, down
        torch.testing.assert_close(fused(ids).logits.float(), expected, rtol=2e-2, atol=2e-2)
    runs = {name: _decode_loop_fn(m, prompt, 12, compiled=True) for name, m in (("plain", model), ("fused", fused))}
    tokens = {name: [run() for _ in range(3)][-1] for name, run in runs.items()}  # warm-up, capture, replay
    assert torch.equal(tokens["fused"], tokens["plain"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("knob", ["pdl", "combo"])
@pytest.mark.parametrize("name", ["w4a16", "w8a8-int8", "fp8"])
def test_decode_with_inductor_options_matches_without(monkeypatch, name, knob):
    """qtool bench's decode step (bench.decode_compile_options: CUDA graphs, Inductor's kernels launched with
    programmatic dependent launch next to qtool's PDL kernels, and Inductor's combo kernels) gives the logits it gives
    with each of those two knobs off, on a fully fused 4-layer SmolLM2-shaped model (q/k/v, gate/up +
    SiLU-and-multiply, RMSNorm, decode attention), steps fed fixed tokens. A missing wait in the chain of early
    launches would read another step's activations; a combo kernel that mixed up its sub-kernels' buffers would
    write one tensor's values into another. Not bit for bit: each compile autotunes Inductor's reductions anew,
    another block size sums in another order, and W8A8's activation codes round on the difference (session 24's
    first form of this test compared greedy tokens, and a near tie flipped a random model's token one step apart in
    two of three schemes)."""
    from quantize import bench
    from quantize.attention import use_decode_attention
    from quantize.bench import decode_compile_options
    from quantize.shapes import SMOLLM2_135M

    model = random_model(dict(SMOLLM2_135M, num_hidden_layers=4), dtype=torch.bfloat16, device="cuda")
    quantize_model(model, Recipe.single(preset(name), "rtn"), device="cuda", progress=False)
    fuse_mlps(model)
    fuse_projections(model)
    fuse_norms(model)
    assert use_decode_attention(model)
    prompt = torch.randint(0, 49152, (1, 16), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    cache = StaticCache(config=model.config, max_cache_len=16 + 24)

    def step(ids, positions):
        return model(input_ids=ids, past_key_values=cache, cache_position=positions, use_cache=True,
                     logits_to_keep=1).logits[:, -1].float()

    def decode(compiled) -> torch.Tensor:
        """Logits [24, 1, V] of 24 steps after an eager prefill, step i fed the prompt's token i % 16."""
        cache.reset()
        step(prompt, torch.arange(16, device="cuda"))
        return torch.stack([compiled(prompt[:, i % 16:i % 16 + 1], torch.tensor([16 + i], device="cuda")).clone()
                            for i in range(24)])

    logits = {}
    with torch.no_grad():
        for on in ("0", "1"):
            monkeypatch.setenv("QTOOL_INDUCTOR_PDL", on if knob == "pdl" else "1")
            monkeypatch.setattr(bench, "INDUCTOR_COMBO", on == "1" or knob != "combo")
            torch._dynamo.reset()
            compiled = torch.compile(step, options=decode_compile_options())
            logits[on] = [decode(compiled) for _ in range(3)]  # warm-up, capture, replays
    # Bounds from the norms: activation codes that round the other way move the logits by a few percent (int8,
    # session 25: the largest by 2%; FP8, whose codes carry 3 mantissa bits, session 26: 3.2% of the norm over 24
    # steps); another step's activations would move all of them by ~100% (a difference as large as the logits).
    reference = logits["0"][-1]
    for replay in logits["1"][1:]:
        assert (replay - reference).norm() <= 0.1 * reference.norm()
        assert (replay - reference).abs().max() <= 0.25 * reference.abs().max()
