"""qtool_kernels/attention.py: decode attention (one query token, grouped KV heads) on the CUDA kernel or its reference.

Bounds: the reference computes in float32, so against float64 SDPA over repeated KV heads it is within 1e-5 (float32
reassociation over <= 4100 positions, values of unit size). The kernel computes the same float32 quantities in
another order and rounds once to the output dtype: within one unit in the last place of the dtype (2^-8 relative
for bfloat16, 2^-11 for float16) plus 1e-5 of the largest value, against the reference left in float32.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import quantize.attention as qattention
from qtool_kernels import attention
from qtool_kernels.reference import decode_attention as reference
from quantize.shapes import TINY, random_model


def _inputs(batch, heads, kv_heads, length, dim, dtype=torch.float32, device="cpu", seed=0, masked=True):
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, heads, dim, generator=g, device=device).to(dtype)
    k = torch.randn(batch, kv_heads, length, dim, generator=g, device=device).to(dtype)
    v = torch.randn(batch, kv_heads, length, dim, generator=g, device=device).to(dtype)
    mask = None
    if masked:  # a static cache's prefix per sequence, with a few holes; every sequence attends somewhere
        valid = torch.randint(1, length + 1, (batch, 1), generator=g, device=device)
        mask = torch.arange(length, device=device)[None, :] < valid
        mask &= torch.rand(batch, length, generator=g, device=device) > 0.1
        mask[:, 0] = True
    return q, k, v, mask


def _float64_sdpa(q, k, v, mask, scale):
    """SDPA in float64 over KV heads repeated to every query head (what transformers' repeat_kv does)."""
    groups = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(groups, dim=1)
    vv = v.double().repeat_interleave(groups, dim=1)
    attn_mask = None if mask is None else mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q.double()[:, :, None, :], kk, vv, attn_mask=attn_mask, scale=scale)
    return out[:, :, 0, :]


@pytest.mark.parametrize("batch, heads, kv_heads, length, dim", [(2, 8, 2, 37, 64), (1, 6, 3, 5, 16), (3, 4, 4, 1, 8)])
def test_reference_matches_float64_sdpa(batch, heads, kv_heads, length, dim):
    q, k, v, mask = _inputs(batch, heads, kv_heads, length, dim, seed=length)
    scale = dim**-0.5
    out = reference(q, k, v, mask, scale)
    assert out.shape == (batch, heads, dim) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _float64_sdpa(q, k, v, mask, scale), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reference(q, k, v, None, scale).double(), _float64_sdpa(q, k, v, None, scale),
                               rtol=1e-5, atol=1e-5)


def test_reference_ignores_masked_values_and_zeroes_empty_rows():
    q, k, v, mask = _inputs(2, 4, 2, 9, 8, seed=3)
    expected = reference(q, k, v, mask, 0.3)
    k[~mask[:, None, :, None].expand_as(k)] = math.nan
    v[~mask[:, None, :, None].expand_as(v)] = math.inf
    torch.testing.assert_close(reference(q, k, v, mask, 0.3), expected, rtol=0, atol=0)
    mask[1] = False
    out = reference(q, k, v, mask, 0.3)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.isfinite(out).all()


def test_cpu_tensors_run_the_reference():
    q, k, v, mask = _inputs(2, 8, 2, 11, 64, dtype=torch.bfloat16, seed=5)
    assert not attention.supported(q, k, v, mask) and attention.kernel_attention(q, k, v, mask, 0.125) is None
    assert torch.equal(attention.decode_attention(q, k, v, mask, 0.125), reference(q, k, v, mask, 0.125))


def test_preferred_where_measured_faster():
    """Batch 1 at any length and a batch whose pieces fill the SMs once take the kernel; batch 16 at 512+ does not."""
    assert attention.preferred(1, 8, 161) and attention.preferred(1, 8, 8192) and attention.preferred(8, 8, 4096)
    assert attention.preferred(16, 8, 161) and attention.preferred(16, 8, 256)
    assert not attention.preferred(16, 8, 512) and not attention.preferred(64, 8, 161)


