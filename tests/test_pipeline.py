"""The layer-by-layer driver reproduces the full model and keeps one block on the device."""

from __future__ import annotations

import torch

from quantize.pipeline import run_sequential


def test_driver_outputs_equal_full_forward(llama, calib_ids):
    with torch.no_grad():
        full = [llama(ids, output_hidden_states=True).hidden_states for ids in calib_ids]
    seen: list[list[torch.Tensor]] = []

    def process(ctx):
        outs = ctx.run()
        seen.append(outs)
        return outs

    run_sequential(llama, calib_ids, process, progress=False)
    assert len(seen) == 2
    for b in range(len(calib_ids)):
        torch.testing.assert_close(seen[0][b], full[b][1], rtol=1e-5, atol=1e-5)
        # The last hidden state transformers reports is after the final norm.
        torch.testing.assert_close(llama.model.norm(seen[1][b]), full[b][2], rtol=1e-5, atol=1e-5)


def test_capture_gives_linear_inputs_and_outputs(llama, calib_ids):
    shapes = {}

    def process(ctx):
        if ctx.index == 0:
            ctx.capture(["self_attn.q_proj", "mlp.down_proj"],
                        lambda n, x, y: shapes.setdefault(n, (tuple(x.shape), tuple(y.shape))))
        return None

    run_sequential(llama, calib_ids, process, progress=False)
    assert shapes["self_attn.q_proj"] == ((64, 96), (64, 96))
    assert shapes["mlp.down_proj"] == ((64, 160), (64, 96))


def test_blocks_return_to_their_device(llama, calib_ids):
    devices = []

    def process(ctx):
        devices.append(next(ctx.block.parameters()).device.type)
        return None

    run_sequential(llama, calib_ids, process, progress=False)
    assert devices == ["cpu", "cpu"]
    assert {p.device.type for p in llama.parameters()} == {"cpu"}


def test_two_entries_of_one_method_keep_their_settings(llama):
    """Each recipe entry's method_args reach the method, even when two entries share a method and a block."""
    from quantize.methods import rtn
    from quantize.pipeline import quantize_sequential
    from quantize.scheme import preset

    calls = []

    def recording(ctx, schemes, **settings):
        calls.append((ctx.index, sorted(schemes), settings))
        return rtn.quantize_block(ctx, schemes)

    scheme = preset("w8a16")
    plan = {f"model.layers.{i}.self_attn.q_proj": (scheme, "m", {"tag": "q"}) for i in range(2)}
    plan |= {f"model.layers.{i}.mlp.down_proj": (scheme, "m", {"tag": "down"}) for i in range(2)}
    quantize_sequential(llama, plan, {"m": recording}, None, progress=False)
    assert calls == [(0, ["self_attn.q_proj"], {"tag": "q"}), (0, ["mlp.down_proj"], {"tag": "down"}),
                     (1, ["self_attn.q_proj"], {"tag": "q"}), (1, ["mlp.down_proj"], {"tag": "down"})]
