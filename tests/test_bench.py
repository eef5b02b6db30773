"""bench: structure and sanity of speed measurements on a tiny CPU model (no timing assertions)."""

from __future__ import annotations

import io
import json
from dataclasses import replace

import pytest
import torch
from rich.console import Console

from quantize.bench import (
    DECODE_MODES,
    BenchResult,
    DecodeResult,
    _decode_fn,
    _decode_loop_fn,
    bench_model,
    compare,
    print_bench,
)
from quantize.shapes import CONFIGS, random_model


@pytest.fixture(scope="module")
def tiny():
    return random_model("tiny", dtype=torch.float32)


@pytest.fixture(scope="module")
def result(tiny):
    return bench_model(tiny, batch_sizes=(1, 3), decode_tokens=4, prefill_len=32, prefill_batch=2,
                       warmup=1, repeats=2)


def test_random_model_from_each_kind_of_config(tmp_path):
    by_name = random_model("tiny", dtype=torch.float32)
    assert by_name.config.hidden_size == 64 and not by_name.training
    assert by_name.dtype == torch.float32

    by_dict = random_model({**CONFIGS["tiny"], "num_hidden_layers": 1}, dtype=torch.bfloat16)
    assert by_dict.config.num_hidden_layers == 1 and by_dict.dtype == torch.bfloat16

    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["tiny"]))
    by_dir = random_model(tmp_path)
    by_file = random_model(tmp_path / "config.json")
    assert by_dir.config.vocab_size == by_file.config.vocab_size == 256

    # Same seed, same weights.
    torch.testing.assert_close(random_model("tiny").lm_head.weight, random_model("tiny").lm_head.weight)


def test_random_model_on_meta_device_has_llama_8b_shapes():
    # The meta device allocates nothing, so the real 8B layout can be checked on a laptop.
    model = random_model("llama-8b", device="meta")
    assert model.config.rope_parameters["rope_theta"] == 500000.0
    attention = model.model.layers[0].self_attn
    assert attention.k_proj.weight.shape == (8 * 128, 4096)  # 8 KV heads of head_dim 128
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (14336, 4096)
    assert model.lm_head.weight.shape == (128256, 4096)
    assert len(model.model.layers) == 32
    assert 7.9e9 < sum(p.numel() for p in model.parameters()) < 8.1e9


def test_random_model_has_smollm2_shapes():
    # benchmarks/profile_method.py times methods on these shapes without the GGUF: they must be SmolLM2-135M's
    # (134,515,008 parameters with tied embeddings, as prepare_smollm2.py reports).
    model = random_model("smollm2-135m", device="meta")
    assert model.model.layers[0].self_attn.k_proj.weight.shape == (3 * 64, 576)
    assert model.model.layers[0].mlp.down_proj.weight.shape == (576, 1536)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_random_model_rejects_unknown_configs(tmp_path):
    with pytest.raises(ValueError, match="built-in config"):
        random_model("no-such-model")
    with pytest.raises(ValueError, match="model_type"):
        random_model({"hidden_size": 64})


def test_bench_result_structure(result):
    assert isinstance(result, BenchResult)
    assert [d.batch_size for d in result.decode] == [1, 3]
    for d in result.decode:
        assert isinstance(d, DecodeResult)
        assert d.new_tokens == 4 and d.seconds > 0 and d.tokens_per_s > 0
        assert d.peak_memory_bytes is None  # CPU
        # the 3 single-token steps take part of the whole call (which adds the prompt's prefill)
        assert 0 < d.step_seconds < d.seconds
        assert d.step_tokens_per_s == pytest.approx(d.batch_size * 3 / d.step_seconds)
    assert result.prefill_seconds > 0 and result.prefill_tokens_per_s > 0
    assert (result.prefill_len, result.prefill_batch) == (32, 2)
    assert result.device == "cpu" and result.dtype == "float32" and not result.compiled
    assert result.peak_memory_bytes is None
    assert json.loads(json.dumps(result.to_dict()))["decode"][1]["batch_size"] == 3


def test_bench_leaves_generation_config_alone(tiny):
    before = tiny.generation_config.to_dict()
    bench_model(tiny, batch_sizes=(1,), decode_tokens=2, prefill_len=8, warmup=0, repeats=1)
    assert tiny.generation_config.to_dict() == before


def test_compiled_decoding_needs_cuda(tiny):
    with pytest.raises(ValueError, match="CUDA"):
        bench_model(tiny, compile=True, batch_sizes=(1,), decode_tokens=2, prefill_len=8)


def test_compare_gives_ratios(result):
    faster = replace(
        result,
        decode=[replace(d, tokens_per_s=2 * d.tokens_per_s, step_tokens_per_s=4 * d.step_tokens_per_s)
                for d in result.decode],
        prefill_tokens_per_s=3 * result.prefill_tokens_per_s,
    )
    assert compare(result, faster) == pytest.approx({"decode_bs1": 2.0, "decode_bs3": 2.0, "decode_steps_bs1": 4.0,
                                                     "decode_steps_bs3": 4.0, "prefill": 3.0})
    one_batch = replace(faster, decode=faster.decode[1:])
    assert set(compare(result, one_batch)) == {"decode_bs3", "decode_steps_bs3", "prefill"}
    assert compare(replace(result, peak_memory_bytes=1000), replace(result, peak_memory_bytes=500))[
        "peak_memory"
    ] == pytest.approx(0.5)


