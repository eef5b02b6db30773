"""The rotary embedding and cache write inside the decode attention (quantize/rotary.py): the reference against
transformers' rotation and write, and a model's decode logits and caches with it against without it, eager and
compiled."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import StaticCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import qtool_kernels.attention as kernel_attention
from qtool_kernels import reference
from quantize.attention import use_decode_attention
from quantize.compat import CACHE_KWARG
from quantize.fusion import fuse_projections
from quantize.rotary import defer_cache_writes, install, state_of
from quantize.shapes import TINY, random_model


def test_reference_equals_transformers_rotation_and_write():
    """Fresh random q/k/v, positions and caches (float32): q and k rotated as apply_rotary_pos_emb rotates them
    (within 1e-6), k and v written at the slot and nowhere else, the output decode_attention's on those."""
    gen = torch.Generator().manual_seed(7)
    batch, heads, kv_heads, dim, length, slot = 2, 8, 2, 16, 12, 5
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=gen)
    angle = torch.rand(batch, 1, dim // 2, generator=gen) * 6
    cos, sin = torch.cat((angle, angle), -1).cos(), torch.cat((angle, angle), -1).sin()  # [B, 1, D]
    k_cache = torch.randn(batch, kv_heads, length, dim, generator=gen)
    v_cache = torch.randn(batch, kv_heads, length, dim, generator=gen)
    mask = torch.arange(length)[None, :].expand(batch, length) <= slot
    k_before, v_before = k_cache.clone(), v_cache.clone()
    out = reference.rope_decode_attention(qkv, cos[:, 0], sin[:, 0], k_cache, v_cache, torch.tensor([slot]), mask,
                                          dim ** -0.5, heads)
    q, k, v = qkv.view(batch, heads + 2 * kv_heads, dim).split((heads, kv_heads, kv_heads), dim=1)
    q_rot, k_rot = apply_rotary_pos_emb(q[:, :, None], k[:, :, None], cos, sin)
    torch.testing.assert_close(k_cache[:, :, slot], k_rot[:, :, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(v_cache[:, :, slot], v)
    others = torch.arange(length) != slot
    assert torch.equal(k_cache[:, :, others], k_before[:, :, others])
    assert torch.equal(v_cache[:, :, others], v_before[:, :, others])
    expected = reference.decode_attention(q_rot[:, :, 0], k_cache, v_cache, mask, dim ** -0.5)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_reference_attends_no_row_after_the_slot():
    """Without a mask the reference attends to the rows up to the slot, as with that mask given; rows after it (a
    static cache's future) change nothing."""
    tensors, mask = _rope_inputs(2, 8, 2, 16, 12, 5, "cpu", torch.float32, 3)
    args = (torch.tensor([5]), None, 0.25, 8)
    out = reference.rope_decode_attention(*[t.clone() for t in tensors], *args)
    with_mask = reference.rope_decode_attention(*[t.clone() for t in tensors], torch.tensor([5]), mask, 0.25, 8)
    tensors[3][:, :, 6:] = 1e4  # future rows: anything
    future = reference.rope_decode_attention(*tensors, *args)
    torch.testing.assert_close(out, with_mask, rtol=0, atol=0)
    torch.testing.assert_close(future, out, rtol=0, atol=0)


def _rope_inputs(batch, heads, kv_heads, dim, length, slot, device, dtype, seed):
    """Fresh (qkv, cos, sin, k_cache, v_cache) in `dtype` on `device`, a mask attending to rows <= slot."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim, generator=gen)
    angle = torch.rand(batch, dim // 2, generator=gen) * 6
    cos, sin = torch.cat((angle, angle), -1).cos(), torch.cat((angle, angle), -1).sin()
    k_cache = torch.randn(batch, kv_heads, length, dim, generator=gen)
    v_cache = torch.randn(batch, kv_heads, length, dim, generator=gen)
    mask = (torch.arange(length)[None, :] <= slot).expand(batch, length)
    return [t.to(device, dtype) for t in (qkv, cos, sin, k_cache, v_cache)], mask.to(device)


def _check_against_reference(tensors, mask, slot, heads, tol):
    """rope_decode_attention on `tensors` against the reference on float32 copies: output and both caches."""
    dim = tensors[3].shape[-1]
    ref = [t.float() for t in tensors]
    args = (torch.tensor([slot], device=tensors[0].device), mask, dim ** -0.5, heads)
    got = kernel_attention.rope_decode_attention(*tensors, *args)
    expected = reference.rope_decode_attention(*ref, *args)
    torch.testing.assert_close(got.float(), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(tensors[3].float(), ref[3], rtol=tol, atol=tol)
    torch.testing.assert_close(tensors[4].float(), ref[4], rtol=0, atol=0)  # v: copied, not computed


def test_dispatching_op_equals_reference_on_cpu():
    """The CPU path (PyTorch ops, then decode_attention's reference) against the reference: float32, within 1e-6."""
    tensors, mask = _rope_inputs(2, 32, 8, 128, 40, 17, "cpu", torch.float32, 11)
    _check_against_reference(tensors, mask, 17, 32, 1e-6)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch, heads, kv_heads, dim, length, slot", [
    (1, 32, 8, 128, 40, 17),    # one piece, four query rows per KV head (tensor-core scores)
    (16, 32, 8, 128, 161, 160),  # the 8B decode at batch 16, the last row
    (2, 32, 8, 128, 700, 600),  # pieces: the row in a later one
    (3, 24, 2, 64, 300, 0),     # twelve rows per KV head (scores by FMA), the first row
    (2, 16, 2, 64, 129, 128),   # eight rows per KV head, the last row of a 129-row piece
])
@pytest.mark.parametrize("masked", [True, False])
def test_rope_kernel_equals_reference(batch, heads, kv_heads, dim, length, slot, dtype, kernel, masked, monkeypatch):
    """The rotary-and-write kernel (kernel=True) and the PyTorch-ops path before decode_attention's kernel, on fresh
    inputs, with the mask or without (the rows up to the slot), against the reference in float32: outputs and
    written key rows within 2e-2 (the rotated q and k rounded to the dtype, the output rounded once), the value row
    exact, every other row untouched."""
    monkeypatch.setattr(kernel_attention, "ROPE_KERNEL", kernel)
    tensors, mask = _rope_inputs(batch, heads, kv_heads, dim, length, slot, "cuda", dtype, slot + length)
    before = [t.clone() for t in tensors[3:]]
    _check_against_reference(tensors, mask if masked else None, slot, heads, 2e-2)
    others = torch.arange(length, device="cuda") != slot
    for cache, old in zip(tensors[3:], before, strict=True):
        assert torch.equal(cache[:, :, others], old[:, :, others])


def _prepared(seed: int, heads: int = 4, kv_heads: int = 2):
    """(plain, rope): the same random float32 model with fused q/k/v and qtool's decode attention, the second with
    the rotary and cache write moved into the attention."""
    model = random_model(dict(TINY, num_attention_heads=heads, num_key_value_heads=kv_heads, hidden_size=16 * heads),
                         dtype=torch.float32, seed=seed)
    fuse_projections(model)
    assert use_decode_attention(model)
    rope = copy.deepcopy(model)
    assert install(rope) is not None
    return model, rope


def _decode(model, prompt: torch.Tensor, steps: int, step_fn=None) -> tuple[torch.Tensor, StaticCache]:
    """Logits [steps + 1, B, V] of a prefill of `prompt` and `steps` single-token steps (fixed inputs), and the
    cache; rows deferred to the attention where the model was prepared by `install`."""
    batch, length = prompt.shape
    cache = StaticCache(config=model.config, max_cache_len=length + steps)
    state = state_of(model)
    if state is not None:
        assert defer_cache_writes(cache, state) == model.config.num_hidden_layers

    def forward(ids, positions):
        return model(input_ids=ids, **{CACHE_KWARG: cache}, cache_position=positions, use_cache=True).logits[:, -1]

    step = step_fn(forward) if step_fn else forward
    with torch.no_grad():
        out = [forward(prompt, torch.arange(length))]
        for i in range(steps):
            out.append(step(prompt[:, i % length:i % length + 1], torch.tensor([length + i])))
    return torch.stack(out), cache


@pytest.mark.parametrize("causal_only", [False, True])
@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (8, 2)])
def test_decode_logits_and_cache_equal_without(heads, kv_heads, causal_only, monkeypatch):
    """Batch 2, five steps: logits within 1e-5 of the same model's without the fusion, every cache row within 1e-5,
    every layer's row count as transformers' (one foreach add per step), and every decode step of every layer
    through the rotation and write of the attention."""
    plain, rope = _prepared(heads, heads, kv_heads)
    state_of(rope).causal_only = causal_only  # True: transformers' mask ignored, the rows bounded by the slot
    prompt = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(heads))
    expected, cache_plain = _decode(plain, prompt, 5)
    calls = []
    inner = kernel_attention.rotate_and_write  # the CPU path: the rotation and write, then the plain attention
    monkeypatch.setattr(kernel_attention, "rotate_and_write", lambda *a: calls.append(1) or inner(*a))
    got, cache_rope = _decode(rope, prompt, 5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert len(calls) == 5 * rope.config.num_hidden_layers
    for a, b in zip(cache_plain.layers, cache_rope.layers, strict=True):
        torch.testing.assert_close(b.keys, a.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b.values, a.values, rtol=1e-5, atol=1e-5)
        if hasattr(a, "cumulative_length"):  # every layer's count advanced once per step, as transformers' own
            assert int(b.cumulative_length) == int(a.cumulative_length) == 7 + 5


def test_compiled_step_equals_eager():
    """The deferred write, the stashes and the fused attention trace in one graph (fullgraph, aot_eager) and give
    the eager logits of the model without the fusion."""
    plain, rope = _prepared(3)
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(3))
    expected, _ = _decode(plain, prompt, 3)
    torch._dynamo.reset()
    got, _ = _decode(rope, prompt, 3, lambda f: torch.compile(f, backend="aot_eager", fullgraph=True))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@torch.library.custom_op("qtool_test::rope_decode_attention", mutates_args=("k", "v"))
