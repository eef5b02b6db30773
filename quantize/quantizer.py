"""The Python API: load a model, quantize it with a recipe, save and load checkpoints.

    import quantize
    model, tokenizer = quantize.load_model("models/smollm2")
    recipe = quantize.Recipe.single(quantize.preset("w4a16"), "gptq")
    result = quantize.quantize_model(model, recipe, calibration=batches)
    quantize.save_checkpoint(model, result.config, "out/w4a16", source_dir="models/smollm2")

Every recipe entry is resolved against its method's record (`resolve_recipe`: known settings, the
scheme the method writes), so the API, recipes and the CLI follow the same rules. `qtool quantize` is
`quantize_to_directory`: load, assign the recipe once, quantize, write.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .distributed import DistributedError, current
from .methods import METHODS, get_method
from .moe import unfuse_experts
from .pipeline import Plan, QuantizeReport, Streaming, quantize_outside_blocks, quantize_sequential
from .recipe import Recipe, RecipeEntry
from .scheme import Assignment, QuantizationConfig, QuantScheme, SchemeError, Strategy
from .streaming import StreamSettings
from .timeline import mark, print_totals

if TYPE_CHECKING:
    from .block import BlockContext
    from .lazy import LazyBlocks
    from .writer import ShardWriter

FORMATS = ("qtool", "compressed-tensors")  # checkpoint formats `quantize_to_directory` writes


class ModelError(ValueError):
    """A model that cannot be found or loaded; the message names it."""


def load_model(name_or_path: str | Path, *, dtype: torch.dtype | None = torch.float32, device: str = "cpu"):
    """A Hugging Face causal LM and its tokenizer, from a local directory or (where reachable) the hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    local = Path(name)
    missing = f"model not found: the folder {name} does not exist"
    if not local.exists() and (name.startswith((".", "/", "~")) or name.count("/") != 1):
        raise ModelError(f"{missing} (and {name} is not a hub id of the form org/name)")
    if not local.exists() and local.parent.is_dir():
        raise ModelError(missing)  # "models/nope" where ./models exists: a typo, not a hub id
    if local.exists() and not (local / "config.json").is_file():
        raise ModelError(f"not a model directory (no config.json): {name}")
    if local.is_dir() and "quantization_config" in _read_config(local / "config.json"):
        raise ModelError(f"{name} is already quantized (its config.json has a quantization_config); "
                         "quantize the float model it was made from")
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()
        unfuse_experts(model)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # noqa: BLE001  (disk full: OSError, or safetensors' own error)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not local.exists():  # a hub id: say first that there is no such folder, the usual mistake
            raise ModelError(f"{missing}, and no hub model {name} could be loaded from here ({reason})") from None
        raise ModelError(f"could not load model {name}: {reason}") from None
    return model, tokenizer


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"corrupt {path}: {err}") from None
    if not isinstance(config, dict):
        raise ModelError(f"corrupt {path}: expected a JSON object")
    return config


def source_dtype(model_dir: str | Path) -> torch.dtype | None:
    """The float dtype a model directory's config.json declares (`dtype`, or `torch_dtype` before
    transformers 5), or None."""
    config = Path(model_dir) / "config.json"
    if not config.is_file():
        return None
    raw = _read_config(config)
    name = raw.get("dtype") or raw.get("torch_dtype")
    return getattr(torch, name) if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype) else None


@dataclass
class QuantizeResult:
    config: QuantizationConfig
    report: QuantizeReport


def validate_scheme(scheme: QuantScheme, model: nn.Module, names: list[str]) -> None:
    """Errors that name the value: a group or block larger than the layer it applies to."""
    w = scheme.weights
    for name in names:
        lin = model.get_submodule(name)
        if w.strategy is Strategy.GROUP and w.group_size > lin.in_features:
            raise SchemeError(f"group size {w.group_size} is larger than {name}'s {lin.in_features} input features")