def _decode_logits(model, prompt, steps):
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=prompt.shape[1] + steps)
    with torch.no_grad():
        out = [model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(prompt.shape[1]),
                     use_cache=True).logits[:, -1]]
        for i in range(steps):
            position = torch.tensor([prompt.shape[1] + i])
            out.append(model(input_ids=prompt[:, i:i + 1], past_key_values=cache, cache_position=position,
                             use_cache=True).logits[:, -1])
    return torch.stack(out)


def test_model_decode_through_the_kernel_path(monkeypatch):
    """quantize/attention.py's kernel backend (the query view, the mask's row, the scale, the output's shape): on the
    CPU with the kernel's place taken by the reference, it gives transformers' own logits within float32 rounding."""
    model = random_model(dict(TINY, num_attention_heads=4, num_key_value_heads=2, hidden_size=64),
                         dtype=torch.float32, seed=2)
    prompt = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(2))
    expected = _decode_logits(model, prompt, 4)
    assert qattention.use_decode_attention(model)
    calls = []
    monkeypatch.setattr(qattention, "BACKEND", "kernel")
    monkeypatch.setattr(attention, "kernel_attention", lambda q, k, v, mask, scale: calls.append(q.shape)
                        or reference(q, k, v, mask, scale))
    got = _decode_logits(model, prompt, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert calls and calls[0] == (2, 4, 16)  # [B, H, D] for every decode step


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _check_kernel(q, k, v, mask, scale, splits=0, variant=1):
    out = attention.decode_attention(q, k, v, mask, scale, splits=splits, variant=variant)
    exact = reference(q.float(), k.float(), v.float(), mask, scale)
    ulp = 2**-8 if q.dtype == torch.bfloat16 else 2**-11
    bound = exact.abs() * ulp + 1e-5 * v.float().abs().max()
    assert out.shape == q.shape and out.dtype == q.dtype
    assert ((out.float() - exact).abs() <= bound).all(), (out.float() - exact).abs().max().item()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [64, 128])
@pytest.mark.parametrize("heads, kv_heads", [(32, 8), (28, 4), (64, 4), (9, 3), (8, 8)])
@pytest.mark.parametrize("batch, length", [(1, 1), (1, 161), (3, 256), (2, 257), (1, 1000), (2, 4100)])
@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("variant", [1, 2])  # the online and the two-pass kernel
def test_kernel_matches_reference(kernels, dtype, dim, heads, kv_heads, batch, length, masked, variant):
    q, k, v, mask = _inputs(batch, heads, kv_heads, length, dim, dtype, "cuda", seed=length + heads, masked=masked)
    assert attention.supported(q, k, v, mask)
    _check_kernel(q, k, v, mask, dim**-0.5, variant=variant)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("splits", [1, 2, 3, 7, 64, 10_000])
@pytest.mark.parametrize("variant", [1, 2])
def test_kernel_splits(kernels, splits, variant):
    """Any requested number of pieces (more than positions, fewer than a block can stage) gives the same result."""
    q, k, v, mask = _inputs(2, 32, 8, 600, 128, torch.bfloat16, "cuda", seed=splits)
    _check_kernel(q, k, v, mask, 0.0883, splits=splits, variant=variant)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("variant", [1, 2])
def test_kernel_strided_inputs_and_masked_garbage(kernels, variant, monkeypatch):
    """q a view of a [B, 1, H, D] projection output, k / v the first rows of a larger cache, a broadcast mask; non
    finite values at masked positions change nothing; a sequence with every position masked gets zeros."""
    monkeypatch.setattr(attention, "VARIANT", variant)
    batch, heads, kv_heads, length, dim = 2, 32, 8, 300, 128
    proj = torch.randn(batch, 1, heads, dim, device="cuda", dtype=torch.bfloat16)
    q = proj.transpose(1, 2)[:, :, 0, :]
    cache_k = torch.randn(batch, kv_heads, 512, dim, device="cuda", dtype=torch.bfloat16)
    cache_v = torch.randn_like(cache_k)
    k, v = cache_k[:, :, :length], cache_v[:, :, :length]
    mask = (torch.arange(length, device="cuda") < 200)[None, :].expand(batch, length)
    _check_kernel(q, k, v, mask, 0.1)
    expected = attention.decode_attention(q, k, v, mask, 0.1)
    k[:, :, 200:] = math.nan
    v[:, :, 200:] = math.inf
    assert torch.equal(attention.decode_attention(q, k, v, mask, 0.1), expected)
    empty = mask.clone()
    empty[1] = False
    out = attention.decode_attention(q, k, v, empty, 0.1)
    assert torch.equal(out[1], torch.zeros_like(out[1])) and torch.isfinite(out).all()


