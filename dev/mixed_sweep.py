"""Every schedule of the Hopper mixed-input GEMM (ktile, token tile, row tiles / clusters, split) at each
(format, shape, M), timed like benchmarks/bench_kernels.py (rotating weight copies, CUDA-graph replay, every
variant's graph replayed in turn since session 55) beside
bf16 F.linear, the dispatcher, wo_gemm and dequant + cuBLAS: the data kernels/tuning.py is written from.

    python3 dev/mixed_sweep.py --formats w4a16-g128 --tokens 64,128,256 --json sweep.json [--budget 250]
    python3 dev/mixed_sweep.py --show sweep.json          # the best schedule per cell, from a saved run
    python3 dev/mixed_sweep.py --emit sweep4.json sweep8.json   # kernels/tuning.py's SCHEDULES entries
    python3 dev/mixed_sweep.py --after norm ...           # each call after an add + RMSNorm, as in the model

--after norm times every call behind the kernel that feeds the layer in a decode step: Inductor's add + RMSNorm,
compiled with the step's options (PDL on Hopper), its output the layer's input. Back to back (the default, issue
19's protocol), each GEMM's prologue overlaps the previous GEMM's tail under PDL; session 49 found three schedules
that won at 16 tokens that way and lost 5% of the 8B batch-16 step. Timings then include the norm (`pre`, timed
alone beside them); speedups are shown on the layer's share (time - pre), the ranking is the same.

Results are written after every cell, so a run cut by its time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import ast
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import (  # noqa: E402
    ASYMMETRIC,
    FORMATS,
    SHAPES,
    Rotation,
    copies_for,
    interleaved_graph_ms,
    packed_copies,
)

from qtool_kernels import build, mixed_mm  # noqa: E402
from qtool_kernels.layout import EPILOGUE  # noqa: E402
from qtool_kernels.weight_only import packed_linear  # noqa: E402

TUNING = Path(__file__).resolve().parents[1] / "kernels" / "tuning.py"

ROWS = {0: 128, 1: 256, 2: 128}  # weight rows per CTA tile, by variant


def tiles_built(ktile: int) -> list[int]:
    return [16, 32, 64, 128] if ktile == 128 else [32, 64, 128, 256]


# split-K factors tried where the tiles leave SMs idle; 8 only where the splits meet without CUTLASS's chain (the
# ordered adds, the default since session 43, or any: sm90_scheduler.cuh), which the chain made too costly to try
SPLITS = (2, 4) if os.environ.get("QTOOL_GEMM_SPLIT_ADD") == "chain" else (2, 4, 8)


def schedules(m: int, n: int, group: int, k_padded: int, sms: int) -> list[dict]:
    """The schedules worth timing at m tokens: the batch's own token tile and the two below it, each ktile and
    variant that builds them, no split / the default / stream-K, and split-K by SPLITS where it fits."""
    out = []
    for ktile in (64, 128):
        built = tiles_built(ktile)
        own = next((t for t in built if t >= m), built[-1])
        for t in [t for t in built if t <= own][-3:]:
            if m >= 1024 and (ktile == 128 or t < 128):
                continue  # compute-bound: only large tiles of 64 k
            for variant in (0, 1, 2) if t >= 64 else (0, 1):  # clusters share token tiles of 64 or more
                sched = {"ktile": ktile, "variant": variant, "token_tile": 0 if t == own else t}
                try:
                    mixed_mm.check_schedule(m, group, k_padded, 0, **sched)
                except ValueError:
                    continue
                tiles = -(-n // ROWS[variant]) * -(-m // t)
                splits = [0, 1, -1] + [s for s in SPLITS if tiles * s <= 2 * sms and tiles < sms]
                out += [dict(sched, split=s) for s in splits]
    return out


def name(s: dict) -> str:
    return f"k{s['ktile']}/t{s['token_tile'] or 'm'}/v{s['variant']}/s{s['split']}"


@functools.cache  # one compile per (m, k)
def add_rmsnorm(m: int, k: int):
    """x [m, k] -> RMSNorm(x + residual) [m, k]: the kernel before q/k/v and gate/up in a decode step, compiled as
    `qtool bench` compiles the step (less its CUDA graphs: the sweep captures its own)."""
    from quantize.bench import decode_compile_options

    residual = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    weight = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5
    options = {key: v for key, v in decode_compile_options().items() if key != "triton.cudagraphs"}
    return torch.compile(lambda x: F.rms_norm(x + residual, (k,), weight, 1e-5), options=options)


def time_cell(fmt: str, m: int, dense: Rotation, packed: Rotation, kernels, sms: int, after: str = "none") -> dict:
    """One (format, shape, M) cell: bf16, the dispatcher, wo_gemm / dequant + cuBLAS and every schedule; with
    after="norm" each call behind add_rmsnorm (module docstring), whose time alone is the row's "pre"."""
    bits, _ = FORMATS[fmt]
    p0 = packed.items[0]
    n, k = p0.out_features, p0.in_features
    x0 = torch.randn(m, p0.k_padded, device="cuda", dtype=torch.bfloat16)
    norm = add_rmsnorm(m, p0.k_padded) if after == "norm" else None
    x = (lambda: norm(x0)) if norm else (lambda: x0)
    calls = {"bf16": lambda: F.linear(x(), dense()), "auto": lambda: packed_linear(x(), packed(), None, kernels)}
    if norm:
        calls["pre"] = x
    if m <= 64:
        calls["wo_gemm"] = lambda: kernels.wo_gemm(
            x(), packed().qweight, p0.scale, p0.zero, None, bits, p0.group_size, n, EPILOGUE)
    if m >= 128:
        calls["dequant+cublas"] = lambda: F.linear(x(), kernels.dequant_int(
            packed().qweight, p0.scale, p0.zero, bits, p0.group_size, n, x0.dtype))
    for s in schedules(m, p0.mixed.w.shape[0], p0.mixed.group, p0.k_padded, sms):
        calls[name(s)] = lambda s=s: mixed_mm.mixed_linear(x(), packed().mixed, **s)
    # every graph replayed in turn: timed one after another, a schedule inherited the clocks of the one before
    # (session 55, dev/layer_gap.py)
    times = interleaved_graph_ms(calls, reps=10, replays=8)
    row = {"format": fmt, "K": k, "N": n, "M": m, "after": after, "pre": times.pop("pre", 0.0),
           "bf16": times.pop("bf16"), "auto": times.pop("auto"), "kernels": times}
    return row


