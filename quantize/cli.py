"""The `qtool` command. Each command is thin: parse options (defined once below), call the API."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="qtool: post-training quantization for large language models.")
console = Console()
err_console = Console(stderr=True)

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


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def handles_errors(fn):
    """Bad input becomes one line on stderr and exit code 2 (QTOOL_DEBUG=1 shows the traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, NotADirectoryError, KeyError) as err:
            if os.environ.get("QTOOL_DEBUG"):
                raise
            _fail(str(err).splitlines()[0] if str(err) else type(err).__name__)

    return wrapper


def _calibration(model, tokenizer, dataset, dataset_config, split, text_column, num_samples, seq_len, seed,
                 batch_size):
    """Calibration batches [B, T] from the dataset options, or None when no dataset was given."""
    if dataset is None:
        return None
    from . import data

    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len is not None and seq_len > max_len:
        raise ValueError(f"--seq-len {seq_len} is above the model's maximum of {max_len} positions")
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
    bits = bits or 4
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
    device: DeviceOpt = "cpu",
    overwrite: OverwriteOpt = False,
) -> None:
    """Quantize MODEL layer by layer and write a packed safetensors checkpoint."""
    from .checkpoint import CheckpointError, save_checkpoint
    from .methods import get_method
    from .quantizer import load_model, quantize_model
    from .recipe import Recipe
    from .scheme import preset

    if output.exists() and not overwrite:
        raise CheckpointError(f"output directory exists: {output} (pass --overwrite to replace it)")
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
        plan = Recipe.single(chosen, method)
    float_model, tokenizer = load_model(model)
    batches = _calibration(float_model, tokenizer, dataset, dataset_config, split, text_column, num_samples,
                           seq_len, seed, batch_size)
    result = quantize_model(float_model, plan, calibration=batches, device=device)
    save_checkpoint(float_model, result.config, output, source_dir=model if Path(model).is_dir() else None,
                    overwrite=overwrite, extra_json={"layer_errors.json": result.report.to_dict()})
    for message in result.report.messages:
        err_console.print(f"[yellow]note:[/] {message}")
    console.print(f"wrote {output} ({_dir_size(output) / 2**20:.1f} MiB) in {result.report.seconds:.1f} s")


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@app.command()
@handles_errors
def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="A qtool checkpoint directory.")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the summary as JSON.")] = None,
) -> None:
    """Show a checkpoint's schemes, per-layer formats and sizes, and its compression ratio."""
    from .checkpoint import read_quantization_config, read_tensors

    qconfig = read_quantization_config(checkpoint)
    tensors = read_tensors(checkpoint)
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
    for col in ("layer", "scheme", "shape", "bytes"):
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


def _load_any(path: str, device: str):
    """A qtool checkpoint or a plain HF model, with its tokenizer."""
    from transformers import AutoTokenizer

    from .checkpoint import load_checkpoint
    from .quantizer import load_model

    if Path(path, "config.json").is_file() and "quantization_config" in json.loads(Path(path, "config.json").read_text()):
        model, _ = load_checkpoint(path, device=device)
        return model, AutoTokenizer.from_pretrained(path)
    return load_model(path, device=device)


@app.command("eval")
@handles_errors
def eval_(
    model: Annotated[str, typer.Argument(help="A qtool checkpoint or a Hugging Face model directory.")],
    perplexity: Annotated[bool, typer.Option("--perplexity/--no-perplexity", help="Perplexity by the standard protocol.")] = True,
    dataset: Annotated[str, typer.Option(help="Evaluation text: hub name or local file (rows joined with blank lines).")] = "wikitext",
    dataset_config: DatasetConfigOpt = None,
    split: Annotated[str, typer.Option(help="Dataset split.")] = "test",
    text_column: TextColumnOpt = "text",
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window.")] = 2048,
    max_windows: Annotated[int | None, typer.Option("--max-windows", help="Evaluate the first N windows only.")] = None,
    batch_size: BatchSizeOpt = 1,
    base: Annotated[str | None, typer.Option(help="Unquantized model: adds KL divergence and top-1 agreement.")] = None,
    tasks: Annotated[str | None, typer.Option(help="lm-evaluation-harness tasks, comma-separated (needs lm-eval).")] = None,
    device: DeviceOpt = "cpu",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every figure and its settings as JSON.")] = None,
) -> None:
    """Perplexity, and with --base the KL divergence and top-1 agreement, in one pass over the data."""
    from . import data
    from .evaluate import evaluate, print_table

    if tasks is not None:
        import importlib.util
        if importlib.util.find_spec("lm_eval") is None:
            raise ValueError("--tasks needs lm-evaluation-harness: pip install 'qtool[eval]'")
    qmodel, tokenizer = _load_any(model, device)
    base_model = _load_any(base, device)[0] if base else None
    texts = data.load_texts(dataset, config=dataset_config, split=split, text_column=text_column)
    windows = data.evaluation_windows(tokenizer, texts, seq_len=seq_len, max_windows=max_windows)
    result = evaluate(qmodel, windows, batch_size=batch_size, base=base_model, device=device) if perplexity else None
    figures = {"model": model, "base": base, "dataset": dataset, "dataset_config": dataset_config, "split": split,
               "seq_len": seq_len, "max_windows": max_windows, "batch_size": batch_size, "device": device}
    if result is not None:
        print_table(result, title=model, console=console)
        figures.update(result.to_dict())
    if tasks is not None:
        figures["tasks"] = _run_lm_eval(qmodel, tokenizer, tasks.split(","), batch_size)
    if json_out:
        json_out.write_text(json.dumps(figures, indent=2))