def _mutating_op(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 slot: torch.Tensor, mask: torch.Tensor | None, scale: float, heads: int) -> torch.Tensor:
    """A stand-in with the CUDA op's schema (k and v written in place) and the reference inside."""
    _mutating_op.calls += 1
    return reference.rope_decode_attention(qkv, cos, sin, k, v, slot, mask, scale, heads)


@_mutating_op.register_fake
def _(qkv, cos, sin, k, v, slot, mask, scale, heads):
    return qkv.new_empty(qkv.shape[0], heads, k.shape[-1])


@pytest.mark.parametrize("min_batch", [1, 2])
def test_inductor_step_with_the_mutating_op_equals_eager(min_batch, monkeypatch):
    """Compiled by Inductor with an op that writes the caches in place, as qtool_cuda::rope_decode_attention does:
    the logits of the model without the fusion within 1e-5, the op run once per layer and step (not traced away,
    its in-place writes kept: the later steps read them) where the batch (1) reaches ROPE_MIN_BATCH, never where
    it does not (PyTorch ops there)."""
    monkeypatch.setattr(kernel_attention, "ROPE_MIN_BATCH", min_batch)
    plain, rope = _prepared(4)
    state_of(rope).causal_only = True  # as qtool bench sets it: the op gets no mask
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(4))
    expected, _ = _decode(plain, prompt, 3)
    _mutating_op.calls = 0
    monkeypatch.setattr(kernel_attention, "rope_kernel_attention", lambda *args: _mutating_op(*args))
    torch._dynamo.reset()
    got, _ = _decode(rope, prompt, 3, lambda f: torch.compile(f, fullgraph=True))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert _mutating_op.calls == (3 * rope.config.num_hidden_layers if min_batch == 1 else 0)


