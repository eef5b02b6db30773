"""`qtool eval`, `qtool report`, `qtool bench` and `qtool kernels`: registered on the app of cli_options.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .cli_options import (
    BatchSizeOpt,
    CommandGroup,
    DatasetConfigOpt,
    DeviceOpt,
    TextColumnOpt,
    app,
    console,
    handles_errors,
)

DTYPES = ("float32", "bfloat16", "float16")


def _load_any(path: str, device: str, dtype: str = "float32"):
    """A qtool checkpoint or a plain HF model, with its tokenizer; float tensors in `dtype`."""
    import torch
    from transformers import AutoTokenizer

    from .loading import load_checkpoint
    from .quantizer import load_model

    if Path(path, "config.json").is_file() and "quantization_config" in json.loads(Path(path, "config.json").read_text()):
        model, _ = load_checkpoint(path, device=device, dtype=getattr(torch, dtype))
        try:
            return model, AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, ImportError) as err:  # ImportError: transformers wants a converter
            raise ValueError(f"{path} has no usable tokenizer (quantize with the float model's folder "
                             f"as input copies it): {str(err).strip().splitlines()[0]}") from None
    return load_model(path, device=device, dtype=getattr(torch, dtype))


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
    dtype: Annotated[str, typer.Option(help="Float dtype of activations and unquantized weights: "
                                            "float32, bfloat16 or float16 (the CUDA kernels take the last two).")] = "float32",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every figure and its settings as JSON.")] = None,
) -> None:
    """Perplexity, and with --base the KL divergence and top-1 agreement, in one pass over the data."""
    from . import data
    from .destination import check_output_file
    from .evaluate import evaluate, print_table
    from .validation import check_device, check_positive, check_scores, check_seq_len

    if tasks is not None:
        import importlib.util
        if importlib.util.find_spec("lm_eval") is None:
            raise ValueError("--tasks needs lm-evaluation-harness: pip install 'qtool[eval]'")
    if dtype not in DTYPES:
        raise ValueError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    check_positive(seq_len=seq_len, max_windows=max_windows, batch_size=batch_size)
    check_device(device)
    check_output_file(json_out, "--json")
    qmodel, tokenizer = _load_any(model, device, dtype)
    check_seq_len(qmodel, seq_len)
    base_model = _load_any(base, device, dtype)[0] if base else None
    texts = data.load_texts(dataset, config=dataset_config, split=split, text_column=text_column)
    windows = data.evaluation_windows(tokenizer, texts, seq_len=seq_len, max_windows=max_windows)
    result = evaluate(qmodel, windows, batch_size=batch_size, base=base_model, device=device) if perplexity else None
    figures = {"model": model, "base": base, "dataset": dataset, "dataset_config": dataset_config, "split": split,
               "seq_len": seq_len, "max_windows": max_windows, "batch_size": batch_size, "device": device, "dtype": dtype}
    if result is not None:
        check_scores(result.to_dict())
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
    from .destination import check_output_file
    from .report import load_errors, plot_errors, print_worst
    from .validation import check_positive

    check_positive(worst=worst)
    check_output_file(plot, "--plot")
    records = load_errors(checkpoint)
    print_worst(records, worst, console=console)
    if plot is not None:
        measure = records[0].measure if records else "output"
        plot_errors(records, plot, title=f"{checkpoint.name}: relative {measure} error per layer")
        console.print(f"wrote {plot}")


@app.command()
@handles_errors
def bench(
    model: Annotated[str, typer.Argument(help="A qtool checkpoint, or with --random-weights a config name "
                                              "(llama-8b, tiny), directory or config.json.")],
    base: Annotated[str | None, typer.Option(help="Model to compare against in the same run.")] = None,
    random_weights: Annotated[bool, typer.Option("--random-weights", help="Build MODEL from a config with random weights.")] = False,
    scheme: Annotated[str | None, typer.Option(help="With --random-weights: quantize with this preset (RTN).")] = None,
    quantize_lm_head: Annotated[bool, typer.Option("--quantize-lm-head", help="With --scheme: quantize lm_head too "
                                                   "(presets leave it in the original precision).")] = False,
    lm_head_scheme: Annotated[str | None, typer.Option("--lm-head-scheme", help="With --quantize-lm-head: lm_head's "
                                                     "preset (default: --scheme's), e.g. w8a16.")] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Decode batch sizes, comma-separated.")] = "1,16",
    decode_tokens: Annotated[int, typer.Option("--decode-tokens")] = 64,
    prefill_len: Annotated[int, typer.Option("--prefill-len")] = 2048,
    decode_mode: Annotated[str, typer.Option("--decode-mode", help="loop (gpt-fast's token loop, CUDA graphs) "
                                             "or generate (model.generate with a static cache).")] = "loop",
    profile: Annotated[bool, typer.Option("--profile", help="Also report GPU time per decoded token by kernel.")] = False,
    fuse: Annotated[bool, typer.Option("--fuse/--no-fuse", help="Run each block's q/k/v and gate/up projections "
                                       "as one quantized layer each (quantize/fusion.py, quantize/mlp.py: SiLU-and-"
                                       "multiply as one kernel) and its RMSNorms as one kernel each "
                                       "(quantize/norms.py), and decode attention on the KV heads without copies "
                                       "of the cache (quantize/attention.py), in the quantized model.")] = True,
    fuse_baseline: Annotated[bool, typer.Option("--fuse-baseline", help="Fuse the float baseline the same way "
                                                "(q/k/v and gate/up as one nn.Linear each, SiLU-and-multiply, "
                                                "RMSNorm kernels, decode attention), so the ratios compare like "
                                                "with like.")] = False,
    attn_implementation: Annotated[str | None, typer.Option(
        "--attn-implementation", help="Attention of every model in the run (sdpa, eager, ...); transformers' "
        "default when not given.")] = None,
    device: DeviceOpt = "cuda",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")] = None,
) -> None:
    """Decode and prefill tokens/s (and peak GPU memory) of a model and optionally a base, in one run."""
    import torch

    from qtool_kernels import build, norm_planes

    from .destination import check_output_file
    from .validation import check_device, check_positive

    check_positive(decode_tokens=decode_tokens, prefill_len=prefill_len)
    check_device(device)
    check_output_file(json_out, "--json")
    if fuse_baseline and not fuse:
        raise ValueError("--fuse-baseline fuses the baseline as --fuse fuses the quantized model; drop --no-fuse")
    if quantize_lm_head and (scheme is None or not random_weights):
        raise ValueError("--quantize-lm-head applies to --random-weights --scheme runs; a checkpoint's lm_head "
                         "is whatever its recipe made it")
    if lm_head_scheme is not None and not quantize_lm_head:
        raise ValueError(f"--lm-head-scheme {lm_head_scheme} applies with --quantize-lm-head")
    sizes = _batch_sizes(batch_sizes)
    opts = dict(batch_sizes=sizes, decode_tokens=decode_tokens, prefill_len=prefill_len, decode_mode=decode_mode,
                profile=profile)
    dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
    used_attention = set()
    attention = _attention_setter(attn_implementation, prefill_len + decode_tokens, used_attention)
    if random_weights:
        head = (lm_head_scheme or scheme) if quantize_lm_head else None
        results = _bench_random_weights(model, scheme, head, (fuse, fuse_baseline), device,
                                        getattr(torch, dtype_name), attention, opts)
    else:
        results = _bench_checkpoints(model, base, (fuse, fuse_baseline), device, dtype_name, attention, opts)
    results["attn_implementation"] = sorted(used_attention)
    results["switches"] = build.switches()  # the QTOOL_* environment the run had
    results["norm_planes_rewrites"] = norm_planes.REWRITES[0]  # QTOOL_NORM_PLANES' graph pass: norms folded
    # which card: ratios differ between an H100 and an H200 (sessions 49-50 asked for one and got the other)
    results["gpu"] = torch.cuda.get_device_name(device) if device.startswith("cuda") else None
    if json_out:
        json_out.write_text(json.dumps(results, indent=2))


def _attention_setter(attn_implementation: str | None, tokens: int, used: set[str]) -> Callable:
    """A function that checks a model takes `tokens` positions, sets its attention when one was asked for,
    records in `used` which attention it runs, and returns it."""
    from .validation import check_seq_len

    def attention(m):
        check_seq_len(m, tokens, "--prefill-len + --decode-tokens")
        if attn_implementation is not None:
            try:
                m.set_attn_implementation(attn_implementation)
            except (ValueError, ImportError) as err:
                raise ValueError(f"--attn-implementation {attn_implementation!r}: {err}") from None
        used.add(m.config._attn_implementation)
        return m

    return attention


def _bench_checkpoints(model: str, base: str | None, fuse: tuple[bool, bool], device: str, dtype_name: str,
                       attention, opts: dict) -> dict:
    """`qtool bench MODEL [--base BASE]`: the saved model, then the base in the same run for the ratios.
    fuse: (--fuse, --fuse-baseline)."""
    from .bench import bench_model, compare, print_bench

    q_model = attention(_load_any(model, device, dtype_name)[0])
    results = _fuse(q_model, fuse, model)
    q_result = bench_model(q_model, **opts)
    results["quantized"] = q_result.to_dict()
    baseline = None
    if base is not None:
        base_model = attention(_load_any(base, device, dtype_name)[0])
        results["base_fused"] = _fuse(base_model, fuse, base)  # a float base: with --fuse-baseline only
        baseline = bench_model(base_model, **opts)
        results.update(base=baseline.to_dict(), ratios=compare(baseline, q_result))
    print_bench(q_result, model, baseline=baseline, console=console)
    return results


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise ValueError(f"--batch-sizes must be positive integers separated by commas, got {text!r}") from None
    if any(b < 1 for b in sizes):
        raise ValueError(f"--batch-sizes must be positive integers separated by commas, got {text!r}")
    return sizes


def _bench_random_weights(config: str, scheme: str | None, lm_head: str | None, fuse: tuple[bool, bool],
                          device: str, dtype, attention, opts: dict) -> dict:
    """`qtool bench --random-weights`: the float model of `config`, then (with a scheme) its RTN quantization.
    lm_head: the preset lm_head is quantized with (None: left in the original precision); fuse: (--fuse,
    --fuse-baseline)."""
    from .bench import bench_model, compare, print_bench
    from .quantizer import quantize_model
    from .shapes import random_model

    label = f"{config} {str(dtype).removeprefix('torch.')}"
    base_model = attention(random_model(config, dtype=dtype, device=device))
    base_fused = _fuse(base_model, fuse, label)
    base_result = bench_model(base_model, **opts)
    print_bench(base_result, label, console=console)
    if scheme is None:
        return {"base": base_result.to_dict(), "base_fused": base_fused}
    if fuse[1]:  # a fused model does not quantize: the same random weights again (random_model's fixed seed)
        del base_model
        base_model = attention(random_model(config, dtype=dtype, device=device))
    quantize_model(base_model, bench_plan(scheme, lm_head), device=device, progress=False)
    fused = _fuse(base_model, fuse, f"{config} {scheme}")
    q_result = bench_model(base_model, **opts)
    print_bench(q_result, f"{config} {scheme}", baseline=base_result, console=console)
    return {"base": base_result.to_dict(), "quantized": q_result.to_dict(),
            "ratios": compare(base_result, q_result), "base_fused": base_fused, **fused}


def bench_plan(scheme: str, lm_head: str | None):
    """The recipe of `qtool bench --random-weights --scheme`: RTN with the preset `scheme`, and lm_head with the
    preset `lm_head` (None: lm_head left in the original precision, as every preset leaves it)."""
    from dataclasses import replace

    from .recipe import Recipe, RecipeEntry
    from .scheme import LM_HEAD, preset

    plan = Recipe.single(preset(scheme), "rtn")
    if lm_head is None:
        return plan
    head = RecipeEntry(replace(preset(lm_head), targets=(LM_HEAD,), ignore=()), "rtn")
    return Recipe((head, *plan.entries))  # the head's entry first: the first matching entry wins


def _fuse(model, fuse: tuple[bool, bool], label: str) -> dict:
    """Fuse `model`'s projections, gated MLPs and RMSNorms, and switch its decode attention to qtool's, when asked
    (fuse: --fuse, --fuse-baseline) and say how many; the counts (None when not asked). A float model is fused only
    with --fuse-baseline: otherwise the baseline stays transformers' own."""
    if not fuse[0]:
        return {"fused_groups": None, "fused_mlps": None, "fused_norms": None, "decode_attention": None}
    from . import attention as decode_attention
    from . import rotary
    from .attention import use_decode_attention
    from .fusion import fuse_projections
    from .linear import QuantLinear
    from .mlp import fuse_mlps
    from .norms import fuse_norms

    if not fuse[1] and not any(isinstance(m, QuantLinear) for m in model.modules()):
        return {"fused_groups": 0, "fused_mlps": 0, "fused_norms": 0, "decode_attention": False}
    mlps = fuse_mlps(model)  # gate/up as one layer + SiLU-and-multiply; before fuse_projections takes gate/up
    groups = mlps + fuse_projections(model)
    norms = fuse_norms(model)
    attention = use_decode_attention(model)
    rope = attention and rotary.ENABLED and rotary.install(model) is not None
    console.print(f"{label}: fused {groups} projection groups (q/k/v, gate/up; {mlps} MLPs with one SiLU-and-"
                  f"multiply kernel) and {norms} RMSNorms into one kernel each"
                  + (f", decode attention on the KV heads (no copies of the cache; {decode_attention.BACKEND})"
                     if attention else "")
                  + (", the rotary and cache write inside it" if rope else "")
                  + " (--no-fuse: transformers' modules)")
    return {"fused_groups": groups, "fused_mlps": mlps, "fused_norms": norms, "decode_attention": attention,
            "rope_attention": rope,  # QTOOL_ROPE_ATTENTION
            "rope_kernel_min_batch": _rope_min_batch() if rope else None,  # the kernel's mode from this batch
            "attention_backend": decode_attention.BACKEND if attention else None}  # QTOOL_DECODE_ATTENTION


