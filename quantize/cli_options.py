"""What every `qtool` command shares: the typer app, the consoles, the options (defined once), the error
handling, and turning the data and scheme options into calibration batches and a recipe. cli.py,
cli_tools.py and cli_finetune.py register their commands on `app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

# The error boundary (one `error:` line, exit 2; click usage errors and SIGTERM too) is errors.py's;
# commands take `handles_errors` and `fail` from here with the rest of what they share.
from .errors import CommandGroup, fail, handles_errors  # noqa: F401

# Plain click help (rich_markup_mode=None) wraps at 80 columns instead of truncating option names.
app = typer.Typer(add_completion=False, no_args_is_help=True, cls=CommandGroup, rich_markup_mode=None,
                  help="qtool: post-training quantization for large language models.")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # a note is one line, however long

# --- options, defined once ------------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(help="Local Hugging Face model directory (or hub id where reachable).")]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Checkpoint directory to write.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output directory.")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last finished "
                                         "block (same options as the interrupted run).")]
DtypeOpt = Annotated[str, typer.Option(help="dtype of the unquantized tensors written (embeddings, norms): "
                                       "auto (the source's), bfloat16, float16 or float32.")]
ComputeDtypeOpt = Annotated[str, typer.Option("--compute-dtype", help="dtype each block runs in on the device: "
                                              "float32 (reproducible), or bfloat16/float16 (several times faster "
                                              "on a GPU; methods keep float32 arithmetic).")]
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
ExportFormatOpt = Annotated[str, typer.Option("--format", help="Format to write: qtool, compressed-tensors (vLLM, "
                                                               "SGLang) or onnx (onnxruntime; needs qtool[onnx]).")]


# --- qtool quantize: what to quantize to, and each method's settings (methods/*.py *Settings) ----------
MethodOpt = Annotated[str | None, typer.Option(help="rtn (default), gptq, awq, smoothquant, int8 or fp8.")]
SchemeOpt = Annotated[str | None, typer.Option(help="Named preset, e.g. w4a16, w8a8-int8, fp8-block; default: the "
                                                    "method's (w4a16; awq: w4a16-asym; smoothquant, int8: w8a8-int8; "
                                                    "fp8: fp8).")]
RecipeOpt = Annotated[Path | None, typer.Option(help="YAML recipe (configs/*.yaml), instead of --method, --scheme "
                                                     "and the weight and method options.")]
BitsOpt = Annotated[int | None, typer.Option(help="Weight bits (1-8; 1: binary) of integer weight-only schemes.")]
LmHeadOpt = Annotated[bool, typer.Option("--quantize-lm-head", help="Quantize lm_head too, round to nearest with the "
                                          "run's scheme (a tied head is untied first). Off by default: every logit "
                                          "goes through it. README: what it costs and buys.")]
GroupSizeOpt = Annotated[int | None, typer.Option("--group-size", help="Inputs per scale of integer weight-only "
                                                  "schemes; -1 = one scale per output channel.")]
SymmetricOpt = Annotated[bool | None, typer.Option("--symmetric/--asymmetric", help="Zero points or not "
                                                   "(integer weight-only schemes).")]
DampOpt = Annotated[float | None, typer.Option(help="GPTQ: dampening, a fraction of the mean Hessian diagonal "
                                                    "[default: 0.01].")]
ActOrderOpt = Annotated[bool | None, typer.Option("--act-order/--no-act-order", help="GPTQ: columns by descending "
                                                  "Hessian diagonal [default: on].")]
StaticGroupsOpt = Annotated[bool | None, typer.Option(
    "--static-groups/--dynamic-groups", help="GPTQ: group scales fixed up front from the float weights (no "
    "g_idx, kernels stay fast), or chosen as the loop reaches each group (with act-order: stores g_idx). "
    "Default: static with act-order.")]
TrueSequentialOpt = Annotated[bool | None, typer.Option(
    "--true-sequential/--no-true-sequential", help="GPTQ: re-collect inputs after each group of linears "
    "[default: on].")]
ClipOpt = Annotated[bool | None, typer.Option("--clip/--no-clip", help="AWQ: search per-group clipping "
                                              "[default: on].")]
DuoScalingOpt = Annotated[bool | None, typer.Option(
    "--duo-scaling/--no-duo-scaling", help="AWQ: scale candidates mean|x|^a / mean|w|^(1-a) (llm-compressor's "
    "default) [default: off].")]
AlphaOpt = Annotated[str | None, typer.Option(help="SmoothQuant migration strength in [0, 1], or 'auto' "
                                                   "(searched per layer) [default: auto].")]
WeightsOpt = Annotated[str | None, typer.Option("--weights", help="SmoothQuant: quantize the smoothed weights "
                                                "with rtn or gptq [default: rtn].")]
CalibrationOpt = Annotated[Path | None, typer.Option(help="Statistics from `qtool calibrate` (static activation "
                                                          "scales).")]
GpusOpt = Annotated[int | None, typer.Option(
    "--gpus", help="Processes on this machine, one per GPU (qtool starts torchrun; --device defaults to cuda, "
    "--device cpu gives CPU processes on gloo). Several machines: start `torchrun ... -m quantize quantize` "
    "on each instead.")]
MoEAllExpertsOpt = Annotated[bool, typer.Option(
    "--moe-calibrate-all-experts", help="Mixture of experts: every calibration token goes through every expert "
    "for the statistics (the output still follows the router); otherwise an expert no token reached is "
    "quantized by round-to-nearest, with a note naming it.")]
OffloadOpt = Annotated[bool | None, typer.Option(
    "--offload-activations/--keep-activations", help="Cache block inputs in CPU memory, or on the device; "
    "default: on the device when they fit in a quarter of its free memory.")]


# --- what the options become ----------------------------------------------------------------

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


# Method settings on the command line: option name -> setting name (methods/*.py, the *Settings records).
SETTING_OPTIONS = {"--damp": "damp", "--act-order": "act_order", "--static-groups": "static_groups",
                   "--true-sequential": "true_sequential", "--clip": "clip", "--duo-scaling": "duo_scaling",
                   "--alpha": "alpha", "--weights": "weights"}


def single_recipe(method: str, scheme: str | None, bits: int | None, group_size: int | None,
                  symmetric: bool | None, settings: dict[str, Any]):
    """The recipe of `qtool quantize` without --recipe: `method`'s record picks the default scheme and
    checks the settings; every weight option given either applies or raises an error naming it."""
    from dataclasses import fields, replace

    from .methods import get_method
    from .recipe import Recipe
    from .scheme import preset

    record = get_method(method)
    accepted = {f.name for f in fields(record.settings)}
    for option, name in SETTING_OPTIONS.items():
        if name in settings and name not in accepted:
            raise ValueError(f"{option} does not apply to --method {method}")
    chosen = preset(scheme or record.default_scheme)
    w = chosen.weights
    given = [f"--bits {bits}" if bits is not None else None,
             f"--group-size {group_size}" if group_size is not None else None,
             {True: "--symmetric", False: "--asymmetric", None: None}[symmetric]]
    for option in filter(None, given):
        if w.is_float or chosen.input_activations is not None:
            raise ValueError(f"{option} applies to integer weight-only schemes, not {chosen.describe()} "
                             f"(--method {method}{f' --scheme {scheme}' if scheme else ''})")
    if bits is not None:
        # 8-bit weights without a scheme or group size default to per channel, as w8a16 does.
        w = w.with_group_size(None) if bits == 8 and scheme is None and group_size is None else w
        w = replace(w, num_bits=bits)
    if group_size is not None:
        w = w.with_group_size(group_size)
    if symmetric is not None:
        w = replace(w, symmetric=symmetric)
    return Recipe.single(replace(chosen, weights=w), method, settings)