def test_left_padded_batch_equals_without(monkeypatch):
    """A left-padded batch (a 2-D attention mask, positions per sequence): each sequence rotated by its own position
    and masked by transformers' mask; logits within 1e-5 of the model without the fusion, every decode step through
    the rotation and write."""
    plain, rope = _prepared(6)
    calls = []
    inner = kernel_attention.rotate_and_write
    monkeypatch.setattr(kernel_attention, "rotate_and_write", lambda *a: calls.append(a[1].stride(0)) or inner(*a))
    batch, length, steps = 2, 6, 3
    prompt = torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(6))
    pad = torch.tensor([0, 2])  # the second sequence starts two tokens late

    def run(model):
        cache = StaticCache(config=model.config, max_cache_len=length + steps)
        state = state_of(model)
        if state is not None:
            defer_cache_writes(cache, state)
        keep = (torch.arange(length + steps)[None, :] >= pad[:, None]).long()  # [B, L]: the padding masked
        out = []
        with torch.no_grad():
            for i in range(steps + 1):
                ids, at = (prompt, torch.arange(length)) if i == 0 else (prompt[:, i - 1:i], torch.tensor([length + i - 1]))
                positions = (at[None, :] - pad[:, None]).clamp(min=0)  # [B, T]: each sequence's own positions
                logits = model(input_ids=ids, attention_mask=keep[:, :at[-1] + 1], position_ids=positions,
                               **{CACHE_KWARG: cache}, cache_position=at, use_cache=True).logits[:, -1]
                out.append(logits)
        return torch.stack(out)

    torch.testing.assert_close(run(rope), run(plain), rtol=1e-5, atol=1e-5)
    assert len(calls) == steps * rope.config.num_hidden_layers and all(calls)  # cos: a row per sequence, not one


