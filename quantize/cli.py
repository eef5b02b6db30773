"""The `qtool` command. Each command is thin: parse options (defined once below), call the API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import CommandGroup, handles_errors

# Plain click help (rich_markup_mode=None) wraps at 80 columns instead of truncating option names.
app = typer.Typer(add_completion=False, no_args_is_help=True, cls=CommandGroup, rich_markup_mode=None,
                  help="qtool: post-training quantization for large language models.")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # a note is one line, however long

# --- options, defined once ------------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(help="Local Hugging Face model directory (or hub id where reachable).")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Checkpoint directory to write.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")]
DeviceOpt = Annotated[str, typer.Option(help="Device for the block being processed: cpu, cuda, cuda:1.")]
DatasetOpt = Annotated[str | None, typer.Option(
    help="Calibration data: a hub dataset name, a local .txt/.jsonl/.json/.parquet/.csv file or folder, "
         "or 'synthetic' (text the model generates itself).")]
DatasetConfigOpt = Annotated[str | None, typer.Option("--dataset-config", help="Dataset configuration name.")]
SplitOpt = Annotated[str, typer.Option(help="Dataset split.")]
TextColumnOpt = Annotated[str, typer.Option("--text-column", help="Column holding the text.")]
NumSamplesOpt = Annotated[int, typer.Option("--num-samples", help="Calibration windows.")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="Tokens per calibration window.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Windows per forward pass.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for window sampling.")]
CheckpointArg = Annotated[Path, typer.Argument(help="A checkpoint directory (qtool or compressed-tensors).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Checkpoint format to write: qtool or compressed-tensors "
                                                         "(what llm-compressor writes; vLLM and SGLang load it).")]
FORMATS = ("qtool", "compressed-tensors")


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown --format {format!r}; choose from {', '.join(FORMATS)}")


def _calibration(model, tokenizer, dataset, dataset_config, split, text_column, num_samples, seq_len, seed,
                 batch_size):
    """Calibration batches [B, T] from the dataset options, or None when no dataset was given."""
    if dataset is None:
        return None
    from . import data
    from .validation import check_seq_len

    check_seq_len(model, seq_len)
    if dataset == "synthetic":
        calib = data.synthetic_texts(model, tokenizer, num_samples=num_samples, seq_len=seq_len, seed=seed)
    else:
        texts = data.load_texts(dataset, config=dataset_config, split=split, text_column=text_column)
        calib = data.calibration_batches(tokenizer, texts, num_samples=num_samples, seq_len=seq_len, seed=seed)
    for w in calib.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")
    return list(calib.batches(batch_size))


def _default_scheme(method: str, bits: int | None, group_size: int | None, symmetric: bool | None):
    from .methods import SCHEME_METHODS
    from .scheme import preset

    if method in SCHEME_METHODS or method == "smoothquant":
        scheme = preset(SCHEME_METHODS.get(method, "w8a8-int8"))
        if bits not in (None, 8):
            raise ValueError(f"--method {method} quantizes to 8 bits, got --bits {bits}")
        return scheme
    bits = 4 if bits is None else bits  # 0 is a value to refuse, not "unset"
    base = "w4a16-asym" if method == "awq" else "w4a16"
    scheme = preset(base)
    if symmetric is not None:
        scheme = scheme.with_weights(symmetric=symmetric)
    if bits == 8 and group_size is None:
        scheme = scheme.with_weights(num_bits=8, strategy="channel")
    else:
        scheme = scheme.with_weights(num_bits=bits)
    if group_size is not None:
        scheme = (scheme.with_weights(strategy="channel") if group_size == -1
                  else scheme.with_weights(strategy="group", group_size=group_size))
    return scheme


@app.command()
@handles_errors
def quantize(
    model: ModelArg,
    output: OutputOpt,
    method: Annotated[str, typer.Option(help="rtn, gptq, awq, smoothquant, int8 or fp8.")] = "rtn",
    scheme: Annotated[str | None, typer.Option(help="Named preset, e.g. w4a16, w8a8-int8, fp8-block.")] = None,
    recipe: Annotated[Path | None, typer.Option(help="YAML recipe (configs/*.yaml); overrides --method/--scheme.")] = None,
    bits: Annotated[int | None, typer.Option(help="Weight bits (2-8).")] = None,
    group_size: Annotated[int | None, typer.Option("--group-size", help="Inputs per scale; -1 = per channel.")] = None,
    symmetric: Annotated[bool | None, typer.Option("--symmetric/--asymmetric", help="Zero points or not.")] = None,
    dataset: DatasetOpt = None,
    dataset_config: DatasetConfigOpt = None,
    split: SplitOpt = "train",
    text_column: TextColumnOpt = "text",
    num_samples: NumSamplesOpt = 128,
    seq_len: SeqLenOpt = 512,
    batch_size: BatchSizeOpt = 4,
    seed: SeedOpt = 0,
    damp: Annotated[float, typer.Option(help="GPTQ: dampening, a fraction of the mean Hessian diagonal.")] = 0.01,
    act_order: Annotated[bool, typer.Option("--act-order/--no-act-order",
                                            help="GPTQ: columns by descending Hessian diagonal.")] = True,
    static_groups: Annotated[bool | None, typer.Option(
        "--static-groups/--dynamic-groups", help="GPTQ: group scales fixed up front from the float weights (no "
        "g_idx, kernels stay fast), or chosen as the loop reaches each group (with act-order: stores g_idx). "
        "Default: static with act-order.")] = None,
    true_sequential: Annotated[bool, typer.Option("--true-sequential/--no-true-sequential",
                                                  help="GPTQ: re-collect inputs after each group of linears.")] = True,
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="AWQ: search per-group clipping.")] = True,
    duo_scaling: Annotated[bool, typer.Option("--duo-scaling", help="AWQ: scale candidates mean|x|^a / "
                                              "mean|w|^(1-a) (llm-compressor's default).")] = False,
    alpha: Annotated[str, typer.Option(help="SmoothQuant migration strength in [0, 1], or 'auto' "
                                            "(searched per layer).")] = "auto",
    weights_method: Annotated[str, typer.Option("--weights", help="SmoothQuant: quantize the smoothed weights "
                                                "with rtn or gptq.")] = "rtn",
    calibration: Annotated[Path | None, typer.Option(help="Statistics from `qtool calibrate` (static activation scales).")] = None,
    observer: Annotated[str, typer.Option(help="Observer for inline static activation calibration.")] = "minmax",
    offload_activations: Annotated[bool | None, typer.Option(
        "--offload-activations/--keep-activations", help="Cache block inputs in CPU memory, or on the device; "
        "default: on the device when they fit in a quarter of its free memory.")] = None,
    device: DeviceOpt = "cpu",
    format: FormatOpt = "qtool",
    overwrite: OverwriteOpt = False,
) -> None:
    """Quantize MODEL layer by layer and write a packed safetensors checkpoint."""
    from .checkpoint import save_checkpoint
    from .compressed import check_exportable, write_compressed_tensors
    from .destination import check_output
    from .methods import get_method
    from .methods.smoothquant import check_alpha
    from .quantizer import load_model, quantize_model
    from .recipe import Recipe
    from .report import summarize_notes
    from .scheme import preset
    from .validation import check_device, check_positive, check_range

    _check_format(format)
    check_positive(num_samples=num_samples, seq_len=seq_len, batch_size=batch_size)
    check_range("--damp", damp, low=0)
    check_device(device)
    check_output(output, overwrite=overwrite, reads=(model, calibration))
    if recipe is not None:
        plan = Recipe.load(recipe)
    else:
        get_method(method)
        if scheme is not None:
            chosen = preset(scheme)
            if bits is not None or group_size is not None:
                chosen = chosen.with_weights(**{k: v for k, v in (("num_bits", bits), ("group_size", group_size))
                                                if v is not None})
        else:
            chosen = _default_scheme(method, bits, group_size, symmetric)
        settings = {
            "gptq": dict(damp=damp, act_order=act_order, static_groups=static_groups, true_sequential=true_sequential),
            "awq": dict(clip=clip, duo_scaling=duo_scaling),
            "smoothquant": dict(alpha=check_alpha(alpha), weights=weights_method),
        }.get(method, {})
        if method == "smoothquant" and weights_method == "gptq":
            settings.update(damp=damp, act_order=act_order, static_groups=static_groups,
                            true_sequential=true_sequential)
        uses_gptq = method == "gptq" or (method == "smoothquant" and weights_method == "gptq")
        static = act_order if static_groups is None else static_groups
        if uses_gptq and act_order and not static and chosen.weights.strategy.value == "group":
            chosen = chosen.with_weights(actorder=True)  # groups become non-contiguous: store g_idx
        plan = Recipe.single(chosen, method, settings)
    float_model, tokenizer = load_model(model)
    if format == "compressed-tensors":  # fail before quantizing, not after
        for name, entry in plan.assign(float_model).items():
            check_exportable(name, entry.scheme, float_model.get_submodule(name).in_features)
    batches = _calibration(float_model, tokenizer, dataset, dataset_config, split, text_column, num_samples,
                           seq_len, seed, batch_size)
    input_scales = None
    if calibration is not None:
        from .calibration import load_stats
        input_scales = load_stats(calibration).input_scales(plan, float_model)
    result = quantize_model(float_model, plan, calibration=batches, device=device, input_scales=input_scales,
                            offload_activations=offload_activations, observer=observer)
    source, extra = model if Path(model).is_dir() else None, {"layer_errors.json": result.report.to_dict()}
    if format == "compressed-tensors":
        write_compressed_tensors(float_model, output, source_dir=source, overwrite=overwrite, extra_json=extra)
    else:
        save_checkpoint(float_model, result.config, output, source_dir=source, overwrite=overwrite, extra_json=extra)
    for message in summarize_notes(result.report.messages, output / "layer_errors.json"):
        err_console.print(f"[yellow]note:[/] {message}", highlight=False)
    console.print(f"wrote {output} ({_dir_size(output) / 2**20:.1f} MiB) in {result.report.seconds:.1f} s",
                  soft_wrap=True)


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@app.command()
@handles_errors
def inspect(
    checkpoint: CheckpointArg,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON.")] = None,
) -> None:
    """Show a checkpoint's schemes, per-layer formats and sizes, and its compression ratio."""
    from .checkpoint import read_validated
    from .destination import check_output_file

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
    format: FormatOpt = "compressed-tensors",
    overwrite: OverwriteOpt = False,
) -> None:
    """Convert CHECKPOINT to another format, e.g. compressed-tensors for vLLM and SGLang.

    Example: qtool export out/w4a16 --format compressed-tensors --output out/w4a16-ct
    """
    from .checkpoint import load_checkpoint, save_checkpoint
    from .compressed import export_compressed_tensors
    from .destination import check_output

    _check_format(format)
    check_output(output, overwrite=overwrite, reads=(checkpoint,))
    if format == "compressed-tensors":
        export_compressed_tensors(checkpoint, output, overwrite=overwrite)
    else:
        model, qconfig = load_checkpoint(checkpoint)
        save_checkpoint(model, qconfig, output, source_dir=checkpoint, overwrite=overwrite)
    console.print(f"wrote {output} ({format}, {_dir_size(output) / 2**20:.1f} MiB)")


from . import cli_tools  # noqa: E402,F401  (registers eval, report, bench on `app`)


def main() -> None:  # pragma: no cover
    sys.exit(app())