def _run_lm_eval(model, tokenizer, tasks: list[str], batch_size: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    results = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=tasks)
    table = Table(title="lm-evaluation-harness")
    for col in ("task", "metric", "value"):
        table.add_column(col)
    for task, metrics in results["results"].items():
        for metric, value in metrics.items():
            if isinstance(value, float):
                table.add_row(task, metric, f"{value:.4f}")
    console.print(table)
    return results["results"]


@app.command()
@handles_errors
def report(
    checkpoint: Annotated[Path, typer.Argument(help="A qtool checkpoint directory (reads layer_errors.json).")],
    worst: Annotated[int, typer.Option(help="How many of the worst layers to list.")] = 10,
    plot: Annotated[Path | None, typer.Option(help="Draw a block x projection heatmap to this PNG.")] = None,
) -> None:
    """Per-layer relative output error recorded while quantizing, worst first."""
    from .report import load_errors, plot_errors, print_worst

    records = load_errors(checkpoint)
    print_worst(records, worst, console=console)
    if plot is not None:
        plot_errors(records, plot, title=f"{checkpoint.name}: relative output error per layer")
        console.print(f"wrote {plot}")


@app.command()
@handles_errors
def bench(
    model: Annotated[str, typer.Argument(help="A qtool checkpoint, or with --random-weights a config name "
                                              "(llama-8b, tiny), directory or config.json.")],
    base: Annotated[str | None, typer.Option(help="Model to compare against in the same run.")] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Build MODEL from a config with random weights.")] = False,
    scheme: Annotated[str | None, typer.Option(help="With --random-weights: quantize with this preset (RTN).")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Decode batch sizes, comma-separated.")] = "1,16",
    decode_tokens: Annotated[int, typer.Option("--decode-tokens")] = 64,
    prefill_len: Annotated[int, typer.Option("--prefill-len")] = 2048,
    device: DeviceOpt = "cuda",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")] = None,
) -> None:
    """Decode and prefill tokens/s (and peak GPU memory) of a model and optionally a base, in one run."""
    import torch

    from .bench import bench_model, compare, print_bench, random_model

    sizes = tuple(int(b) for b in batch_sizes.split(","))
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if random_weights:
        base_model = random_model(model, dtype=dtype, device=device)
        base_result = bench_model(base_model, batch_sizes=sizes, decode_tokens=decode_tokens, prefill_len=prefill_len)
        print_bench(base_result, f"{model} bf16", console=console)
        if scheme is None:
            results = {"base": base_result.to_dict()}
        else:
            from .quantizer import quantize_model
            from .recipe import Recipe
            from .scheme import preset
            quantize_model(base_model, Recipe.single(preset(scheme), "rtn"), device=device, progress=False)
            q_result = bench_model(base_model, batch_sizes=sizes, decode_tokens=decode_tokens, prefill_len=prefill_len)
            print_bench(q_result, f"{model} {scheme}", baseline=base_result, console=console)
            results = {"base": base_result.to_dict(), "quantized": q_result.to_dict(),
                       "ratios": compare(base_result, q_result)}
    else:
        q_result = bench_model(_load_any(model, device)[0], batch_sizes=sizes, decode_tokens=decode_tokens,
                               prefill_len=prefill_len)
        results = {"quantized": q_result.to_dict()}
        baseline = None
        if base is not None:
            baseline = bench_model(_load_any(base, device)[0], batch_sizes=sizes, decode_tokens=decode_tokens,
                                   prefill_len=prefill_len)
            results.update(base=baseline.to_dict(), ratios=compare(baseline, q_result))
        print_bench(q_result, model, baseline=baseline, console=console)
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))


def main() -> None:  # pragma: no cover
    sys.exit(app())
