"""The layer-by-layer driver: the one place that moves decoder blocks between devices.

Flow (one block on the device at a time):
  1. capture the inputs of block 0 with a forward pre-hook (with kwargs) that stops the
     forward pass by raising a private exception;
  2. for each block: move it to the device; run the cached inputs through it once, recording
     sampled linear outputs (for the error report) and feeding observers (static activation
     scales); let each method quantize its linears (methods may run the block again, e.g. to
     gather Hessians); swap the linears for QuantLinear; run the block again to produce the
     next block's inputs, so quantization error propagates as in deployment; move it back.

Peak device memory is one block plus one batch of activations, plus the cached block inputs and
outputs when they stay on the device. `offload_activations=None` (the default) keeps them there when
twice their size fits in a quarter of the free device memory (a 135M model's 128 x 512 tokens: 0.3 GB;
an 8B model's: 2.1 GB), else in CPU memory; each pass over a block then copies them both ways.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .block import BlockContext, Cached, _cache_fits, _move, capture_block_inputs  # noqa: F401 (API)
from .distributed import LOCAL, Collective, current, merge_observer
from .lazy import BlockLoader, ResidentBlocks, non_block_modules
from .linear import QuantLinear, dequantized_weights, set_submodule
from .mappings import find_architecture, find_blocks
from .moe import calibrating_all_experts
from .primitives import QTensor, quantize_weight
from .scheme import QuantScheme
from .timeline import MARKS, mark, phase
from .validation import check_finite

# A method quantizes some linears of one block: (ctx, {local name: scheme}, **settings) -> {local name: QTensor}.
# It may change the block in place (AWQ and SmoothQuant fold scales into norms and weights) as long
# as the block's float function is unchanged.
BlockMethod = Callable[..., dict[str, QTensor]]

# Full module name -> (scheme, method name, method settings).
Plan = dict[str, tuple[QuantScheme, str, dict[str, Any]]]


@dataclass
class QuantizeReport:
    """Per-layer results of a quantization run, for `layer_errors.json`."""

    layers: list[dict[str, Any]] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "messages": self.messages, "seconds": self.seconds, "timeline": dict(MARKS)}


def _sample_rows(t: torch.Tensor, limit: int = 256) -> torch.Tensor:
    return t[:: max(1, t.shape[0] // limit)][:limit].float().cpu()


def run_sequential(
    model: nn.Module,
    batches: list[torch.Tensor] | None,
    process: Callable[[BlockContext], list[torch.Tensor] | None],
    *,
    device: torch.device | str = "cpu",
    offload_activations: bool | None = None,
    progress: bool = True,
    description: str = "blocks",
    loader: BlockLoader | None = None,
    cache_dtype: torch.dtype | None = None,
    group: Collective = LOCAL,
) -> None:
    """Walk the decoder blocks one at a time on `device`, calling `process(ctx)` for each.

    batches: input ids, each [B, T]; None walks the blocks without data (ctx.inputs is empty).
    process: returns the block's outputs for the cached inputs (the next block's inputs), or None
    to have them computed with a plain forward pass.
    loader: brings each block to the device and takes it away (default: `ResidentBlocks`).
    cache_dtype: dtype of the cached activations (default: the dtype the model computes in).
    group: the processes sharing the work; `batches` are then this process's share (Collective.shard).
    """
    device = torch.device(device)
    loader = loader or ResidentBlocks()
    arch = find_architecture(model)
    prefix, blocks = find_blocks(model, arch)
    if offload_activations is None:
        offload_activations = not _cache_fits(model, batches, device, cache_dtype)
    cache_device = "cpu" if offload_activations else device
    inputs: list[Cached] = []
    if batches is not None:
        with loader.outside(model, blocks, device):
            inputs = capture_block_inputs(model, blocks, batches, device, cache_device, cache_dtype)
        mark("block inputs")

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} blocks"),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    samples = sum(c.args[0].shape[0] for c in inputs)
    with Progress(*columns, disable=not progress or not group.is_writer, transient=False) as bar:
        task = bar.add_task(description, total=len(blocks), rate="")
        for i, block in enumerate(blocks):
            t0 = time.perf_counter()
            with phase("load block", device):
                loader.load(i, block, device)
            ctx = BlockContext(i, f"{prefix}.{i}.", block, inputs, arch.for_block(block), device, group=group)
            outs = process(ctx)
            if inputs:
                outs = ctx.run() if outs is None else outs
                inputs = [Cached((o, *c.args[1:]), c.kwargs) for o, c in zip(outs, inputs, strict=True)]
            loader.release(i, block)
            rate = f"{samples / (time.perf_counter() - t0):.1f} samples/s" if inputs else ""
            bar.update(task, advance=1, rate=rate)


@dataclass
class Streaming:
    """How quantize_sequential handles blocks beyond quantizing them (all optional).

    loader: brings each block to the device and takes it away (default: lazy.ResidentBlocks).
    cache_dtype: dtype of the cached activations (default: the dtype the model computes in).
    store_dtype: dtype the block's float parameters (norms, biases) are written in; they are rounded
        to it before the block produces the next block's inputs, so a checkpoint replays exactly.
    done: blocks below this index are already quantized (a resumed run): only run to get their outputs.
    on_block: called with each newly quantized block and the report so far, before the block is released
        (the streaming writer).
    all_experts: mixture-of-experts blocks send every calibration token through every expert while methods
        gather statistics (the block's output still follows the router), so no expert is left without data.
    """

    loader: BlockLoader | None = None
    cache_dtype: torch.dtype | None = None
    store_dtype: torch.dtype | None = None
    done: int = 0
    on_block: Callable[[BlockContext, QuantizeReport], None] | None = None
    all_experts: bool = False


def quantize_sequential(
    model: nn.Module,
    plan: Plan,
    methods: dict[str, BlockMethod],
    batches: list[torch.Tensor] | None,
    *,
    device: torch.device | str = "cpu",
    offload_activations: bool | None = None,
    input_scales: dict[str, torch.Tensor] | None = None,
    observer_factory: Callable[[QuantScheme], Any] | None = None,
    progress: bool = True,
    streaming: Streaming | None = None,
) -> QuantizeReport:
    """Quantize the decoder blocks of `model` in place, block by block (`quantize_outside_blocks` does the rest).

    plan: full module name -> (scheme, method name, method settings).
    batches: calibration input ids, each [B, T]; None for methods that need no data (RTN).
    input_scales: static activation scales from `qtool calibrate`, by full module name.
    observer_factory: builds an observer for a static-activation scheme (needs `observe`/`result`).
    """
    report = QuantizeReport()
    start = time.perf_counter()
    _check_outside_blocks(model)
    input_scales = dict(input_scales or {})
    streaming = streaming or Streaming()
    group = current(device)  # several processes (torchrun): each calibrates on its share of the batches
    batches = group.shard(batches)

    def process(ctx: BlockContext) -> list[torch.Tensor] | None:
        if ctx.index < streaming.done:
            with dequantized_weights(ctx.block):
                return ctx.run() if ctx.inputs else None
        local = {n[len(ctx.prefix):]: spec for n, spec in plan.items() if n.startswith(ctx.prefix)}
        check_finite(ctx.block, ctx.prefix)  # every method, before AWQ/SmoothQuant fold scales into weights
        outs, errors = _quantize_block(ctx, local, methods, input_scales, observer_factory, streaming)
        for n in local:
            report.layers.append({"name": ctx.prefix + n, "block": ctx.index, "kind": n,
                                  "rel_error": errors.get(n), "method_stats": ctx.stats.get(n, {})})
        report.messages.extend(f"{ctx.prefix}{m}" for m in ctx.messages)
        if streaming.on_block is not None:
            with phase("write block", ctx.device):
                streaming.on_block(ctx, report)
        return outs

    run_sequential(model, batches, process, device=device, offload_activations=offload_activations,
                   progress=progress, description="quantizing", loader=streaming.loader,
                   cache_dtype=streaming.cache_dtype, group=group)
    report.seconds = time.perf_counter() - start
    return report


def _check_outside_blocks(model: nn.Module) -> None:
    """Refuse NaN or infinite weights outside the decoder blocks before any block is quantized."""
    names = {id(m): n for n, m in model.named_modules()}
    for module in non_block_modules(model, find_blocks(model, find_architecture(model))[1]):
        check_finite(module, names[id(module)] + ".")


def _quantize_block(ctx: BlockContext, local: Plan, methods: dict[str, BlockMethod],
                    input_scales: dict[str, torch.Tensor], observer_factory: Callable[[QuantScheme], Any] | None,
                    streaming: Streaming) -> tuple[list[torch.Tensor] | None, dict[str, float]]:
    """Observe, quantize and measure one block; its outputs for the next block (None without data) and
    the relative output error of each linear."""
    errors: dict[str, float] = {}
    # Experts see every token in all passes, or in none: the error report compares the same rows.
    with calibrating_all_experts(ctx.block, streaming.all_experts):
        with phase("observe", ctx.device):
            float_out = _observe(ctx, local, input_scales, observer_factory) if ctx.inputs else {}
        with phase("methods", ctx.device):
            found = _apply_methods(ctx, local, methods)
        _swap_linears(ctx, local, found, input_scales)
        if streaming.store_dtype is not None:
            round_parameters(ctx.block, streaming.store_dtype)
        with phase("measure", ctx.device):
            outs = _measure(ctx, local, float_out, errors) if ctx.inputs else None
    return outs, errors


def _swap_linears(ctx: BlockContext, local: Plan, qtensors: dict[str, QTensor],
                  input_scales: dict[str, torch.Tensor]) -> None:
    """Replace each quantized linear of the block by its QuantLinear."""
    for n, qt in qtensors.items():
        if not ctx.inputs:  # no output error without data: record how far rounding moved the weight
            ctx.record(n, "weight_rel_error", _weight_error(ctx.block.get_submodule(n).weight, qt))
        scale = input_scales.get(ctx.prefix + n)
        q = QuantLinear.from_qtensor(qt, local[n][0], ctx.block.get_submodule(n).bias,
                                     None if scale is None else scale.to(ctx.device))
        set_submodule(ctx.block, n, q)


@torch.no_grad()
def round_parameters(module: nn.Module, dtype: torch.dtype) -> None:
    """Round the floating parameters of `module` to `dtype`, keeping their own dtype: what the block
    computes with afterwards is exactly what a checkpoint in `dtype` stores."""
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.copy_(p.to(dtype))


def _weight_error(weight: torch.Tensor, qt: QTensor) -> float:
    w = weight.detach().float()
    return float((qt.dequantize(torch.float32) - w).norm() / w.norm().clamp_min(1e-12))


def _observe(ctx: BlockContext, local: Plan, input_scales: dict[str, torch.Tensor],
             observer_factory: Callable[[QuantScheme], Any] | None) -> dict[str, torch.Tensor]:
    """Float pass over the block: sample each linear's output rows and observe static-activation inputs."""
    static = [n for n, (s, _, _) in local.items() if s.input_activations is not None
              and not s.input_activations.dynamic and ctx.prefix + n not in input_scales]
    if static and observer_factory is None:
        raise ValueError("static activation scales need calibration statistics: run `qtool calibrate` "
                         "and pass --calibration, or use a dynamic scheme")
    observers = {n: observer_factory(local[n][0]) for n in static}
    float_out: dict[str, torch.Tensor] = {}

    def hook(name, x, y):
        float_out.setdefault(name, _sample_rows(y))
        if name in observers:
            try:
                observers[name].observe(x)
            except ValueError as err:
                raise ValueError(f"{ctx.prefix}{name}: {err}") from None
    # The error report samples rows of the first batch only; observers need every batch.
    ctx.capture(local, hook, batches=None if observers else 1)
    for n, obs in observers.items():
        merge_observer(obs, ctx.group)
        lo, hi = obs.result()
        input_scales[ctx.prefix + n] = _static_scale(lo, hi, local[n][0])
    return float_out


def _apply_methods(ctx: BlockContext, local: Plan, methods: dict[str, BlockMethod]) -> dict[str, QTensor]:
    """Run each method over the linears assigned to it, once per distinct settings (two recipe entries
    may use one method with different settings), in the order they first appear."""
    runs: dict[tuple, tuple[str, dict[str, Any], dict[str, QuantScheme]]] = {}
    for n, (scheme, method, args) in local.items():
        key = (method, repr(sorted(args.items())))
        runs.setdefault(key, (method, args, {}))[2][n] = scheme
    qtensors: dict[str, QTensor] = {}
    for method, args, schemes in runs.values():
        qtensors.update(methods[method](ctx, schemes, **args))
    return qtensors


def _measure(ctx: BlockContext, local: Plan, float_out: dict[str, torch.Tensor],
             errors: dict[str, float]) -> list[torch.Tensor]:
    """Quantized pass: relative error of each linear's sampled output rows; returns the block outputs."""
    def hook(name, x, y):
        ref = float_out.get(name)
        # An expert may be routed other tokens once earlier layers are quantized: no comparison then.
        if ref is not None and name not in errors and (rows := _sample_rows(y)).shape == ref.shape:
            errors[name] = float((rows - ref).norm() / ref.norm().clamp_min(1e-12))
    with dequantized_weights(ctx.block):
        return ctx.capture(local, hook, keep_outputs=True)


def _static_scale(lo: torch.Tensor, hi: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    from .primitives import qparams_from_range
    scale, _ = qparams_from_range(lo.reshape(1), hi.reshape(1), scheme.input_activations)
    return scale


def quantize_outside_blocks(model: nn.Module, plan: Plan) -> None:
    """Linears outside the decoder blocks (an lm_head that is not ignored) get round-to-nearest weights."""
    block_prefix_root = find_blocks(model, find_architecture(model))[0]
    for name, (scheme, _, _) in plan.items():
        if name.startswith(block_prefix_root + "."):
            continue
        lin = model.get_submodule(name)
        if scheme.input_activations is not None and not scheme.input_activations.dynamic:
            raise ValueError(f"{name} is outside the decoder blocks and cannot use static activation scales")
        # A tied lm_head shares its weight with the embeddings; quantizing it must not change them.
        if getattr(model.config, "tie_word_embeddings", False):
            model.config.tie_word_embeddings = False
        qt = quantize_weight(lin.weight.detach().float(), scheme.weights)
        set_submodule(model, name, QuantLinear.from_qtensor(qt, scheme, lin.bias))
