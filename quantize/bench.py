"""Speed of a causal LM: decode and prefill throughput, and peak GPU memory.

Decode produces a fixed number of greedy tokens, in one of two ways:
- "loop" (the default): the token loop of gpt-fast. A transformers StaticCache, one eager prefill,
  then one single-token forward + argmax per step, compiled with torch.compile in
  "reduce-overhead" mode on CUDA (CUDA graphs; Inductor's kernels launched with programmatic dependent
  launch on Hopper: `decode_compile_options`). Only kernel time and one graph launch per token
  remain, so a quantized model's smaller weights show as they would in a serving engine.
- "generate": `model.generate` with a static cache (transformers then compiles the forward the
  same way), which adds generate's per-step Python work (logits processors, stopping criteria).
Tokens/s counts the decoded tokens of the timed call, which includes the prefill of the short prompt
(run eagerly in loop mode, so its Python overhead counts); loop mode also reports the single-token
steps alone ("decode steps"), the steady-state speed a serving engine sees.
Prefill is one forward pass over a random prompt: the compute-bound side.

Timing uses CUDA events on GPU and `time.perf_counter` on CPU, reporting the median of
`repeats` runs after `warmup` runs (the warmup absorbs compilation and CUDA-graph capture).
`shapes.random_model` builds a model with random weights from a config, so speed can be measured
at real shapes (e.g. Llama-3-8B) without downloading weights.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from transformers import StaticCache

from . import rotary
from .compat import CACHE_KWARG
from .prefetch import link_weight_prefetch


@dataclass
class DecodeResult:
    """Greedy generation of `new_tokens` tokens for `batch_size` prompts.

    tokens_per_s = batch_size * new_tokens / seconds. `seconds` covers the whole `generate`
    call, so it includes one prefill of the short prompt (prompt_len tokens per row).
    """

    batch_size: int
    new_tokens: int
    seconds: float
    tokens_per_s: float
    peak_memory_bytes: int | None = None  # CUDA only: weights + KV cache + activations
    # Loop mode only: median seconds of the new_tokens - 1 single-token steps after the prompt's
    # prefill, and batch_size * (new_tokens - 1) / step_seconds. The steady-state decode speed,
    # without the one eager prefill of the prompt that `seconds` includes.
    step_seconds: float | None = None
    step_tokens_per_s: float | None = None


@dataclass
class BenchResult:
    device: str
    dtype: str
    compiled: bool  # static cache + torch.compile used for decoding
    decode_mode: str  # "loop" or "generate" (module docstring)
    prompt_len: int
    prefill_len: int
    prefill_batch: int
    prefill_seconds: float
    prefill_tokens_per_s: float
    decode: list[DecodeResult] = field(default_factory=list)
    prefill_peak_memory_bytes: int | None = None
    peak_memory_bytes: int | None = None  # the largest of all measurements; None off CUDA
    # With profile=True on CUDA: GPU time per decoded token by kernel name (top entries), in us.
    kernel_profile: dict[str, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def bench_model(
    model: nn.Module,
    *,
    batch_sizes: Sequence[int] = (1, 16),
    decode_tokens: int = 64,
    prompt_len: int = 16,
    prefill_len: int = 2048,
    prefill_batch: int = 1,
    warmup: int = 2,
    repeats: int = 5,
    compile: bool | None = None,
    decode_mode: str = "loop",
    profile: bool = False,
    device: torch.device | str | None = None,
) -> BenchResult:
    """Measure decode throughput per batch size, prefill throughput, and peak GPU memory.

    batch_sizes: decode batch sizes; each decodes `decode_tokens` new tokens after a random
        prompt of `prompt_len` tokens (EOS is suppressed, so the count is exact).
    prefill_len, prefill_batch: shape [prefill_batch, prefill_len] of the prefill prompt.
    compile: static KV cache + torch.compile (CUDA graphs) for decoding; defaults to on for
        CUDA, and is refused elsewhere since transformers only auto-compiles on accelerators.
    decode_mode: "loop" (gpt-fast's token loop, the default) or "generate" (module docstring).
    profile: on CUDA, profile one decode at the first batch size and report GPU time per token
        by kernel (BenchResult.kernel_profile), to see where decode time goes.
    device: where the prompts go; defaults to the device of the model's first parameter.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    compiled = _check_settings(device, compile, decode_mode, batch_sizes, decode_tokens, prompt_len, prefill_len)
    model.eval()
    with torch.inference_mode():
        # One eager forward first: quantized layers repack their weights for the CUDA kernels on
        # their first eager call, and a compiled graph only reuses what that call prepared. The same
        # pass orders the layers so each GEMV prefetches the next one's weight into L2.
        link_weight_prefetch(model, lambda: model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device),
                                                  use_cache=False))
    decode, kernel_profile = _bench_decode(model, batch_sizes, decode_tokens, prompt_len, DECODE_MODES[decode_mode],
                                           compiled, profile, device, warmup, repeats)
    prompt = torch.randint(0, model.config.vocab_size, (prefill_batch, prefill_len), device=device)
    prefill_seconds, prefill_peak = _time(_prefill_fn(model, prompt), device, warmup, repeats)
    peaks = [d.peak_memory_bytes for d in decode] + [prefill_peak]
    return BenchResult(
        device=str(device),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        compiled=compiled,
        decode_mode=decode_mode,
        prompt_len=prompt_len,
        prefill_len=prefill_len,
        prefill_batch=prefill_batch,
        prefill_seconds=prefill_seconds,
        prefill_tokens_per_s=prefill_batch * prefill_len / prefill_seconds,
        decode=decode,
        prefill_peak_memory_bytes=prefill_peak,
        peak_memory_bytes=max(peaks) if device.type == "cuda" else None,
        kernel_profile=kernel_profile,
    )