def _rope_min_batch() -> int | None:
    """The batch from which the rotary-and-write kernel mode runs (kernels/attention.py), None where the kernel
    mode is off (QTOOL_ROPE_KERNEL=0)."""
    from qtool_kernels import attention

    return attention.ROPE_MIN_BATCH if attention.ROPE_KERNEL else None


kernels_app = typer.Typer(no_args_is_help=True, cls=CommandGroup, rich_markup_mode=None, help="The bundled CUDA kernels extension.")
app.add_typer(kernels_app, name="kernels")


@kernels_app.command("info")
@handles_errors
def kernels_info(json_out: Annotated[Path | None, typer.Option("--json", help="Also write it as JSON.")] = None) -> None:
    """What was built, for which GPU, and which implementation each qtool op uses."""
    import warnings

    from qtool_kernels import build

    from .destination import check_output_file

    check_output_file(json_out, "--json")
    with warnings.catch_warnings():
        # Without CUDA the loader warns why; the table's "reason" row says it already.
        warnings.simplefilter("ignore", RuntimeWarning)
        info = build.info()
    table = Table(title="qtool kernels")
    table.add_column("key")
    table.add_column("value")
    for key, value in info.items():
        table.add_row(key, json.dumps(value) if isinstance(value, list | dict) else str(value))
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps(info, indent=2))


@kernels_app.command("build")
@handles_errors
def kernels_build(jobs: Annotated[int | None, typer.Option(
        "--jobs", help="Hopper libraries compiled at once (default: by cores and by 12 GB of free memory each).")] = None,
) -> None:
    """Compile the CUDA extension and, on a Hopper GPU with the CUTLASS headers, the four Hopper GEMM libraries
    ahead of time (otherwise each is built on first use, minutes in the middle of a first call)."""
    from qtool_kernels import build, sm90

    from .validation import check_positive

    if jobs is not None:
        check_positive(jobs=jobs)
    try:
        build.build()
    except RuntimeError as err:
        raise ValueError(str(err)) from None
    console.print(f"built: {', '.join(build.available_ops())}")
    with console.status("compiling the Hopper GEMM libraries (a few minutes each, several at once)"):
        status = sm90.build_all(jobs)
    for stem, what in status.items():
        console.print(f"{stem}: {what}")
