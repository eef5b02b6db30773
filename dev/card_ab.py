"""The routes of two cards' tables on one card, in one process: for each weight-only cell, bf16 F.linear and the
layer (packed_linear) routed by the H200's tables alone and by this card's cells over them (kernels/tuning.py),
every graph replayed in turn (benchmarks/replay.py). Tables from different sessions ran on different machines of the
same kind, whose clocks differ by ~5-10% at 128-4096 tokens: only an A/B in one process tells a route's worth.

    python3 dev/card_ab.py [--cells w4:4096x4096:256,w8:8192x8192:128,...] [--cards H200,H100] [--json out.json]
                           [--alt FILE]  (FILE: a file with a MIXED_H100 table, timed as a third card, "alt")
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_CELLS = ",".join(f"{f}:{s}:{m}" for f in ("w4", "w8") for m in (64, 128, 256)
                         for s in ("4096x4096", "8192x8192", "4096x14336", "14336x4096", "8192x28672", "28672x8192"))


def routed(card: str, call):
    """`call` with the tables of `card`: the route is looked up (and kept in the captured graph) at capture time."""
    from qtool_kernels import tuning

    def run():
        tuning._card[:] = [card]
        tuning.clear_cache()
        return call()
    return run


def read_table(path: Path, name: str) -> dict:
    """The dict literal `name: dict[...] = {...}` of a tuning.py, without importing it."""
    text = path.read_text()
    start = text.index(f"{name}: dict")
    start = text.index("{", text.index("=", start))
    return ast.literal_eval(text[start:text.index("\n}", start) + 2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=DEFAULT_CELLS)
    parser.add_argument("--cards", default="H200,H100")
    parser.add_argument("--json")
    parser.add_argument("--alt", type=Path, help="a file whose MIXED_H100 cells are timed as card alt")
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F
    from bench_kernels import packed_linear
    from layer_gap import cell_weights
    from replay import interleaved_graph_ms

    from qtool_kernels import build, tuning

    kernels = build.load_extension()
    cards, out = args.cards.split(","), []
    if args.alt:  # another sweep's cells, as a card of their own
        tuning.MIXED_ALT, tuning.W8A8_ALT = read_table(args.alt, "MIXED_H100"), {}
        tuning.CARD_TABLES["alt"] = {"mixed": "MIXED_ALT", "w8a8": "W8A8_ALT"}
        cards.append("alt")
    print(f"device: {torch.cuda.get_device_name()}")
    for cell in args.cells.split(","):
        fmt, k, n, m, bits, dense, packed = cell_weights(cell)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        calls = {"bf16": lambda x=x, dense=dense: F.linear(x, dense())}
        routes = {}
        for card in cards:
            calls[card] = routed(card, lambda x=x, packed=packed: packed_linear(x, packed(), None, kernels))
            tuning._card[:] = [card]
            tuning.clear_cache()
            routes[card] = tuning.mixed_schedule(bits, packed.items[0].k_padded, n, m, packed.items[0].mixed.group)
        us = {name: 1e3 * t for name, t in interleaved_graph_ms(calls, reps=10, replays=12).items() if t}
        line = "  ".join(f"{name} {t:.1f} ({us['bf16'] / t:.2f}x)" for name, t in us.items())
        print(f"{fmt} {k}x{n} M={m}: {line}  routes {routes}", flush=True)
        out.append({"format": fmt, "K": k, "N": n, "M": m, "routes": {c: str(r) for c, r in routes.items()}, "us": us})
        del dense, packed
        torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "cells": out}, indent=1))


if __name__ == "__main__":
    main()
