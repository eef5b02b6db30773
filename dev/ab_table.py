"""Two bench_kernels.py JSON files of the same rows (one build, an environment switch apart) side by side: graph
replay microseconds and speedup over bf16 per (K x N, M), and the GEMM part of W1A1 rows where timed.

    python3 dev/ab_table.py A.json B.json [--labels default,scaled]
"""

from __future__ import annotations

import argparse
import json


def cell(row: dict) -> str:
    text = f"{1e3 * row['graph_qtool_ms']:.1f} ({row['graph_speedup']:.2f}x)"
    gemm = (row.get("graph_kernel_ms") or {}).get("w1a1_gemm")
    return text + (f", GEMM {1e3 * gemm:.1f}" if gemm else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--labels", default="A,B")
    args = parser.parse_args()
    rows_a, rows_b = (json.load(open(path))["rows"] for path in (args.a, args.b))
    label_a, label_b = args.labels.split(",")
    print(f"K x N, M: bf16 us | {label_a} us (x bf16) | {label_b} us (x bf16), graph replay")
    for a, b in zip(rows_a, rows_b, strict=True):
        fmt = f"{a['format']} " if "format" in a else ""
        print(f"{fmt}{a['K']}x{a['N']} M={a['M']}: {1e3 * a['graph_bf16_ms']:.1f} | {cell(a)} | {cell(b)}")


if __name__ == "__main__":
    main()