def _check_settings(device: torch.device, compile: bool | None, decode_mode: str, batch_sizes: Sequence[int],
                    decode_tokens: int, prompt_len: int, prefill_len: int) -> bool:
    """Whether decoding is compiled (by default on CUDA only), after refusing settings that cannot run."""
    compiled = device.type == "cuda" if compile is None else compile
    if compiled and device.type != "cuda":
        raise ValueError(f"compiled decoding needs a CUDA device, got {device}")
    if decode_mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {decode_mode!r}; choose one of {', '.join(DECODE_MODES)}")
    if min(batch_sizes, default=1) < 1 or decode_tokens < 1 or prompt_len < 1 or prefill_len < 1:
        raise ValueError("batch sizes, decode_tokens, prompt_len and prefill_len must be >= 1")
    return compiled


def _bench_decode(model: nn.Module, batch_sizes: Sequence[int], decode_tokens: int, prompt_len: int,
                  make_decode: Callable[..., Callable[[], torch.Tensor]], compiled: bool, profile: bool,
                  device: torch.device, warmup: int, repeats: int) -> tuple[list[DecodeResult], dict[str, float] | None]:
    """Time decoding at each batch size; with `profile` on CUDA, the kernels of the first one too."""
    decode, kernel_profile = [], None
    for batch_size in batch_sizes:
        prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), device=device)
        run = make_decode(model, prompt, decode_tokens, compiled)
        decode.append(_decode_result(run, batch_size, decode_tokens, device, warmup, repeats))
        if profile and kernel_profile is None and device.type == "cuda":
            kernel_profile = _profile_kernels(run, batch_size * decode_tokens)
    return decode, kernel_profile


def _decode_result(run: Callable[[], object], batch_size: int, decode_tokens: int, device: torch.device,
                   warmup: int, repeats: int) -> DecodeResult:
    """Time `run` (one decode of `decode_tokens` tokens for `batch_size` sequences) and its steps."""
    seconds, peak = _time(run, device, warmup, repeats)
    steps = getattr(run, "step_seconds", [])[-repeats:]
    step_seconds = statistics.median(steps) if steps and decode_tokens > 1 else None
    return DecodeResult(batch_size, decode_tokens, seconds, batch_size * decode_tokens / seconds, peak,
                        step_seconds, batch_size * (decode_tokens - 1) / step_seconds if step_seconds else None)


def compare(base: BenchResult, quant: BenchResult) -> dict[str, float]:
    """Ratios quant / base: >1 means faster for throughput, <1 means smaller for memory.

    Keys: "decode_bs{n}" for each batch size measured in both (and "decode_steps_bs{n}" for the
    single-token steps alone, loop mode), "prefill", and
    "peak_memory" when both runs were on CUDA.
    """
    ratios = {}
    base_decode = {d.batch_size: d for d in base.decode}
    for d in quant.decode:
        if d.batch_size in base_decode:
            b = base_decode[d.batch_size]
            ratios[f"decode_bs{d.batch_size}"] = d.tokens_per_s / b.tokens_per_s
            if d.step_tokens_per_s and b.step_tokens_per_s:
                ratios[f"decode_steps_bs{d.batch_size}"] = d.step_tokens_per_s / b.step_tokens_per_s
    ratios["prefill"] = quant.prefill_tokens_per_s / base.prefill_tokens_per_s
    if base.peak_memory_bytes and quant.peak_memory_bytes:
        ratios["peak_memory"] = quant.peak_memory_bytes / base.peak_memory_bytes
    return ratios


