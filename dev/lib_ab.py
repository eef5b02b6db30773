"""Two wgmma libraries' `dev/wgmma_ab.py` runs side by side (`--a`: main's, `--b`: a variant's, QTOOL_WGMMA_LIBRARY),
each side's runs in turn in one device call: per (K, N, M, schedule) the median speedup over bf16 of each side and
their ratio b / a, then the ratio's median over all schedules. Timings of one side across processes spread by
~0.03x (sessions 70-73), so only a ratio that holds over many schedules says something.

    python3 dev/lib_ab.py --a main_1.json main_2.json --b ptrs_1.json ptrs_2.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def speedups(paths: list[Path]) -> dict[tuple, float]:
    """{(K, N, M, asym, schedule): median speedup} over the runs; the kernel's own schedules and the route."""
    seen: dict[tuple, list[float]] = {}
    for path in paths:
        for row in json.loads(path.read_text())["rows"]:
            for name, v in row["speedup"].items():
                if v and name not in ("mixed", "split", "table"):
                    seen.setdefault((row["K"], row["N"], row["M"], row["asym"], name), []).append(v)
    return {key: statistics.median(vs) for key, vs in seen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", type=Path, required=True)
    parser.add_argument("--b", nargs="+", type=Path, required=True)
    args = parser.parse_args()
    a, b = speedups(args.a), speedups(args.b)
    ratios = []
    for key in sorted(set(a) & set(b)):
        ratio = b[key] / a[key]
        ratios.append(ratio)
        if key[4] == "route" or "*" not in key[4]:
            k, n, m, asym, name = key
            print(f"{k:>5} x {n:<5} M={m:<3} {'asym' if asym else 'sym '} {name:<8} {a[key]:5.2f}x -> {b[key]:5.2f}x "
                  f"({ratio:5.3f})")
    if ratios:
        print(f"b / a over {len(ratios)} (shape, batch, schedule): median {statistics.median(ratios):.3f}, "
              f"min {min(ratios):.3f}, max {max(ratios):.3f}")


if __name__ == "__main__":
    main()