def test_print_bench_with_baseline(result):
    out = io.StringIO()
    print_bench(result, "tiny", baseline=result, console=Console(file=out, width=120))
    text = out.getvalue()
    assert "decode bs=3" in text and "prefill 2x32" in text and "1.00x" in text


def test_static_cache_decoding_runs_off_cuda(tiny):
    # On CUDA this path is also compiled; on CPU transformers leaves it eager, which at
    # least checks the generate() options and the token count.
    prompt = torch.randint(0, 256, (2, 5))
    _decode_fn(tiny, prompt, 3, compiled=True)()


def test_decode_loop_matches_generate(tiny):
    # The token loop (static cache, one step per token) must decode exactly what generate() does.
    prompt = torch.randint(0, 256, (3, 7), generator=torch.Generator().manual_seed(1))
    expected = _decode_fn(tiny, prompt, 6, compiled=False)()
    run = _decode_loop_fn(tiny, prompt, 6, compiled=False)
    assert torch.equal(run(), expected)
    assert torch.equal(run(), expected)  # the cache is reset between calls


def test_bench_decode_modes(tiny):
    for mode in DECODE_MODES:
        result = bench_model(tiny, batch_sizes=(2,), decode_tokens=3, prefill_len=8, warmup=0, repeats=1,
                             decode_mode=mode)
        assert result.decode_mode == mode and result.decode[0].tokens_per_s > 0
    with pytest.raises(ValueError, match="'beam'"):
        bench_model(tiny, batch_sizes=(1,), decode_tokens=2, prefill_len=8, decode_mode="beam")


def test_bench_cli_quantizes_lm_head_on_request(tmp_path, monkeypatch):
    """`qtool bench --random-weights --scheme ... --quantize-lm-head` on the CPU; the flag needs --scheme. The JSON
    records the run's QTOOL_* switches."""
    from typer.testing import CliRunner

    from quantize.cli import app

    monkeypatch.setenv("QTOOL_GEMM_SWIZZLE", "8")
    runner = CliRunner()
    out = tmp_path / "bench.json"
    common = ["bench", "tiny", "--random-weights", "--device", "cpu", "--batch-sizes", "1", "--decode-tokens", "2",
              "--prefill-len", "8"]
    res = runner.invoke(app, [*common, "--scheme", "w8a16", "--quantize-lm-head", "--json", str(out)])
    assert res.exit_code == 0, res.output
    figures = json.loads(out.read_text())
    assert figures["quantized"]["decode"][0]["new_tokens"] == 2 and "decode_bs1" in figures["ratios"]
    assert figures["switches"]["QTOOL_GEMM_SWIZZLE"] == "8"
    res = runner.invoke(app, [*common, "--quantize-lm-head"])
    assert res.exit_code == 2 and "--quantize-lm-head" in res.output
    res = runner.invoke(app, [*common, "--scheme", "w4a16", "--lm-head-scheme", "w8a16"])
    assert res.exit_code == 2 and "--lm-head-scheme w8a16 applies with --quantize-lm-head" in res.output


def test_bench_plan_quantizes_lm_head_with_its_own_preset():
    """--quantize-lm-head --lm-head-scheme: the head takes its preset, every other linear --scheme's; without it the
    head stays float."""
    from conftest import tiny_llama
    from quantize.cli_tools import bench_plan

    model = tiny_llama()
    mixed = bench_plan("w4a16", "w8a16").assign(model)
    assert mixed["lm_head"].scheme.weights.num_bits == 8
    assert {e.scheme.weights.num_bits for name, e in mixed.items() if name != "lm_head"} == {4}
    assert "lm_head" not in bench_plan("w4a16", None).assign(model)
    assert bench_plan("w4a16", "w4a16").assign(model)["lm_head"].scheme.weights.num_bits == 4


def test_bench_cli_attention_implementation(tmp_path):
    """--attn-implementation reaches the model (eager attention on the CPU); an unknown one is one line."""
    from typer.testing import CliRunner

    from quantize.cli import app

    common = ["bench", "tiny", "--random-weights", "--device", "cpu", "--batch-sizes", "1", "--decode-tokens", "2",
              "--prefill-len", "8"]
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, [*common, "--attn-implementation", "eager", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["attn_implementation"] == ["eager"]
    res = CliRunner().invoke(app, [*common, "--attn-implementation", "no-such-attention"])
    assert res.exit_code == 2 and "no-such-attention" in res.output


@pytest.mark.filterwarnings("error::FutureWarning")
def test_decode_passes_the_cache_by_this_releases_keyword(tiny):
    """transformers 5.25 renamed past_key_values to cache (quantize/compat.py): the decode step and the synthetic
    calibration sampler use whichever this release takes, so neither warns, and the cache they get back is filled."""
    from transformers import StaticCache

    from quantize.bench import _next_token
    from quantize.compat import CACHE_KWARG, returned_cache
    from quantize.data import _sample

    cache = StaticCache(config=tiny.config, max_cache_len=8)
    with torch.no_grad():
        token = _next_token(tiny, torch.tensor([[1, 2, 3]]), cache, torch.arange(3))
        out = tiny(input_ids=token, **{CACHE_KWARG: None}, use_cache=True)
        tokens = _sample(tiny, torch.tensor([[1]]), 3, 1.0, torch.Generator().manual_seed(0))
    assert token.shape == (1, 1) and tokens.shape == (1, 4)
    assert returned_cache(out) is not None and cache.get_seq_length() == 3