def print_bench(
    result: BenchResult,
    title: str = "speed",
    *,
    baseline: BenchResult | None = None,
    console: Console | None = None,
) -> None:
    """Print throughputs (and memory) as a rich table; with `baseline`, add a ratio column."""
    ratios = compare(baseline, result) if baseline is not None else {}
    compiled = f"{result.decode_mode}, " + ("static cache + torch.compile" if result.compiled else "eager")
    table = Table(title=f"{title} ({result.device}, {result.dtype}, {compiled})")
    for name in ("measurement", "tokens/s", "peak memory"):
        table.add_column(name, justify="left" if name == "measurement" else "right")
    if baseline is not None:
        table.add_column("vs baseline", justify="right")

    def add(label: str, tokens_per_s: float, peak: int | None, key: str) -> None:
        cells = [label, f"{tokens_per_s:,.1f}", _gib(peak)]
        if baseline is not None:
            cells.append(f"{ratios[key]:.2f}x" if key in ratios else "-")
        table.add_row(*cells)

    for d in result.decode:
        add(f"decode bs={d.batch_size} ({d.new_tokens} tokens, prompt prefill included)", d.tokens_per_s,
            d.peak_memory_bytes, f"decode_bs{d.batch_size}")
        if d.step_tokens_per_s:
            add(f"decode steps bs={d.batch_size} ({d.new_tokens - 1} single-token steps)", d.step_tokens_per_s,
                None, f"decode_steps_bs{d.batch_size}")
    add(f"prefill {result.prefill_batch}x{result.prefill_len}", result.prefill_tokens_per_s,
        result.prefill_peak_memory_bytes, "prefill")
    (console or Console()).print(table)
    if result.kernel_profile:
        kernels = Table(title=f"{title}: GPU time per decoded token (first batch size)")
        kernels.add_column("kernel")
        kernels.add_column("us/token", justify="right")
        for name, us in result.kernel_profile.items():
            kernels.add_row(name[:90], f"{us:,.1f}")
        (console or Console()).print(kernels)


def _decode_fn(model: nn.Module, prompt: torch.Tensor, new_tokens: int, compiled: bool) -> Callable[[], torch.Tensor]:
    """A closure running one greedy generation of exactly `new_tokens` tokens per row; it returns
    them, [B, new_tokens]."""
    # Passed to generate() rather than written into model.generation_config, so the
    # model is left as it was given.
    options = {"cache_implementation": "static"} if compiled else {"disable_compile": True}

    def run() -> torch.Tensor:
        out = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # suppresses EOS so every run decodes the same count
            do_sample=False,
            pad_token_id=0,  # silences the "no pad token" warning; prompts are unpadded
            **options,
        )
        if out.shape[1] != prompt.shape[1] + new_tokens:
            raise RuntimeError(f"generate returned {out.shape[1] - prompt.shape[1]} tokens, asked {new_tokens}")
        return out[:, prompt.shape[1]:]

    return run


INDUCTOR_COMBO = os.environ.get("QTOOL_INDUCTOR_COMBO", "1") != "0"  # decode_compile_options


def decode_compile_options() -> dict:
    """Inductor options for a decode step (the bf16 baseline's too, so `qtool bench` compares like with like): CUDA
    graphs, and Inductor's Triton kernels launched with programmatic dependent launch on Hopper, so that they release
    the next grid (qtool's GEMVs, which load weights before waiting) after their first loads, not at their exit
    (session 24, H200, 8B W4A16 step: 2775 -> 2497 us; QTOOL_INDUCTOR_PDL=0: off). INDUCTOR_COMBO: Inductor's combo
    kernels, the step's independent small kernels launched as one (session 54, H100, 8B W4A16 steps: batch 1 407.3
    -> 424.8 tokens/s, batch 16 level; QTOOL_INDUCTOR_COMBO=0: off). NORM_PLANES (qtool_kernels/int8_planes.py): the
    graph pass that folds the residual add, RMSNorm and x_planes into one of our kernels (norm_planes.py)."""
    import torch._inductor.config as inductor_config

    from qtool_kernels import build, int8_planes, norm_planes

    options = {"triton.cudagraphs": True}
    if os.environ.get("QTOOL_INDUCTOR_PDL", "1") != "0" and hasattr(inductor_config.triton, "enable_pdl"):
        options["triton.enable_pdl"] = True
    if INDUCTOR_COMBO and hasattr(inductor_config, "combo_kernels"):
        options["combo_kernels"] = True
    if int8_planes.NORM_PLANES and build.loaded():  # (a cached graph would skip the pass and its count)
        try:
            options.update(post_grad_custom_pre_pass=norm_planes.make_pass(), fx_graph_cache=False)
        except Exception as e:  # a torch whose pattern API differs: the step without the pass, as before it
            warnings.warn(f"qtool's norm_planes graph pass is off: {type(e).__name__}: {e}", RuntimeWarning, 2)
    return options


