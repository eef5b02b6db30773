"""What every `qtool` command shares: the typer app, the consoles, the options (defined once) and the
error handling. cli.py and cli_tools.py register their commands on `app`."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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
CheckpointArg = Annotated[Path, typer.Argument(help="A checkpoint directory (qtool or compressed-tensors).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Checkpoint format to write: qtool or compressed-tensors "
                                                         "(what llm-compressor writes; vLLM and SGLang load it).")]


def fail(message: str) -> None:
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
            fail(str(err).splitlines()[0] if str(err) else type(err).__name__)

    return wrapper
