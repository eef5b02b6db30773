"""GPTQ of linears that share a Hessian as one stacked matrix (gptq_block.FUSE_SHARED) gives each linear
the codes, scales and loss it gets alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import tiny_llama
from quantize.mappings import find_architecture, find_blocks
from quantize.methods import gptq_block
from quantize.methods.gptq import gptq_quantize
from quantize.pipeline import BlockContext, capture_block_inputs
from quantize.primitives import QTensor
from quantize.scheme import QuantArgs, QuantScheme, Strategy, preset

QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def _block_context(calib_ids) -> BlockContext:
    model = tiny_llama()
    arch = find_architecture(model)
    _, blocks = find_blocks(model, arch)
    inputs = capture_block_inputs(model, blocks, calib_ids, torch.device("cpu"), "cpu")
    return BlockContext(0, "model.layers.0.", blocks[0], inputs, arch.for_block(blocks[0]), torch.device("cpu"))


def _run(calib_ids, monkeypatch, fuse: bool, schemes_of, settings: dict):
    """(qtensors, {name: gptq_loss}, messages, rows of each gptq_quantize call) of block 0."""
    ctx = _block_context(calib_ids)
    names = [n for group in ctx.arch.sequential for n in group]
    calls = []

    def counting(weight, *args, **kwargs):
        calls.append(weight.shape[0])
        return gptq_quantize(weight, *args, **kwargs)
    monkeypatch.setattr(gptq_block, "FUSE_SHARED", fuse)
    monkeypatch.setattr(gptq_block, "gptq_quantize", counting)
    out = gptq_block.quantize_block(ctx, schemes_of(names), min_tokens_per_feature=10.0, **settings)
    return out, {n: s["gptq_loss"] for n, s in ctx.stats.items()}, ctx.messages, calls


def _same_scheme(args: QuantArgs):
    return lambda names: {n: QuantScheme(weights=args) for n in names}


def _assert_same(fused, alone, names):
    (qa, la, ma, _), (qb, lb, mb, _) = fused, alone
    assert list(qa) == list(qb) == names and sorted(ma) == sorted(mb) and ma
    codes = sum(int((qa[n].values.view(torch.uint8) == qb[n].values.view(torch.uint8)).sum()) for n in names)
    assert codes == sum(qa[n].values.numel() for n in names)
    for n in names:
        a, b = qa[n], qb[n]
        torch.testing.assert_close(a.scale, b.scale, rtol=1e-6, atol=0)
        assert (a.zero_point is None) == (b.zero_point is None) and (a.g_idx is None) == (b.g_idx is None)
        if a.zero_point is not None:
            assert torch.equal(a.zero_point, b.zero_point)
        if a.g_idx is not None:
            assert torch.equal(a.g_idx, b.g_idx)
        assert a.values.data_ptr() != b.values.data_ptr()
        assert la[n] == pytest.approx(lb[n], rel=1e-4)


W4G32 = QuantArgs(num_bits=4, group_size=32)
CASES = [  # (weights, gptq settings)
    (W4G32, {}),  # act-order with static groups (the default)
    (dataclasses.replace(W4G32, actorder=True), {"static_groups": False}),  # groups chosen in the loop: g_idx
    (W4G32, {"act_order": False}),
    (dataclasses.replace(W4G32, symmetric=False, actorder=True), {"static_groups": False}),
    (dataclasses.replace(W4G32, symmetric=False), {"act_order": False, "block_size": 16}),
    (QuantArgs(num_bits=4, symmetric=False, strategy=Strategy.CHANNEL, group_size=None), {}),
    (QuantArgs(num_bits=8, strategy=Strategy.CHANNEL, group_size=None), {"true_sequential": False}),
    (preset("fp8").weights, {}),
    (QuantArgs(num_bits=1, group_size=32), {"act_order": False}),
]


@pytest.mark.parametrize("args, settings", CASES)
def test_fused_equals_alone(calib_ids, monkeypatch, args, settings):
    fused = _run(calib_ids, monkeypatch, True, _same_scheme(args), settings)
    alone = _run(calib_ids, monkeypatch, False, _same_scheme(args), settings)
    names = list(alone[0])
    _assert_same(fused, alone, names)
    # q/k/v (96 + 48 + 48 rows) and gate/up (160 + 160) each in one call; one call per linear without.
    assert alone[3] == [96, 48, 48, 96, 160, 160, 96]
    assert fused[3] == [96 + 48 + 48, 96, 160 + 160, 96]  # o and down have Hessians of their own
    # Notes name each linear (here: too few tokens per feature for every one).
    assert all(any(m.startswith(f"{n}: only ") for m in fused[2]) for n in names)


def test_only_equal_per_row_args_are_stacked(calib_ids, monkeypatch):
    """v_proj at 8 bits stacks with neither q nor k (which stack); per-tensor scales tie rows, so
    gate and up, with them, go alone."""
    w8 = QuantArgs(num_bits=8, strategy=Strategy.CHANNEL, group_size=None)
    tensor = QuantArgs(num_bits=4, strategy=Strategy.TENSOR, group_size=None)

    def schemes(names):
        pick = {"self_attn.v_proj": w8, "mlp.gate_proj": tensor, "mlp.up_proj": tensor}
        return {n: QuantScheme(weights=pick.get(n, W4G32)) for n in names}
    fused = _run(calib_ids, monkeypatch, True, schemes, {})
    alone = _run(calib_ids, monkeypatch, False, schemes, {})
    _assert_same(fused, alone, list(alone[0]))
    assert fused[3] == [96 + 48, 48, 96, 160, 160, 96]


def test_split_rows_undoes_join_rows():
    args = QuantArgs(num_bits=4, symmetric=False, group_size=4)
    q = QTensor(torch.randint(-8, 8, (7, 8), dtype=torch.int8), torch.rand(7, 2), torch.randint(-8, 8, (7, 2),
                dtype=torch.int8), args, torch.tensor([0, 1, 0, 1, 0, 1, 0, 1]))
    parts = gptq_block._split_rows(q, (3, 4))
    assert [p.values.shape[0] for p in parts] == [3, 4] and parts[0].g_idx is not parts[1].g_idx
    joined = gptq_block._join_rows(parts)
    for field in ("values", "scale", "zero_point", "g_idx"):
        assert torch.equal(getattr(joined, field), getattr(q, field))
    assert gptq_block._split_rows(q, (7,)) == [q]


def test_bad_weight_is_named_in_a_stack(calib_ids):
    ctx = _block_context(calib_ids)
    ctx.block.get_submodule("self_attn.k_proj").weight.data[5, 3] = float("nan")
    schemes = {n: QuantScheme(weights=W4G32) for n in QKV}
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj: weight contains NaN or Inf"):
        gptq_block.quantize_block(ctx, schemes)