def resolve_recipe(recipe: Recipe) -> Recipe:
    """`recipe` with every entry checked against its method's record: the method exists, its settings
    are ones the method accepts, and the scheme is what the method writes with them (GPTQ act-order)."""
    entries = []
    for entry in recipe.entries:
        method = get_method(entry.method)
        settings = method.parse_settings(entry.method_args)
        entries.append(replace(entry, scheme=method.resolve(entry.scheme, settings)))
    return replace(recipe, entries=tuple(entries))


def quantize_model(model: nn.Module, recipe: Recipe, *, calibration: list[torch.Tensor] | None = None,
                   device: str | torch.device = "cpu", offload_activations: bool | None = None,
                   input_scales: dict[str, torch.Tensor] | None = None, observer: str = "minmax",
                   progress: bool = True, streaming: Streaming | None = None,
                   assigned: dict[str, RecipeEntry] | None = None) -> QuantizeResult:
    """Quantize `model` in place according to `recipe`.

    calibration: batches of input ids [B, T]; required by gptq, awq and smoothquant and by
    static activation scales (unless `input_scales` come from `qtool calibrate`).
    streaming: dtypes, loader and callbacks of a streamed run; with a loader of its own (quantize/streaming.py)
    the linears outside the decoder blocks are the caller's to quantize.
    assigned: `recipe.assign(model)` where the caller already computed it, `recipe` then being resolved
    (`resolve_recipe`) by the caller too, so that the assignment's entries are the recipe's.
    """
    unfuse_experts(model)  # a mixture of experts built by the caller: experts as linears (moe.py)
    plan, config = plan_quantization(model, recipe, calibration=calibration, input_scales=input_scales,
                                     assigned=assigned)

    def observer_factory(scheme: QuantScheme) -> Any:
        from .observers import make_observer
        return make_observer(observer, scheme.input_activations)

    blocks = {name: m.quantize_block for name, m in METHODS.items()}
    report = quantize_sequential(model, plan, blocks, calibration, device=device,
                                 offload_activations=offload_activations, input_scales=input_scales,
                                 observer_factory=observer_factory, progress=progress, streaming=streaming)
    if streaming is None or streaming.loader is None:
        quantize_outside_blocks(model, plan)
    return QuantizeResult(config, report)


def plan_quantization(model: nn.Module, recipe: Recipe, *, calibration: list[torch.Tensor] | None = None,
                      input_scales: dict[str, torch.Tensor] | None = None,
                      assigned: dict[str, RecipeEntry] | None = None) -> tuple[Plan, QuantizationConfig]:
    """Which scheme and method each linear of `model` gets, checked, and the config a checkpoint stores.
    Needs only the model's structure: a skeleton on the meta device will do. assigned: as for quantize_model."""
    if assigned is None:
        recipe = resolve_recipe(recipe)
        assigned = recipe.assign(model)
    needs_data = sorted(e.method for e in assigned.values() if METHODS[e.method].needs_data)
    if needs_data and not calibration:
        raise SchemeError(f"method {needs_data[0]} needs calibration data (--dataset)")
    static = [n for n, e in assigned.items() if e.scheme.input_activations is not None
              and not e.scheme.input_activations.dynamic and n not in (input_scales or {})]
    if static and not calibration:
        raise SchemeError(f"static activation scales for {static[0]} need calibration statistics: run "
                          "`qtool calibrate` and pass --calibration STATS, or give --dataset to calibrate inline")
    by_entry: dict[int, list[str]] = {}
    for name, entry in assigned.items():
        by_entry.setdefault(id(entry), []).append(name)
    for entry in recipe.entries:
        validate_scheme(entry.scheme, model, by_entry.get(id(entry), []))
    plan = {n: (e.scheme, e.method, e.method_args) for n, e in assigned.items()}
    groups = {}
    for i, entry in enumerate(recipe.entries):
        modules = tuple(by_entry.get(id(entry), []))
        if modules:
            # Schemes stored in a checkpoint apply to exact module names, not regexes.
            groups[f"group_{i}"] = Assignment(replace(entry.scheme, targets=(), ignore=()), modules)
    methods = sorted({e.method for e in assigned.values()})
    config = QuantizationConfig(groups=groups, method="+".join(methods), method_args=_method_args(recipe),
                                ignore=recipe.ignore)
    return plan, config