@pytest.mark.gpu
@needs_cuda
def test_kernel_compiled_and_graphed(kernels):
    """Under torch.compile (Inductor, fullgraph) and in a captured CUDA graph (with pieces to combine) the op gives
    the eager output."""
    q, k, v, mask = _inputs(1, 32, 8, 700, 128, torch.bfloat16, "cuda", seed=9)
    expected = attention.decode_attention(q, k, v, mask, 0.09)
    compiled = torch.compile(lambda *a: attention.decode_attention(*a, 0.09), fullgraph=True)
    assert torch.equal(compiled(q, k, v, mask), expected)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        attention.decode_attention(q, k, v, mask, 0.09)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention.decode_attention(q, k, v, mask, 0.09)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, expected)


@pytest.mark.gpu
@needs_cuda
def test_kernel_rejects_bad_input(kernels):
    q, k, v, mask = _inputs(1, 8, 2, 10, 96, torch.bfloat16, "cuda")
    with pytest.raises(RuntimeError, match="head dimension must be 64 or 128, got 96"):
        kernels.decode_attention(q, k, v, mask, 0.1)
    q, k, v, mask = _inputs(1, 8, 3, 10, 64, torch.bfloat16, "cuda")
    with pytest.raises(RuntimeError, match=r"heads \(8\) must be a multiple of kv_heads \(3\)"):
        kernels.decode_attention(q, k, v, mask, 0.1)
    q, k, v, _ = _inputs(1, 8, 2, 10, 64, torch.bfloat16, "cuda")
    with pytest.raises(RuntimeError, match="mask must be a bool"):
        kernels.decode_attention(q, k, v, torch.ones(1, 10, device="cuda"), 0.1)
    with pytest.raises(RuntimeError, match="variant must be 0 .the default., 1 or 2, got 3"):
        kernels.decode_attention(q, k, v, None, 0.1, 0, 0, 3)
    empty = kernels.decode_attention(q[:0], k[:0], v[:0], None, 0.1)  # no sequences: an empty output, no launch
    assert empty.shape == (0, 8, 64)


@pytest.mark.gpu
@needs_cuda
def test_model_decode_on_the_kernel(kernels, monkeypatch):
    """A random Llama in bfloat16 on CUDA (head size 64, 4 query heads per KV head): the decode steps' logits through
    the kernel against SDPA's, within bfloat16 rounding of the attention outputs carried through two blocks."""
    model = random_model(dict(TINY, num_attention_heads=8, num_key_value_heads=2, hidden_size=512),
                         dtype=torch.bfloat16, device="cuda", seed=4)
    prompt = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(4)).cuda()
    assert qattention.use_decode_attention(model)
    from transformers import StaticCache

    def logits():
        cache = StaticCache(config=model.config, max_cache_len=16)
        out = []
        with torch.no_grad():
            model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(6, device="cuda"))
            for i in range(4):
                position = torch.tensor([6 + i], device="cuda")
                out.append(model(input_ids=prompt[:, i:i + 1], past_key_values=cache, cache_position=position,
                                 use_cache=True).logits[:, -1].float())
        return torch.stack(out)

    expected = logits()
    calls = []
    real = attention.kernel_attention
    monkeypatch.setattr(qattention, "BACKEND", "kernel")
    monkeypatch.setattr(attention, "kernel_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    got = logits()
    assert len(calls) == 4 * model.config.num_hidden_layers
    assert (got - expected).abs().max() <= 0.05 * expected.abs().max()

