"""The `qtool` command. Each command is thin: parse options (defined once in cli_options.py), call the API.

quantize, inspect, calibrate and export live here; eval, report, bench and kernels in cli_tools.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from . import cli_finetune, cli_tools  # noqa: F401  (register finetune, eval, report, bench, kernels on `app`)
from .cli_options import (
    SETTING_OPTIONS,
    ActOrderOpt,
    AlphaOpt,
    BatchSizeOpt,
    BitsOpt,
    CalibrationOpt,
    CheckpointArg,
    ClipOpt,
    ComputeDtypeOpt,
    DampOpt,
    DatasetConfigOpt,
    DatasetOpt,
    DeviceOpt,
    DtypeOpt,
    DuoScalingOpt,
    ExportFormatOpt,
    FormatOpt,
    GpusOpt,
    GroupSizeOpt,
    LmHeadOpt,
    MethodOpt,
    ModelArg,
    MoEAllExpertsOpt,
    NumSamplesOpt,
    OffloadOpt,
    OutputOpt,
    OverwriteOpt,
    RecipeOpt,
    ResumeOpt,
    SchemeOpt,
    SeedOpt,
    SeqLenOpt,
    SplitOpt,
    StaticGroupsOpt,
    SymmetricOpt,
    TextColumnOpt,
    TrueSequentialOpt,
    WeightsOpt,
    _calibration,
    app,
    console,
    err_console,
    handles_errors,
    single_recipe,
)

if TYPE_CHECKING:
    from .distributed import Collective
    from .quantizer import QuantizeResult
    from .recipe import Recipe


@app.command()
@handles_errors
def quantize(
    model: ModelArg,
    output: OutputOpt,
    method: MethodOpt = None,
    scheme: SchemeOpt = None,
    recipe: RecipeOpt = None,
    bits: BitsOpt = None,
    group_size: GroupSizeOpt = None,
    symmetric: SymmetricOpt = None,
    dataset: DatasetOpt = None,
    dataset_config: DatasetConfigOpt = None,
    split: SplitOpt = "train",
    text_column: TextColumnOpt = "text",
    num_samples: NumSamplesOpt = 128,
    seq_len: SeqLenOpt = 512,
    batch_size: BatchSizeOpt = 4,
    seed: SeedOpt = 0,
    damp: DampOpt = None,
    act_order: ActOrderOpt = None,
    static_groups: StaticGroupsOpt = None,
    true_sequential: TrueSequentialOpt = None,
    clip: ClipOpt = None,
    duo_scaling: DuoScalingOpt = None,
    alpha: AlphaOpt = None,
    weights_method: WeightsOpt = None,
    calibration: CalibrationOpt = None,
    observer: Annotated[str, typer.Option(help="Observer for inline static activation calibration.")] = "minmax",
    offload_activations: OffloadOpt = None,
    device: DeviceOpt = None,
    format: FormatOpt = "qtool",
    overwrite: OverwriteOpt = False,
    resume: ResumeOpt = False,
    dtype: DtypeOpt = "auto",
    compute_dtype: ComputeDtypeOpt = "float32",
    gpus: GpusOpt = None,
    moe_calibrate_all_experts: MoEAllExpertsOpt = False,
    quantize_lm_head: LmHeadOpt = False,
) -> None:
    """Quantize MODEL layer by layer and write a packed safetensors checkpoint.

    A safetensors MODEL directory is read one block at a time and the checkpoint written block by block
    (host memory independent of depth); Ctrl-C or a crash leaves a partial directory that --resume continues.
    Several GPUs: --gpus N, or `torchrun --nproc-per-node N -m quantize quantize ...` (README, "Several GPUs").
    """
    from functools import partial

    from . import distributed
    from .quantizer import quantize_to_directory
    from .validation import check_positive, check_range

    check_positive(num_samples=num_samples, seq_len=seq_len, batch_size=batch_size)
    group, device = _start_processes(device, gpus)
    check_range("--damp", damp, low=0)
    values = (damp, act_order, static_groups, true_sequential, clip, duo_scaling, alpha, weights_method)
    settings = {name: v for name, v in zip(SETTING_OPTIONS.values(), values, strict=True) if v is not None}
    plan = _choose_recipe(recipe, method, scheme, bits, group_size, symmetric, settings, quantize_lm_head)
    data = partial(_calibration, dataset=dataset, dataset_config=dataset_config, split=split,
                   text_column=text_column, num_samples=num_samples, seq_len=seq_len, seed=seed, batch_size=batch_size)
    result = quantize_to_directory(model, output, plan, calibration=data, calibration_stats=calibration,
                                   observer=observer, offload_activations=offload_activations, device=device,
                                   format=format, overwrite=overwrite, resume=resume,
                                   dtype=None if dtype == "auto" else _float_dtype(dtype, "--dtype"),
                                   compute_dtype=_float_dtype(compute_dtype, "--compute-dtype"),
                                   stream=dataset != "synthetic",  # data-free calibration samples the whole model
                                   all_experts=moe_calibrate_all_experts)
    distributed.stop()
    if group.is_writer:
        _print_result(result, output)


def _start_processes(device: str | None, gpus: int | None) -> tuple[Collective, str]:
    """The process group of this run and its device; with --gpus N (N > 1) outside torchrun, this process
    relaunches the command as N children and exits with their status."""
    import sys

    from . import distributed
    from .timeline import mark
    from .validation import check_positive

    # --gpus N means GPUs unless --device says otherwise (N CPU processes are for tests and CPU clusters).
    device = device or ("cuda" if gpus is not None and gpus > 1 else "cpu")
    if gpus is not None:
        check_positive(gpus=gpus)
        if gpus > 1 and not distributed.launched():  # the children see WORLD_SIZE and run below
            raise typer.Exit(distributed.relaunch(sys.argv[1:], gpus))
    mark("command line parsed")
    group, device = distributed.start(device)
    mark("process group")
    return group, device


def _choose_recipe(recipe: Path | None, method: str | None, scheme: str | None, bits: int | None,
                   group_size: int | None, symmetric: bool | None, settings: dict, lm_head: bool = False) -> Recipe:
    """The recipe file, which then must be the only source of method, scheme and settings; else a
    one-entry recipe from the options (lm_head: quantize lm_head too)."""
    from .recipe import Recipe

    if recipe is None:
        plan = single_recipe(method or "rtn", scheme, bits, group_size, symmetric, settings)
        return plan.with_lm_head() if lm_head else plan
    given = [opt for opt, value in (("--method", method), ("--scheme", scheme), ("--bits", bits),
                                    ("--group-size", group_size), ("--symmetric/--asymmetric", symmetric))
             if value is not None] + [o for o, n in SETTING_OPTIONS.items() if n in settings]
    given += ["--quantize-lm-head"] * lm_head
    if given:
        raise ValueError(f"{given[0]} does not apply with --recipe: set it in the recipe {recipe}")
    return Recipe.load(recipe)


def _print_result(result: QuantizeResult, output: Path) -> None:
    """The run's notes (from its layer errors) on stderr, then what was written and how long it took."""
    from .report import summarize_notes

    for message in summarize_notes(result.report.messages, output / "layer_errors.json"):
        err_console.print(f"[yellow]note:[/] {message}", highlight=False)
    console.print(f"wrote {output} ({_dir_size(output) / 2**20:.1f} MiB) in {result.report.seconds:.1f} s",
                  soft_wrap=True)