def _method_args(recipe: Recipe) -> dict[str, Any]:
    """Settings by method for the checkpoint; a method whose entries differ keeps each entry's (a list)."""
    out: dict[str, Any] = {}
    for e in recipe.entries:
        seen = out.setdefault(e.method, [])
        if e.method_args not in seen:
            seen.append(e.method_args)
    return {m: args[0] if len(args) == 1 else args for m, args in out.items()}


@contextlib.contextmanager
def _keep_or_discard(writer, output: str | Path):
    """What a failed streamed run leaves: nothing after bad input (a resumed run would meet it again),
    the finished blocks after a full disk or an interrupt, with the message that says how to go on."""
    from .destination import OutputError, is_disk_full
    from .writer import partial_dir

    try:
        yield
    except ValueError:  # bad input (NaN weights, ...)
        if writer:
            writer.discard()
        raise
    except Exception as err:  # noqa: BLE001  (disk full: OSError, or safetensors' own error)
        if writer:  # the block being written in the background finishes first (kept for --resume)
            writer.settle()
        if is_disk_full(err):
            raise OutputError(f"no space left on the device to write {output}; finished blocks are kept in "
                              f"{partial_dir(output)}: free some space and continue with --resume") from None
        raise
    except KeyboardInterrupt as err:  # SIGINT, or SIGTERM as quantize.errors.Terminated: say how to go on
        if writer:
            writer.settle()
        raise type(err)(f"interrupted: finished blocks are kept in {partial_dir(output)}; continue with "
                        "the same command and --resume") from None


def quantize_to_checkpoint(model_dir: str | Path, recipe: Recipe, output: str | Path, *,
                           calibration: list[torch.Tensor] | None = None, device: str | torch.device = "cpu",
                           settings: StreamSettings | None = None, skeleton_model: nn.Module | None = None,
                           input_scales: dict[str, torch.Tensor] | None = None, observer: str = "minmax",
                           offload_activations: bool | None = None, progress: bool = True,
                           extra_json: dict[str, Any] | None = None,
                           assigned: dict[str, RecipeEntry] | None = None) -> QuantizeResult:
    """Quantize the model in `model_dir` with `recipe` and write the checkpoint `output` block by block.

    The returned report covers every block, those of a resumed run's earlier part included; it is
    also written as layer_errors.json next to the entries of `extra_json`. assigned: as for quantize_model.
    """
    from .lazy import LazyBlocks, SourceWeights, skeleton
    from .mappings import find_architecture, find_blocks
    from .streaming import block_schemes
    from .validation import check_finite_tensors

    settings = settings or StreamSettings()
    weights = SourceWeights.open(model_dir)
    model = skeleton_model if skeleton_model is not None else skeleton(model_dir, weights)
    store = settings.dtype or weights.dtype
    cache = settings.cache_dtype or weights.dtype
    if assigned is None:
        recipe = resolve_recipe(recipe)
        assigned = recipe.assign(model)
    plan, config = plan_quantization(model, recipe, calibration=calibration, input_scales=input_scales,
                                     assigned=assigned)
    group = current(device)
    if settings.resume and group.active:
        raise DistributedError("--resume runs in one process: continue the run without torchrun or --gpus")
    # Rank 0 alone writes (several processes: distributed.py); the others compute the same blocks.
    writer = _open_writer(output, model_dir, config, calibration, input_scales, observer, settings,
                          store, cache) if group.is_writer else None
    done = writer.state.done if writer else 0
    prefix, _ = find_blocks(model, find_architecture(model))
    loader = LazyBlocks(model, weights, compute_dtype=settings.compute_dtype, done=done,
                        partial=writer.read_block if writer else None,
                        schemes=block_schemes(plan, prefix), replay=calibration is not None)
    streaming = Streaming(loader=loader, cache_dtype=cache, store_dtype=store, done=done,
                          on_block=_block_writer(writer, store) if writer else None, all_experts=settings.all_experts)
    with _keep_or_discard(writer, output):
        # Embeddings, final norm and lm_head before any work (the pipeline checks each block in its turn).
        for name in loader.outside_names():  # one at a time: the host holds no more than the end does
            check_finite_tensors(weights.read([name]))
        result = quantize_model(model, recipe, calibration=calibration, device=device,
                                offload_activations=offload_activations, input_scales=input_scales, observer=observer,
                                progress=progress, streaming=streaming, assigned=assigned)
        mark("blocks")
        print_totals()
        group.barrier()  # every rank has finished its blocks before rank 0 publishes
        if writer:
            _finish_checkpoint(writer, result, model, loader, plan, config, store, extra_json, model_dir)
            mark("checkpoint written")
        group.barrier()  # and the others return only once the checkpoint is in place
    return result


