"""`qtool finetune`: quantization-aware training, written as an ordinary qtool checkpoint.

The recipe of EfficientQAT (Chen et al. 2024) and the block reconstruction of BRECQ/OmniQuant:
  1. block by block (one decoder block on the device at a time, as `qtool quantize`): initialise the
     block's linears from RTN, GPTQ or an existing checkpoint, then train their master weights, scales
     and zero points (qat.py: STE + LSQ) to minimise the MSE between the block's output on the
     quantized model's activations and the float block's output on the float model's activations, so
     each block also corrects the error of those before it;
  2. optionally end to end: train only the scales and zero points of the whole model to minimise
     KL(float || quantized) of the next-token distributions (the float model is the teacher).
Master copies are float32; on a GPU the forward runs in bf16 autocast, on the CPU in float32.
The trained layers become QuantLinear modules whose outputs equal the fake-quantized ones.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .linear import QuantLinear, set_submodule
from .pipeline import BlockContext, Cached, _move, run_sequential
from .primitives import QTensor, group_index
from .qat import FakeQuantLinear, fake_layers, trainable
from .scheme import QuantScheme, SchemeError, Strategy


@dataclass(frozen=True)
class FinetuneSettings:
    """What `qtool finetune` trains and how; stored in the checkpoint as method_args["qat"].

    init: "rtn", "gptq" (with `static_groups`, GPTQ's option) or the path of a qtool checkpoint.
    steps: optimizer steps per decoder block (block output MSE), one batch each.
    e2e_steps: optimizer steps of end-to-end KL distillation on the logits (scales and zero points only).
    lr: Adam learning rate of the master weights and zero points, in quantization steps (the layer's mean
        scale) per Adam step; scale_lr, e2e_lr: of the scales, relative to the layer's mean scale, in the
        block-wise and end-to-end phases. Cosine decay to 0 in each phase.
    """

    init: str = "rtn"
    steps: int = 100
    e2e_steps: int = 0
    lr: float = 1e-3
    scale_lr: float = 1e-3
    e2e_lr: float = 5e-4
    static_groups: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "e2e_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "scale_lr", "e2e_lr"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FinetuneReport:
    """Per block: mean output MSE at init and after training; e2e: mean KL on the check batches before and after."""

    blocks: list[dict[str, float]] = field(default_factory=list)
    e2e: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "e2e": self.e2e}


InitFn = Callable[[BlockContext, dict[str, QuantScheme]], dict[str, QTensor]]


def _block_output(block: nn.Module, cached: Cached, device: torch.device, autocast: bool) -> torch.Tensor:
    dtype = next(block.parameters()).dtype
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        out = block(*_move(cached.args, device, dtype), **_move(cached.kwargs, device, dtype))
    return (out[0] if isinstance(out, tuple) else out).float()


def _mean_mse(block: nn.Module, inputs: list[Cached], targets: list[torch.Tensor], device, autocast) -> float:
    with torch.no_grad():
        losses = [F.mse_loss(_block_output(block, c, device, autocast), t.to(device).float()).item()
                  for c, t in zip(inputs, targets, strict=True)]
    return sum(losses) / len(losses)


class _Trainer:
    """Adam with cosine decay over the fake-quant parameters of `module` (everything else frozen);
    `step(loss)` also keeps scales positive and zero points in range."""

    def __init__(self, module: nn.Module, steps: int, step_lr: float | None, scale_lr: float) -> None:
        for p in module.parameters():
            p.requires_grad_(False)
        groups = trainable(module, step_lr, scale_lr)
        for g in groups:
            for p in g["params"]:
                p.requires_grad_(True)
        self.module, self.layers = module, list(fake_layers(module).values())
        self.optimizer = torch.optim.Adam(groups)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / max(steps, 1))))

    def step(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        for layer in self.layers:
            layer.clamp_()
        return loss.item()

    def finish(self) -> None:
        for p in self.module.parameters():
            p.requires_grad_(False)


def train_block(block: nn.Module, inputs: list[Cached], targets: list[torch.Tensor], settings: FinetuneSettings,
                device: torch.device, tick: Callable[[float], None] = lambda loss: None) -> dict[str, float]:
    """Train the fake-quant layers of `block` so its outputs on `inputs` match `targets` (MSE); a block
    whose mean MSE over `inputs` ends higher than it started is put back as it started (`reverted`)."""
    autocast = device.type == "cuda"
    before = _mean_mse(block, inputs, targets, device, autocast)
    start = {n: p.detach().clone() for n, p in block.named_parameters()}
    trainer = _Trainer(block, settings.steps, settings.lr, settings.scale_lr)
    order = random.Random(settings.seed)
    for step in range(settings.steps):
        # Every batch once, then batches drawn at random.
        i = order.randrange(len(inputs)) if step >= len(inputs) else step
        loss = F.mse_loss(_block_output(block, inputs[i], device, autocast), targets[i].to(device).float())
        tick(trainer.step(loss))
    trainer.finish()
    after = _mean_mse(block, inputs, targets, device, autocast)
    if after > before:  # a learning rate too high for this block: keep its start rather than make it worse
        with torch.no_grad():
            for n, p in block.named_parameters():
                p.copy_(start[n])
        return {"mse_init": before, "mse_final": before, "mse_trained": after, "reverted": 1.0}
    return {"mse_init": before, "mse_final": after}


def finetune_blocks(model: nn.Module, schemes: dict[str, QuantScheme], batches: list[torch.Tensor],
                    settings: FinetuneSettings, *, init: InitFn | None = None, device: str | torch.device = "cpu",
                    tick: Callable[[float], None] = lambda loss: None,
                    note: Callable[[str], None] = lambda line: None) -> FinetuneReport:
    """Swap the linears named in `schemes` (full names, inside the decoder blocks) for FakeQuantLinear and
    train them block by block (module docstring, step 1). init: quantized weights of a block's linears to
    start from, given the float block (local names); None: RTN scales on the float weights."""
    device = torch.device(device)
    report = FinetuneReport()
    float_inputs: list[Cached] = []

    def process(ctx: BlockContext) -> list[torch.Tensor]:
        nonlocal float_inputs
        float_inputs = float_inputs or ctx.inputs
        targets = dataclasses.replace(ctx, inputs=float_inputs).run()
        local = {n[len(ctx.prefix):]: s for n, s in schemes.items() if n.startswith(ctx.prefix)}
        starts = init(ctx, local) if init is not None else {}
        for name, scheme in local.items():
            linear = ctx.block.get_submodule(name)
            set_submodule(ctx.block, name, FakeQuantLinear.from_linear(linear, scheme.weights, starts.get(name)))
        stats = train_block(ctx.block, ctx.inputs, targets, settings, ctx.device, tick)
        report.blocks.append({"block": ctx.index, **stats})
        note(f"block {ctx.index}: output MSE {stats['mse_init']:.4g} -> {stats['mse_final']:.4g}")
        float_inputs = [Cached((t, *c.args[1:]), c.kwargs) for t, c in zip(targets, float_inputs, strict=True)]
        return ctx.run()

    run_sequential(model, batches, process, device=device, progress=False)
    return report


KL_CHECK_BATCHES = 4  # batches on which the end-to-end phase is scored before and after


def _kl(student: nn.Module, teacher: nn.Module, ids: torch.Tensor, autocast: bool) -> torch.Tensor:
    """Mean KL(teacher || student) per token of the next-token distributions on input ids [B, T]."""
    with torch.no_grad(), torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        target = F.log_softmax(teacher(input_ids=ids, use_cache=False).logits.float(), -1)
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = student(input_ids=ids, use_cache=False).logits
    return F.kl_div(F.log_softmax(logits.float(), -1).flatten(0, 1), target.flatten(0, 1),
                    log_target=True, reduction="batchmean")


def distill(student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor], settings: FinetuneSettings,
            *, device: str | torch.device = "cpu", tick: Callable[[float], None] = lambda loss: None) -> dict:
    """End-to-end KL(teacher || student) over next-token distributions, training only the scales and zero
    points of the student's fake-quant layers (EfficientQAT's E2E-QP); both models on `device`. Scored on
    the first KL_CHECK_BATCHES batches before and after: a phase that ends worse is undone (`reverted`)."""
    device = torch.device(device)
    autocast = device.type == "cuda"
    student.to(device)
    teacher.to(device)
    check = [b.to(device) for b in batches[:KL_CHECK_BATCHES]]

    def score() -> float:
        with torch.no_grad():
            return sum(float(_kl(student, teacher, ids, autocast)) for ids in check) / len(check)

    before = score()
    start = {n: p.detach().clone() for n, p in student.named_parameters() if n.endswith(("scale", "zero_point"))}
    trainer = _Trainer(student, settings.e2e_steps, None, settings.e2e_lr)
    for step in range(settings.e2e_steps):
        tick(trainer.step(_kl(student, teacher, batches[step % len(batches)].to(device), autocast)))
    trainer.finish()
    after = score()
    if after > before:
        with torch.no_grad():
            for n, p in student.named_parameters():
                if n in start:
                    p.copy_(start[n])
        return {"kl_init": before, "kl_final": before, "kl_trained": after, "reverted": 1.0}
    return {"kl_init": before, "kl_final": after}


def to_quant_linears(model: nn.Module, scheme: QuantScheme) -> None:
    """Replace every FakeQuantLinear by the QuantLinear of its exported codes (same outputs)."""
    for name, layer in fake_layers(model).items():
        qt = layer.export()
        if scheme.weights.actorder and qt.g_idx is None:  # GPTQ left this layer's columns in their groups
            qt.g_idx = group_index(layer.in_features, scheme.weights.group_size, qt.values.device)
        set_submodule(model, name, QuantLinear.from_qtensor(qt, scheme, layer.bias))


def check_trainable(scheme: QuantScheme) -> None:
    """Schemes finetune trains: integer weights, 16-bit activations, group/channel/tensor scales."""
    w = scheme.weights
    if w.is_float or not scheme.weight_only or w.strategy not in (Strategy.GROUP, Strategy.CHANNEL, Strategy.TENSOR):
        raise SchemeError(f"finetune trains integer weight-only schemes with group, channel or tensor scales, "
                          f"not {scheme.describe()}")


def _checkpoint_init(path: str) -> tuple[QuantScheme, InitFn]:
    """The scheme of a qtool checkpoint (one for all its layers) and an init that reads its weights."""
    from .loading import read_validated
    from .primitives import unpack_int

    qconfig, tensors = read_validated(path)[1:]
    schemes = {s.to_json() for s in qconfig.module_schemes().values()}
    if len(schemes) != 1:
        raise SchemeError(f"--init {path}: finetune starts from a checkpoint with one scheme, it has {len(schemes)}")
    # Stored schemes name no targets (their modules are listed): train exactly the modules it quantized.
    modules = sorted(qconfig.module_schemes())
    scheme = dataclasses.replace(QuantScheme.from_json(schemes.pop()), ignore=(),
                                 targets=tuple(f"^{re.escape(m)}$" for m in modules))
    check_trainable(scheme)

    def init(ctx: BlockContext, local: dict[str, QuantScheme]) -> dict[str, QTensor]:
        out = {}
        for name in local:
            full, w = ctx.prefix + name, scheme.weights
            if full + ".weight_scale" not in tensors:
                raise SchemeError(f"--init {path} has no quantized weight for {full}")
            k = ctx.block.get_submodule(name).in_features
            codes = unpack_int(tensors[full + ".weight_packed"], w.num_bits, k) if w.packed else tensors[full + ".weight"]
            out[name] = QTensor(codes, tensors[full + ".weight_scale"], tensors.get(full + ".weight_zero_point"), w,
                                tensors.get(full + ".weight_g_idx"))
        return out

    return scheme, init


def resolve_init(scheme: QuantScheme | None, settings: FinetuneSettings) -> tuple[QuantScheme, InitFn | None, str, dict]:
    """(scheme as written, init function, planning method, its settings) for settings.init."""
    from .methods import get_method
    from .methods.gptq import GPTQSettings
    from .methods.gptq_block import quantize_block as gptq_block

    if settings.init not in ("rtn", "gptq"):
        given, init = _checkpoint_init(settings.init)
        if scheme is not None and (scheme.weights, scheme.input_activations) != (given.weights, given.input_activations):
            raise SchemeError(f"--init {settings.init} holds {given.describe()}, not {scheme.describe()}; "
                              "leave out --scheme to finetune it as it is")
        if given.weights.actorder:  # its g_idx is kept: plan it as GPTQ's dynamic groups write it
            return given, init, "gptq", {"static_groups": False}
        return given, init, "rtn", {}
    if scheme is None:
        raise SchemeError("finetune needs --scheme (w4a16, w3a16, w2a16, w1a16, ...)")
    check_trainable(scheme)
    if settings.init == "rtn":
        return scheme, None, "rtn", {}
    args = {} if settings.static_groups is None else {"static_groups": settings.static_groups}
    resolved = get_method("gptq").resolve(scheme, GPTQSettings(**args))

    def init(ctx: BlockContext, local: dict[str, QuantScheme]) -> dict[str, QTensor]:
        return gptq_block(ctx, {n: resolved for n in local}, **args)

    return resolved, init, "gptq", args


def finetune_model(model: nn.Module, scheme: QuantScheme | None, batches: list[torch.Tensor],
                   settings: FinetuneSettings, *, teacher: nn.Module | None = None,
                   device: str | torch.device = "cpu", progress: bool = True):
    """Quantization-aware training of the float `model` in place; returns (QuantizationConfig, FinetuneReport).

    batches: training input ids, each [B, T]; teacher: the float model, needed for settings.e2e_steps.
    Afterwards `model` holds QuantLinear modules: `save_checkpoint(model, config, ...)` writes it.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .mappings import find_architecture, find_blocks
    from .pipeline import quantize_outside_blocks
    from .quantizer import plan_quantization
    from .recipe import Recipe

    if not batches:
        raise SchemeError("finetune needs training data (--dataset)")
    if settings.e2e_steps and teacher is None:
        raise SchemeError("end-to-end distillation (e2e_steps) needs the float model as teacher")
    scheme, init, method, method_args = resolve_init(scheme, settings)
    plan, config = plan_quantization(model, Recipe.single(scheme, method, method_args), calibration=batches)
    config = dataclasses.replace(config, method="qat", method_args={"qat": settings.to_dict()})
    prefix = find_blocks(model, find_architecture(model))[0] + "."
    schemes = {n: s for n, (s, _, _) in plan.items() if n.startswith(prefix)}
    blocks = len(find_blocks(model, find_architecture(model))[1])
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("finetuning", total=blocks * settings.steps + settings.e2e_steps, loss="-")

        def tick(loss: float) -> None:
            bar.update(task, advance=1, loss=f"{loss:.4g}")

        report = finetune_blocks(model, schemes, batches, settings, init=init, device=device, tick=tick,
                                 note=lambda line: bar.console.print(line, highlight=False))
        if settings.e2e_steps:
            bar.update(task, description="distilling")
            report.e2e = distill(model, teacher, batches, settings, device=device, tick=tick)
            model.to("cpu")
    to_quant_linears(model, scheme)
    quantize_outside_blocks(model, plan)
    return config, report