def _float_dtype(name: str, option: str):
    import torch

    if name not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"unknown {option} {name!r}; choose from {'auto, ' if option == '--dtype' else ''}"
                         "bfloat16, float16, float32")
    return getattr(torch, name)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@app.command()
@handles_errors
def inspect(
    checkpoint: CheckpointArg,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON.")] = None,
) -> None:
    """Show a checkpoint's schemes, per-layer formats and sizes, and its compression ratio."""
    from .destination import check_output_file
    from .loading import read_validated

    check_output_file(json_out, "--json")
    _, qconfig, tensors = read_validated(checkpoint)
    schemes = qconfig.module_schemes()
    rows, stored, original = [], 0, 0
    for name, scheme in schemes.items():
        parts = {k: v for k, v in tensors.items() if k.startswith(name + ".")}
        weight = parts.get(name + ".weight")
        shape = parts.get(name + ".weight_shape")
        if weight is None and shape is None:
            raise ValueError(f"corrupt checkpoint: no weight tensors for quantized layer {name}")
        n, k = (weight.shape if weight is not None else shape.tolist())
        nbytes = sum(t.numel() * t.element_size() for t in parts.values())
        rows.append((name, scheme.describe(), f"{n}x{k}", nbytes))
        stored += nbytes
        original += n * k * 2
    rest = [t for k, t in tensors.items() if not any(k.startswith(n + ".") for n in schemes)]
    other = sum(t.numel() * t.element_size() for t in rest)
    original += sum(t.numel() * 2 for t in rest)  # the bf16 baseline stores everything in 2 bytes
    total = stored + other
    table = Table(title=f"{checkpoint}  method={qconfig.method}")
    table.add_column("layer", overflow="fold")  # long module names wrap at 80 columns, never cut
    for col in ("scheme", "shape", "bytes"):
        table.add_column(col)
    for name, desc, shape, nbytes in rows:
        table.add_row(name, desc, shape, f"{nbytes:,}")
    console.print(table)
    ratio = original / max(total, 1)
    summary = {"method": qconfig.method, "quantized_layers": len(rows), "quantized_bytes": stored,
               "other_bytes": other, "total_bytes": total, "bf16_bytes": original,
               "compression_vs_bf16": ratio,
               "schemes": {g: a.scheme.describe() for g, a in qconfig.groups.items()}}
    console.print(f"{len(rows)} quantized layers; {total / 2**20:.2f} MiB on disk vs {original / 2**20:.2f} "
                  f"MiB in bf16: {ratio:.2f}x smaller")
    if json_out:
        json_out.write_text(json.dumps(summary, indent=2))


