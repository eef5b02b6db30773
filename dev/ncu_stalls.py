"""Summarise `ncu --page raw --csv` output of stall metrics: per kernel launch, the largest stall
reasons (warps stalled per issued instruction) and the DRAM throughput. Used by dev/ncu_session.sh.

    python3 dev/ncu_stalls.py ncu_stalls.csv
"""

import csv
import sys

PREFIX, SUFFIX = "smsp__average_warps_issue_stalled_", "_per_issue_active.ratio"
EXTRA = {"duration": "gpu__time_duration.sum", "warps active %": "sm__warps_active.avg.pct_of_peak_sustained_active",
         "issue active %": "smsp__issue_active.avg.pct_of_peak_sustained_active",
         "regs": "launch__registers_per_thread", "grid": "launch__grid_size"}


def number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def main(path: str) -> None:
    rows = [r for r in csv.reader(open(path)) if len(r) > 5]
    if len(rows) < 3:
        sys.exit("no ncu rows")
    head, body = rows[0], rows[2:]  # the second row holds units
    col = {h: i for i, h in enumerate(head)}
    for r in body:
        stalls = {h[len(PREFIX):-len(SUFFIX)]: number(r[i]) for h, i in col.items()
                  if h.startswith(PREFIX) and h.endswith(SUFFIX)}
        top = sorted(((v, k) for k, v in stalls.items() if v), reverse=True)[:5]
        dram = r[col["dram__throughput.avg.pct_of_peak_sustained_elapsed"]] if "dram__throughput.avg.pct_of_peak_sustained_elapsed" in col else "?"
        name = r[col["Kernel Name"]][:60] if "Kernel Name" in col else "?"
        extra = "".join(f" | {label} {r[col[metric]]}" for label, metric in EXTRA.items() if metric in col)
        print(f"{name} | DRAM {dram}%{extra} | " + ", ".join(f"{k} {v:.2f}" for v, k in top))


if __name__ == "__main__":
    main(sys.argv[1])