def finetune_to_directory(model_path: str, output: str, scheme: QuantScheme | None, settings: FinetuneSettings, *,
                          calibration: Callable[[nn.Module, Any], list[torch.Tensor] | None],
                          device: str = "cpu", overwrite: bool = False, progress: bool = True) -> FinetuneReport:
    """`qtool finetune`: load the float model, train, write the checkpoint `output` (atomically).
    calibration: (model, tokenizer) -> training batches [B, T]."""
    from pathlib import Path

    from .checkpoint import save_checkpoint
    from .destination import check_output
    from .quantizer import load_model, source_dtype
    from .validation import check_device

    check_device(device)
    check_output(output, overwrite=overwrite,
                 reads=(model_path, None if settings.init in ("rtn", "gptq") else settings.init))
    if settings.init not in ("rtn", "gptq") and not Path(settings.init).is_dir():
        raise SchemeError(f"--init must be rtn, gptq or a qtool checkpoint directory; {settings.init} is none")
    resolve_init(scheme, settings)  # a bad scheme or init fails before the model loads
    torch.manual_seed(settings.seed)
    model, tokenizer = load_model(model_path)
    batches = calibration(model, tokenizer)
    teacher = load_model(model_path)[0] if settings.e2e_steps else None
    config, report = finetune_model(model, scheme, batches or [], settings, teacher=teacher, device=device,
                                    progress=progress)
    save_checkpoint(model, config, output, source_dir=model_path, overwrite=overwrite,
                    extra_json={"finetune.json": report.to_dict()}, dtype=source_dtype(model_path))
    return report