def sweep_case(fmt: str, k: int, n: int, tokens: list[int], kernels, deadline: float,
               after: str = "none") -> list[dict]:
    bits, group_size = FORMATS[fmt]
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    packed = Rotation(packed_copies(bits, group_size, k, n, asym=fmt in ASYMMETRIC))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for m in tokens:
        if time.monotonic() > deadline:
            print(f"{fmt} {k}x{n}: time budget spent before M={m}")
            break
        rows.append(time_cell(fmt, m, dense, packed, kernels, sms, after))
        show_row(rows[-1])
    return rows


def show_row(row: dict) -> None:
    """One line per cell; with a predecessor (--after) the times are the layer's share, total - pre."""
    pre = row.get("pre") or 0.0
    timed = {key: v - pre for key, v in row["kernels"].items() if v}
    best = min(timed, key=timed.get)
    mixed = {key: v for key, v in timed.items() if key.startswith("k")}
    top = sorted(mixed, key=mixed.get)[:3]
    bf16 = row["bf16"] - pre
    after = f" (after {row['after']}: {pre * 1e3:.1f} us taken out)" if pre else ""
    print(f"{row['format']} {row['K']}x{row['N']} M={row['M']}{after}: bf16 {bf16 * 1e3:.1f} us, dispatcher "
          f"{bf16 / (row['auto'] - pre):.2f}x, best {best} {bf16 / timed[best]:.2f}x ({timed[best] * 1e3:.1f} us); "
          + ", ".join(f"{key} {bf16 / mixed[key]:.2f}x" for key in top), flush=True)


# A schedule replaces the plain one only when this much faster: repeated runs of one kernel moved ~2% up to 128
# tokens and 5-15% past 256 on the H200 (compute-bound: clocks), so smaller wins there are noise.
def margin(m: int) -> float:
    return 0.02 if m <= 128 else 0.05


def best_route(row: dict) -> str | None:
    """The fastest of a cell's timings as a kernels/tuning.py route: "wo_gemm", "dequant", or a
    schedule "k<ktile> t<token tile> v<variant> s<split>" with the token tile written out. A tuned schedule
    must beat the plain one (the batch's own token tile, 128-row tiles, the default split) by `margin`, and
    any route must beat the dispatcher's own by `margin`, else None: the cell keeps its route. (Session 56's H100
    sweep swapped ties on 4096 x 4096 for the plain schedule, 9-16% slower in one process: dev/card_ab.py.)"""
    pre = row.get("pre") or 0.0
    timed = {key: v - pre for key, v in row["kernels"].items() if v}
    best = min(timed, key=timed.get)
    if row.get("auto") and timed[best] > (1 - margin(row["M"])) * (row["auto"] - pre):
        return None
    plain = min((key for key in ("k64/tm/v0/s0", "k128/tm/v0/s0") if key in timed), key=timed.get, default=None)
    if plain is not None and best.startswith("k") and timed[best] > (1 - margin(row['M'])) * timed[plain]:
        best = plain
    if not best.startswith("k"):
        return "dequant" if best.startswith("dequant") else best
    ktile, tile, variant, split = best.split("/")
    own = next((t for t in tiles_built(int(ktile[1:])) if t >= row["M"]), tiles_built(int(ktile[1:]))[-1])
    return f"{ktile} t{own if tile == 'tm' else tile[1:]} {variant} {split}"