def _open_writer(output: str | Path, model_dir: str | Path, config: QuantizationConfig,
                 calibration: list[torch.Tensor] | None, input_scales: dict[str, torch.Tensor] | None,
                 observer: str, settings: StreamSettings, store: torch.dtype, cache: torch.dtype) -> ShardWriter:
    """The block writer of `output`, fingerprinted with everything that changes the result, so that
    --resume refuses to continue a run made with other inputs."""
    from .streaming import fingerprint_settings
    from .writer import ShardWriter

    fingerprint = fingerprint_settings(model_dir, config.to_dict(), calibration, input_scales, observer)
    fingerprint.update(dtype=str(store), cache_dtype=str(cache), compute_dtype=str(settings.compute_dtype))
    return ShardWriter(output, fingerprint, resume=settings.resume, overwrite=settings.overwrite)


def _block_writer(writer: ShardWriter, store: torch.dtype) -> Callable[[BlockContext, QuantizeReport], None]:
    """`Streaming.on_block` for `writer`: each quantized block with its part of the report, in `store`."""
    from .checkpoint import unique_state_dict

    def on_block(ctx: BlockContext, report: QuantizeReport) -> None:
        layers = [entry for entry in report.layers if entry["block"] == ctx.index]
        messages = [m for m in report.messages if m.startswith(ctx.prefix)]
        writer.write_block(ctx.index, unique_state_dict(ctx.block, store, prefix=ctx.prefix), layers, messages)

    return on_block


def _finish_checkpoint(writer: ShardWriter, result: QuantizeResult, model: nn.Module, loader: LazyBlocks, plan: Plan,
                       config: QuantizationConfig, store: torch.dtype, extra_json: dict[str, Any] | None,
                       model_dir: str | Path) -> None:
    """Publish the checkpoint: the tensors outside the blocks, the config and the report of every block
    (a resumed run's earlier ones included, which `result.report` then takes from the writer)."""
    from .checkpoint import checkpoint_config
    from .streaming import outside_tensors

    result.report.layers, result.report.messages = writer.state.layers, writer.state.messages
    rest = outside_tensors(model, loader, plan, store)
    extra = {**(extra_json or {}), "layer_errors.json": result.report.to_dict()}
    writer.finish(rest, checkpoint_config(model.config, config, store), extra_json=extra, source_dir=model_dir)


