"""The decode step under several settings in one process: the model is built and quantized once, then each variant
(module attributes set, e.g. a route of kernels/tuning.py or a switch) is recompiled and timed at each batch, the
variants alternated over --rounds; bf16 once beside them. Session 49 found that routes a layer sweep picks can lose
in the model (BENCHMARKS.md "session 49"), so route changes are decided here; a variant costs a compile and the
decodes, not a process with its own model build, quantization and bf16 baseline (`qtool bench`: ~70 s on the 8B).

    python3 dev/step_ab.py --scheme w4a16 --batches 1,16 --rounds 2 --json $OUT/step_ab.json \\
        --variant main \\
        --variant rope-off 'quantize.rotary.ENABLED=False' \\
        --variant down-gemm 'qtool_kernels.tuning.MIXED[(4, 14336, 4096)][16]="k128 t16 v0 s0"'

A setting is `module.path.ATTR[key]...=value`, keys and value Python literals; each is undone after its variant.
Only what is read while tracing or at call time can vary: `quantize.rotary.ENABLED` (read by bench.loop_cache)
can turn the rotary-and-write mode off, not on where QTOOL_ROPE_ATTENTION=0 kept it from being installed.
`os.environ["QTOOL_WO_SPLIT"]="kept"` and `os.environ["QTOOL_WO_GEMM_PDL"]="1"` work too: the extension reads
those two again before each variant's compile (build.reload_switches); its other switches are read once.
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib
import json
import re
import statistics
from collections.abc import Mapping
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from qtool_kernels import build, norm_planes, tuning
from quantize.bench import bench_model
from quantize.cli_tools import _fuse, bench_plan
from quantize.quantizer import quantize_model
from quantize.shapes import random_model

MISSING = object()
SETTING = re.compile(r"^([A-Za-z_][\w.]*)((?:\[[^\]]*\])*)\s*=\s*(.+)$", re.S)


class Setting:
    """One `module.ATTR[key]...=value` assignment that can be applied and undone."""

    def __init__(self, text: str) -> None:
        match = SETTING.match(text.strip())
        if match is None:
            raise ValueError(f"a setting is module.ATTR[key]...=value, got {text!r}")
        path, keys, value = match.groups()
        self.text = text
        self.owner, self.attr = _resolve(path)
        self.keys = [ast.literal_eval(k) for k in re.findall(r"\[([^\]]*)\]", keys)]
        self.value = ast.literal_eval(value.strip())
        self.old = MISSING

    def _container(self):
        """The object whose last key (or attribute) the setting assigns."""
        target = getattr(self.owner, self.attr)
        for key in self.keys[:-1]:
            target = target[key]
        return target

    def apply(self) -> None:
        if not self.keys:
            self.old = getattr(self.owner, self.attr)
            setattr(self.owner, self.attr, self.value)
            return
        container = self._container()
        self.old = container.get(self.keys[-1], MISSING) if isinstance(container, Mapping) else container[self.keys[-1]]
        container[self.keys[-1]] = self.value

    def undo(self) -> None:
        if not self.keys:
            setattr(self.owner, self.attr, self.old)
        elif self.old is MISSING:
            del self._container()[self.keys[-1]]
        else:
            self._container()[self.keys[-1]] = self.old
        self.old = MISSING


def _resolve(path: str) -> tuple[object, str]:
    """(the imported module or object holding the attribute, the attribute's name) for a dotted path."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name)
        if not hasattr(owner, parts[-1]):
            raise ValueError(f"{'.'.join(parts[:-1])} has no attribute {parts[-1]!r}")
        return owner, parts[-1]
    raise ValueError(f"no importable module in {path!r}")


def fresh_compile_state() -> None:
    """Forget compiled steps and memoized routes, so the next decode traces (and its graphs capture) under the
    current settings, the extension's reloadable switches included."""
    build.reload_switches()
    tuning.clear_cache()
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def step_rates(model, batches: list[int], decode_tokens: int, device: str, prefill_len: int = 16) -> dict[int, float]:
    """Steady single-token step tokens/s per batch (bench_model's loop: compiled on CUDA, eager elsewhere), after a
    prefill of prefill_len positions (16 by default: the A/Bs' own; `qtool bench`'s figures use 128, and the steps
    attend over that many more positions: session 52 had batch 16 at 2.07x here, session 53 2.17x there)."""
    result = bench_model(model, batch_sizes=batches, decode_tokens=decode_tokens, prefill_len=prefill_len,
                         device=device)
    return {d.batch_size: d.step_tokens_per_s or d.tokens_per_s for d in result.decode}


def run(args: argparse.Namespace, console: Console) -> dict:
    """The A/B: baseline once, then the variants alternated over the rounds; the figures as a dict."""
    variants = [(v[0], [Setting(s) for s in v[1:]]) for v in (args.variant or [["main"]])]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = random_model(args.config, dtype=dtype, device=args.device)
    figures = {"config": args.config, "scheme": args.scheme, "device": args.device, "rounds": args.rounds,
               "prefill_len": args.prefill_len,
               "variants": {name: {"settings": [s.text for s in settings], "steps": {}} for name, settings in variants}}
    if args.baseline:
        figures["bf16"] = step_rates(model, args.batches, args.decode_tokens, args.device, args.prefill_len)
        console.print(f"bf16: {figures['bf16']}")
    quantize_model(model, bench_plan(args.scheme, args.lm_head_scheme), device=args.device, progress=False)
    figures["fused"] = _fuse(model, (True, False), f"{args.config} {args.scheme}")
    for round_ in range(args.rounds):
        for name, settings in variants:
            for setting in settings:
                setting.apply()
            rewrites = norm_planes.REWRITES[0]
            try:
                fresh_compile_state()
                rates = step_rates(model, args.batches, args.decode_tokens, args.device, args.prefill_len)
            finally:
                for setting in reversed(settings):
                    setting.undo()
            for batch, rate in rates.items():
                figures["variants"][name]["steps"].setdefault(str(batch), []).append(rate)
            # norms folded by QTOOL_NORM_PLANES' pass in this variant's compiles (0: the lever did not act)
            figures["variants"][name]["norm_planes_rewrites"] = norm_planes.REWRITES[0] - rewrites
            folded = figures["variants"][name]["norm_planes_rewrites"]
            console.print(f"round {round_ + 1} {name}: " + ", ".join(f"b{b} {r:.1f}" for b, r in rates.items())
                          + (f" (norm_planes: {folded} norms folded)" if folded else ""))
            if args.json:  # after every run, so a call cut by its limit keeps what it measured
                args.json.write_text(json.dumps(figures, indent=2))
    return figures


def show(figures: dict, console: Console) -> None:
    """Median step tokens/s per variant and batch (every round's figure beside it), and the ratio to bf16."""
    base = figures.get("bf16", {})
    batches = sorted({int(b) for v in figures["variants"].values() for b in v["steps"]})
    table = Table(title=f"{figures['config']} {figures['scheme']}: decode steps, tokens/s (median of rounds)")
    table.add_column("variant")
    for batch in batches:
        table.add_column(f"batch {batch}", justify="right")
    for name, variant in figures["variants"].items():
        cells = []
        for batch in batches:
            rates = variant["steps"].get(str(batch), [])
            if not rates:
                cells.append("-")
                continue
            median = statistics.median(rates)
            ratio = f" {median / base[str(batch)]:.2f}x" if str(batch) in base else ""
            cells.append(f"{median:.1f}{ratio} ({', '.join(f'{r:.1f}' for r in rates)})")
        table.add_row(name, *cells)
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="llama-8b")
    parser.add_argument("--scheme", default="w4a16")
    parser.add_argument("--lm-head-scheme", default=None, help="quantize lm_head with this preset too")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--prefill-len", type=int, default=16, help="positions before the steps (qtool bench: 128)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "SETTING"))
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--show", type=Path, help="print a saved run's table")
    args = parser.parse_args()
    console = Console(width=150)
    if args.show:
        show(json.loads(args.show.read_text()), console)
        return
    args.batches = [int(b) for b in args.batches.split(",")]
    show(run(args, console), console)


if __name__ == "__main__":
    main()