def emit(paths: list[Path], merge: bool = False, card: str | None = None) -> None:
    table: dict = {}
    for path in paths:
        for row in json.loads(path.read_text()):
            bits = FORMATS[row["format"]][0]
            route = best_route(row)
            if route is not None:
                table.setdefault((bits, row["K"], row["N"]), {})[row["M"]] = route
    print_entries(table)
    if merge:  # cell by cell into kernels/tuning.py's MIXED table of the card swept
        merge_entries(table, card_table("mixed", card))


def card_table(table: str, card: str | None) -> str:
    """The name in kernels/tuning.py of `table` ("mixed" / "w8a8") for `card` (default: the running one, as
    tuning.card picks it): MIXED / W8A8 for the H200, the card's own cells (tuning.CARD_TABLES) otherwise."""
    from qtool_kernels import tuning

    card = card or tuning.card()
    if card == "H200":
        return table.upper()
    if card not in tuning.CARD_TABLES:
        raise SystemExit(f"--card must be one of {', '.join(tuning.CARDS)}; got {card!r}")
    return tuning.CARD_TABLES[card][table]


def print_entries(table: dict) -> None:
    """{(kind, K, N): {M: route}} as the lines of a kernels/tuning.py table."""
    for key, cells in sorted(table.items()):
        print(f"    {key}: {{" + ", ".join(f'{m}: "{r}"' for m, r in sorted(cells.items())) + "},")


def entry_line(key: tuple, cells: dict) -> str:
    return f"    {key}: {{" + ", ".join(f'{m}: "{r}"' for m, r in sorted(cells.items())) + "},\n"


def merge_entries(table: dict, name: str, path: Path = TUNING) -> None:
    """Write {(kind, K, N): {M: route}} into kernels/tuning.py's table `name` in place, cell by cell: a measured
    cell replaces the old one, the row's other cells stay; a new shape is appended to the table. A card's cells
    (MIXED_H100, ...) keep only routes that differ from the H200's table: a cell measured back to the H200's route
    is removed, and a row left empty with it."""
    from qtool_kernels import tuning

    base = None if name in ("MIXED", "W8A8") else tuning.MIXED if name.startswith("MIXED") else tuning.W8A8
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: dict"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("}"))
    rows = {}  # the table's rows in file order, then the new shapes sorted
    for line in lines[start + 1:end]:
        key_text, _, cells_text = line.strip().rstrip(",").partition(": ")
        rows[ast.literal_eval(key_text)] = ast.literal_eval(cells_text)
    rows.update({key: {} for key in sorted(set(table) - set(rows))})
    for key, cells in table.items():
        rows[key] = {**rows[key], **cells}
    if base is not None:
        rows = {key: {m: r for m, r in cells.items() if base.get(key, {}).get(m) != r} for key, cells in rows.items()}
    body = [entry_line(key, cells) for key, cells in rows.items() if cells]
    path.write_text("".join(lines[:start + 1] + body + lines[end:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="w4a16-g128,w8a16-channel")
    parser.add_argument("--tokens", default="8,16,32,64,128,256,512,1024,2048,4096")
    parser.add_argument("--shapes", help="comma-separated KxN, default bench_kernels.SHAPES")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--budget", type=float, default=250.0, help="seconds for the whole sweep")
    parser.add_argument("--show", type=Path, help="print the best schedules of a saved sweep and exit")
    parser.add_argument("--emit", type=Path, nargs="+", help="print SCHEDULES entries from saved sweeps and exit")
    parser.add_argument("--merge", action="store_true", help="with --emit: also write them into kernels/tuning.py")
    parser.add_argument("--card", help="with --merge: the card swept (H200, H100; default: this machine's GPU)")
    parser.add_argument("--after", choices=("none", "norm"), default="none",
                        help="norm: each call behind an add + RMSNorm kernel, as in a decode step (docstring)")
    args = parser.parse_args()
    if args.emit:
        return emit(args.emit, args.merge, args.card)
    if args.show:
        for row in json.loads(args.show.read_text()):
            show_row(row)
        return
    kernels = build.load_extension()
    if kernels is None:
        sys.exit(f"the CUDA extension is not available: {build._loader.reason}")
    shapes = [tuple(int(d) for d in s.lower().split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    tokens = [int(t) for t in args.tokens.split(",")]
    formats = args.formats.split(",")
    start, rows = time.monotonic(), []
    cases = [(f, k, n) for f in formats for k, n in shapes]
    for i, (fmt, k, n) in enumerate(cases):
        left = args.budget - (time.monotonic() - start)
        rows += sweep_case(fmt, k, n, tokens, kernels, time.monotonic() + left / (len(cases) - i), args.after)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
