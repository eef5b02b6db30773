"""The stall reasons of one Nsight Compute SASS page (`ncu --import R --page source --csv --print-source sass`): the
kernel's stall samples by reason, then the SASS lines with the most samples and each line's largest reason.

    python3 dev/ncu_sass_top.py sass.csv [--lines 12]
"""

from __future__ import annotations

import argparse
import csv

SAMPLES = "Warp Stall Sampling (All Samples)"


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--lines", type=int, default=12)
    args = parser.parse_args()
    rows = list(csv.reader(open(args.csv)))
    if len(rows) < 3:
        raise SystemExit(f"{args.csv}: not a SASS page ({len(rows)} rows)")
    header, lines = rows[1], [r for r in rows[2:] if len(r) > 5]  # rows[0]: the kernel's name
    col = {name: i for i, name in enumerate(header)}
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    total = sum(number(r[col[SAMPLES]]) for r in lines) or 1.0
    by_reason = {s: sum(number(r[col[s]]) for r in lines) for s in reasons}
    print(f"{rows[0][1][:100]}: {total:.0f} samples")
    print("  " + ", ".join(f"{s[6:]} {100 * v / total:.1f}%"
                           for s, v in sorted(by_reason.items(), key=lambda kv: -kv[1])[:8]))
    for r in sorted(lines, key=lambda r: -number(r[col[SAMPLES]]))[:args.lines]:
        top = max(reasons, key=lambda s: number(r[col[s]]))
        print(f"  {100 * number(r[col[SAMPLES]]) / total:5.1f}% {top[6:]:16s} {r[1][:80]}")


if __name__ == "__main__":
    main()