def quantize_to_directory(model_path: str | Path, output: str | Path, recipe: Recipe, *,
                          calibration: Callable[[nn.Module, Any], list[torch.Tensor] | None] | None = None,
                          calibration_stats: str | Path | None = None, observer: str = "minmax",
                          offload_activations: bool | None = None, device: str = "cpu", format: str = "qtool",
                          overwrite: bool = False, resume: bool = False, dtype: torch.dtype | None = None,
                          compute_dtype: torch.dtype = torch.float32, stream: bool = True,
                          all_experts: bool = False) -> QuantizeResult:
    """Load the model at `model_path`, quantize it by `recipe` and write the checkpoint to `output`
    (`qtool quantize`). calibration: (model, tokenizer) -> batches of input ids [B, T], or None;
    calibration_stats: a `qtool calibrate` directory for static activation scales.

    A safetensors model directory written as `format="qtool"` is read one block at a time and the
    checkpoint written block by block (quantize/streaming.py; `stream=False` loads it whole, as data-free
    calibration needs); an interrupted streamed run leaves `.NAME.partial` beside `output`, which
    `resume=True` continues. dtype: of the unquantized tensors written (None: the source's);
    compute_dtype: what each block runs in; all_experts: mixture-of-experts blocks run every calibration token
    through every expert for statistics (`Streaming.all_experts`). Under torchrun each process calibrates
    on its share of the batches and rank 0 writes (quantize/distributed.py)."""
    from .compressed import check_exportable
    from .destination import check_output
    from .validation import check_device

    if format not in FORMATS:
        raise ValueError(f"unknown --format {format!r}; choose from {', '.join(FORMATS)}")
    check_device(device)
    check_output(output, overwrite=overwrite, reads=(model_path, calibration_stats))  # before any work
    recipe = resolve_recipe(recipe)
    lazy, model, tokenizer = _open_model(model_path, stream and format == "qtool", resume, compute_dtype)
    assigned = recipe.assign(model)
    if format == "compressed-tensors":  # fail before quantizing, not after
        for name, entry in assigned.items():
            check_exportable(name, entry.scheme, model.get_submodule(name).in_features)
    batches = calibration(model, tokenizer) if calibration is not None else None
    mark("calibration data")
    input_scales = None
    if calibration_stats is not None:
        from .calibration import load_stats
        input_scales = load_stats(calibration_stats).input_scales({n: e.scheme for n, e in assigned.items()})
    if lazy:
        settings = StreamSettings(dtype=dtype, compute_dtype=compute_dtype, resume=resume, overwrite=overwrite,
                                  all_experts=all_experts)
        return quantize_to_checkpoint(model_path, recipe, output, calibration=batches, device=device,
                                      settings=settings, skeleton_model=model, input_scales=input_scales,
                                      observer=observer, offload_activations=offload_activations,
                                      assigned=assigned)
    store_dtype = dtype or source_dtype(model_path)
    result = quantize_model(model, recipe, calibration=batches, device=device, input_scales=input_scales,
                            offload_activations=offload_activations, observer=observer, assigned=assigned,
                            streaming=Streaming(store_dtype=store_dtype, all_experts=all_experts))
    if current(device).is_writer:
        _save_whole(model, result, model_path, output, format=format, overwrite=overwrite, dtype=store_dtype)
    return result


def _open_model(model_path: str | Path, stream: bool, resume: bool,
                compute_dtype: torch.dtype) -> tuple[bool, nn.Module, Any]:
    """Whether the run streams, and the model with its tokenizer: a skeleton whose blocks are read one at a
    time (`stream` and a safetensors directory), else the whole model in `compute_dtype`."""
    from .streaming import open_lazily

    lazy = open_lazily(model_path) if stream else None
    mark("model skeleton and tokenizer")
    if resume and not lazy:
        raise ValueError("--resume needs a safetensors model directory and --format qtool")
    model, tokenizer = lazy if lazy else load_model(model_path, dtype=compute_dtype)
    return bool(lazy), model, tokenizer


def _save_whole(model: nn.Module, result: QuantizeResult, model_path: str | Path, output: str | Path, *,
                format: str, overwrite: bool, dtype: torch.dtype | None) -> None:
    """Write a model quantized in memory as one checkpoint in `format`, its layer errors beside it."""
    from .checkpoint import save_checkpoint
    from .compressed import write_compressed_tensors

    source, extra = model_path if Path(model_path).is_dir() else None, {"layer_errors.json": result.report.to_dict()}
    if format == "compressed-tensors":
        write_compressed_tensors(model, output, source_dir=source, overwrite=overwrite, extra_json=extra)
    else:
        save_checkpoint(model, result.config, output, source_dir=source, overwrite=overwrite, extra_json=extra,
                        dtype=dtype)