def loop_cache(model: nn.Module, length: int) -> StaticCache:
    """The static cache of `length` rows for gpt-fast's loop over `model`; where rotary.install ran
    (QTOOL_ROPE_ATTENTION) and rotary.ENABLED still holds (an in-process A/B may clear it), its layers defer the
    decode rows' writes to the attention."""
    cache = StaticCache(config=model.config, max_cache_len=length)
    rope = rotary.state_of(model)
    if rope is not None and rotary.ENABLED:
        rotary.defer_cache_writes(cache, rope)
        rope.causal_only = True  # the loop passes no attention mask: no padding
    return cache


def _decode_loop_fn(model: nn.Module, prompt: torch.Tensor, new_tokens: int,
                    compiled: bool) -> Callable[[], torch.Tensor]:
    """A closure decoding `new_tokens` greedy tokens per row with gpt-fast's loop (module docstring);
    it returns them, [B, new_tokens].

    prompt: [B, T] token ids. The cache is allocated once and reset per call, so its tensors keep
    their addresses, which CUDA-graph replays need.
    """
    batch, prompt_len = prompt.shape
    device = prompt.device
    cache = loop_cache(model, prompt_len + new_tokens)
    # No fullgraph, so a model with an untraceable corner still runs (a graph break splits the graph
    # instead of failing).
    step = torch.compile(_next_token, options=decode_compile_options()) if compiled else _next_token

    def run() -> torch.Tensor:
        # no_grad rather than inference_mode: the cache tensors are created on the first call and
        # must stay ordinary tensors to be reset in place and used by compiled graphs.
        with torch.no_grad():
            cache.reset()
            positions = torch.arange(prompt_len, device=device)
            tokens = [_next_token(model, prompt, cache, positions)]
            position = torch.tensor([prompt_len], device=device)
            clock = _Clock(device)
            for _ in range(new_tokens - 1):
                # Cloned: a CUDA-graph output is overwritten by the next replay.
                tokens.append(step(model, tokens[-1], cache, position).clone())
                position += 1
            run.step_seconds.append(clock.seconds())
        return torch.cat(tokens, dim=1)

    run.step_seconds = []  # one entry per call: seconds of its single-token steps
    return run


class _Clock:
    """Elapsed seconds since construction: CUDA events on a GPU (stream time), else wall time."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start = time.perf_counter()

    def seconds(self) -> float:
        if not self.cuda:
            return time.perf_counter() - self.start
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return self.start.elapsed_time(end) / 1000


def _next_token(model: nn.Module, tokens: torch.Tensor, cache: StaticCache, positions: torch.Tensor) -> torch.Tensor:
    """Greedy next token [B, 1] after `tokens` [B, T] written at cache positions `positions` [T]."""
    logits = model(input_ids=tokens, **{CACHE_KWARG: cache}, cache_position=positions, use_cache=True,
                   logits_to_keep=1).logits
    return logits[:, -1].argmax(-1, keepdim=True)


DECODE_MODES: dict[str, Callable[..., Callable[[], torch.Tensor]]] = {"loop": _decode_loop_fn, "generate": _decode_fn}


def _profile_kernels(run: Callable[[], object], tokens: int, top: int = 12) -> dict[str, float]:
    """GPU time per decoded token (us) of the `top` kernels by total time, plus "total"."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name] = totals.get(event.name, 0.0) + event.time_range.elapsed_us()
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    result = {name[:120]: us / tokens for name, us in ranked}
    result["total"] = sum(totals.values()) / tokens
    return result


def _prefill_fn(model: nn.Module, prompt: torch.Tensor) -> Callable[[], None]:
    """A closure running one forward pass over `prompt` [B, T]."""

    def run() -> None:
        with torch.inference_mode():
            # Serving computes logits for the last position only; all T x 128k would add
            # a large LM-head matmul and its memory that prefill does not need.
            model(input_ids=prompt, use_cache=False, logits_to_keep=1)

    return run


def _time(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> tuple[float, int | None]:
    """Median seconds of `repeats` calls after `warmup` calls, and the peak CUDA memory of those calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        clock = _Clock(device)
        fn()
        times.append(clock.seconds())
    return statistics.median(times), torch.cuda.max_memory_allocated(device) if cuda else None


def _gib(num_bytes: int | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes / 2**30:.2f} GiB"
