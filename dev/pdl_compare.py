"""Two runs of benchmarks/bench_kernels.py side by side (the same cells with a switch off, then on): each cell's
graph time in both, the change, and the speedup over bf16 of each run. Session 46 read its PDL A/B this way.

    python3 dev/pdl_compare.py OFF.json ON.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_rows(path: Path) -> dict[tuple, dict]:
    """{(format, K, N, M): row} of a bench_kernels JSON."""
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError) as err:
        raise SystemExit(f"{path}: not a bench_kernels.py JSON ({err})") from None
    return {(r["format"], r["K"], r["N"], r["M"]): r for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("off", type=Path)
    ap.add_argument("on", type=Path)
    args = ap.parse_args()
    off, on = load_rows(args.off), load_rows(args.on)
    print(f"{'format':<15} {'K x N':>11} {'M':>4}  {'off us':>7} {'on us':>7} {'change':>7}  {'off x':>6} {'on x':>6}")
    for key in sorted(off.keys() & on.keys()):
        a, b = off[key], on[key]
        ta, tb = a["graph_qtool_ms"] * 1e3, b["graph_qtool_ms"] * 1e3
        print(f"{key[0]:<15} {key[1]:>5}x{key[2]:<5} {key[3]:>4}  {ta:7.1f} {tb:7.1f} {tb - ta:+7.1f}  "
              f"{a['graph_bf16_ms'] / a['graph_qtool_ms']:5.2f}x {b['graph_bf16_ms'] / b['graph_qtool_ms']:5.2f}x")


if __name__ == "__main__":
    main()
