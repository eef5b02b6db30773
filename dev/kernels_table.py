"""Print the graph-replay microseconds of each weight-only kernel from a bench_kernels.py --json file
(the table prints only the dispatcher's time; the JSON keeps every kernel's), M from 8 to 1024.

    python3 dev/kernels_table.py table.json
"""

import json
import sys

COLS = ("wo_gemv", "wo_gemv_lean", "wo_gemv_wide", "wo_gemv_stream", "w8_gemv_rows", "wo_gemm", "sm90_mixed",
        "sm90_mixed_streamk", "sm90_mixed_k128", "sm90_mixed_k128_streamk", "sm90_mixed_k128_r256", "wo_gemm_v3_d",
        "dequant+cublas", "tinygemm")


def main(path: str) -> None:
    rows = json.load(open(path))["rows"]
    empty = {c for c in COLS if all((r.get("graph_kernel_ms") or {}).get(c) is None for r in rows)}
    print("K x N | format | M | graph bf16 us | " + " | ".join(c for c in COLS if c not in empty)
          + " | dispatcher us | dispatcher vs bf16")
    for r in rows:
        g = r.get("graph_kernel_ms") or {}
        if r["M"] > 1024 or not g:
            continue
        us = [("-" if g.get(c) is None else f"{g[c] * 1e3:.1f}") for c in COLS if c not in empty]
        bf, auto = r.get("graph_bf16_ms") or 0.0, r.get("graph_qtool_ms") or 0.0
        ratio = f"{bf / auto:.2f}x" if bf and auto else "-"
        print(f"{r['K']}x{r['N']} | {r['format']} | {r['M']} | {bf * 1e3:.1f} | " + " | ".join(us)
              + f" | {auto * 1e3:.1f} | {ratio}")


if __name__ == "__main__":
    main(sys.argv[1])