def test_each_cache_advances_its_own_counts():
    """Two caches deferred on one model (qtool bench makes one per batch size): a step on the first advances the row
    count of each of its layers once, and none of the second's."""
    _, rope = _prepared(5)
    state = state_of(rope)
    first, second = (StaticCache(config=rope.config, max_cache_len=8) for _ in range(2))
    for cache in (first, second):  # the second deferred last
        assert defer_cache_writes(cache, state) == rope.config.num_hidden_layers
    prompt = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        rope(input_ids=prompt, **{CACHE_KWARG: first}, cache_position=torch.arange(4), use_cache=True)
        rope(input_ids=prompt[:, :1], **{CACHE_KWARG: first}, cache_position=torch.tensor([4]), use_cache=True)
    if not hasattr(first.layers[0], "cumulative_length"):
        pytest.skip("this transformers release names the row in cache_kwargs (no counts)")
    assert [int(layer.cumulative_length) for layer in first.layers] == [5] * rope.config.num_hidden_layers
    assert [int(layer.cumulative_length) for layer in second.layers] == [0] * rope.config.num_hidden_layers


def test_prefill_projection_not_held():
    """A prefill runs transformers' path, and no layer holds its q/k/v projection afterwards (25 MB a layer at the 8B's
    2048 tokens)."""
    _, rope = _prepared(5)
    _decode(rope, torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(5)), 0)
    groups = [m.q_proj.group for m in rope.modules() if hasattr(m, "qtool_rope")]
    assert groups and all(g.keep_output and g.output is None for g in groups)


def test_not_installed_without_fused_projections():
    """No fused q/k/v, nothing to read the raw projection from: install changes nothing."""
    model = random_model("tiny", dtype=torch.float32)
    use_decode_attention(model)
    rotary = model.model.rotary_emb
    assert install(model) is None and model.model.rotary_emb is rotary


def test_bench_cli_with_the_rotary_in_the_attention(tmp_path, monkeypatch):
    """`qtool bench --random-weights --scheme w8a16` with QTOOL_ROPE_ATTENTION on the CPU: the quantized model's decode
    steps take the rotation and write of the attention (every layer, every step after the first token) and the JSON
    says so; the bf16 baseline (not fused) does not."""
    from typer.testing import CliRunner

    import quantize.rotary as rotary
    from quantize.cli import app

    monkeypatch.setattr(rotary, "ENABLED", True)
    calls = []
    inner = kernel_attention.rotate_and_write
    monkeypatch.setattr(kernel_attention, "rotate_and_write", lambda *a: calls.append(1) or inner(*a))
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "tiny", "--random-weights", "--device", "cpu", "--scheme", "w8a16",
                                   "--batch-sizes", "2", "--decode-tokens", "3", "--prefill-len", "8",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    figures = json.loads(out.read_text())
    assert figures["rope_attention"] is True and not figures["base_fused"].get("rope_attention")
    assert figures["rope_kernel_min_batch"] == kernel_attention.ROPE_MIN_BATCH
    assert figures["gpu"] is None  # the card is named on CUDA runs only
    assert figures["quantized"]["decode"][0]["tokens_per_s"] > 0
    assert calls and len(calls) % (2 * TINY["num_hidden_layers"]) == 0  # 2 single-token steps per decode, 2 layers
