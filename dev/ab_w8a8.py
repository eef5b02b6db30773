"""Two benchmarks/bench_w8a8.py JSON files of the same rows (one build, an environment switch apart) side by side:
graph replay microseconds and speedup over bf16 per (scheme, K x N, M).

    python3 dev/ab_w8a8.py A.json B.json [--labels off,on] [--schemes fp8,w8a8-int8,fp8-block]
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--labels", default="A,B")
    parser.add_argument("--schemes", default="fp8,w8a8-int8,fp8-block")
    args = parser.parse_args()
    rows_a, rows_b = (json.load(open(path))["rows"] for path in (args.a, args.b))
    label_a, label_b = args.labels.split(",")
    print(f"scheme K x N, M: bf16 us | {label_a} us (x bf16) | {label_b} us (x bf16), graph replay")
    for scheme in args.schemes.split(","):
        for a, b in zip(rows_a, rows_b, strict=True):
            us_a, us_b = a.get(f"{scheme}_us"), b.get(f"{scheme}_us")
            if us_a and us_b:
                print(f"{scheme} {a['K']}x{a['N']} M={a['M']}: {a['bf16_us']:.1f} | {us_a:.1f} "
                      f"({a['bf16_us'] / us_a:.2f}x) | {us_b:.1f} ({b['bf16_us'] / us_b:.2f}x)")


if __name__ == "__main__":
    main()