@app.command()
@handles_errors
def calibrate(
    model: ModelArg,
    output: OutputOpt,
    dataset: DatasetOpt = None,
    dataset_config: DatasetConfigOpt = None,
    split: SplitOpt = "train",
    text_column: TextColumnOpt = "text",
    num_samples: NumSamplesOpt = 128,
    seq_len: SeqLenOpt = 2048,
    batch_size: BatchSizeOpt = 4,
    seed: SeedOpt = 0,
    observer: Annotated[str, typer.Option(help="minmax, percentile, mse or kl.")] = "minmax",
    percentile: Annotated[float, typer.Option(help="Percentile observer: which percentile of |x|.")] = 99.99,
    target: Annotated[str, typer.Option(help="Format the ranges are chosen for: int8, e4m3 or e5m2.")] = "int8",
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Run calibration data through MODEL block by block and save per-layer activation statistics."""
    from .calibration import calibrate as run_calibration
    from .destination import check_output
    from .observers import make_observer
    from .quantizer import load_model
    from .scheme import QuantArgs
    from .validation import check_device, check_positive, check_range

    check_positive(num_samples=num_samples, seq_len=seq_len, batch_size=batch_size)
    check_range("--percentile", percentile, low=0, high=100, low_open=True)
    check_device(device)
    check_output(output, overwrite=overwrite, reads=(model,))
    if dataset is None:
        raise ValueError("--dataset is required (a hub name, a local file or folder, or 'synthetic')")
    formats = {"int8": QuantArgs(num_bits=8, strategy="tensor"),
               "e4m3": QuantArgs(num_bits=8, type="float", fp_format="e4m3", strategy="tensor"),
               "e5m2": QuantArgs(num_bits=8, type="float", fp_format="e5m2", strategy="tensor")}
    if target not in formats:
        raise ValueError(f"unknown --target {target!r}; choose from {', '.join(formats)}")
    observer_args = {"percentile": percentile} if observer == "percentile" else {}
    make_observer(observer, formats[target], **observer_args)
    float_model, tokenizer = load_model(model)
    batches = _calibration(float_model, tokenizer, dataset, dataset_config, split, text_column, num_samples,
                           seq_len, seed, batch_size)
    stats = run_calibration(float_model, batches, observer=observer, target=formats[target], device=device,
                            observer_args=observer_args)
    stats.save(output, overwrite=overwrite)
    table = Table(title=f"{observer} ranges of linear inputs ({target})")
    table.add_column("layer", overflow="fold")  # long module names wrap at 80 columns, never cut
    for col in ("min", "max", "scale"):
        table.add_column(col)
    for name, meta in stats.meta.items():
        table.add_row(name, f"{meta['range'][0]:.4g}", f"{meta['range'][1]:.4g}", f"{meta['scale']:.4g}")
    console.print(table)
    console.print(f"wrote {output}")



# --- export: other checkpoint formats ---------------------------------------------------------


@app.command()
@handles_errors
def export(
    checkpoint: CheckpointArg,
    output: OutputOpt,
    format: ExportFormatOpt = "compressed-tensors",
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert CHECKPOINT to another format: compressed-tensors for vLLM and SGLang, ONNX for onnxruntime.

    Example: qtool export out/w4a16 --format compressed-tensors --output out/w4a16-ct
    """
    from .checkpoint import save_checkpoint
    from .destination import check_output
    from .loading import export_compressed_tensors, load_checkpoint
    from .quantizer import FORMATS

    if format not in (*FORMATS, "onnx"):
        raise ValueError(f"unknown --format {format!r}; choose from {', '.join((*FORMATS, 'onnx'))}")
    check_output(output, overwrite=overwrite, reads=(checkpoint,))
    if format == "onnx":
        from .onnx_export import export_onnx

        export_onnx(checkpoint, output, overwrite=overwrite)
        size = sum(f.stat().st_size for f in output.glob("model.onnx*"))
        console.print(f"wrote {output} (onnx, {size / 2**20:.1f} MiB)")
        return
    if format == "compressed-tensors":
        export_compressed_tensors(checkpoint, output, overwrite=overwrite)
    else:
        model, qconfig = load_checkpoint(checkpoint)
        save_checkpoint(model, qconfig, output, source_dir=checkpoint, overwrite=overwrite)
    console.print(f"wrote {output} ({format}, {_dir_size(output) / 2**20:.1f} MiB)")
