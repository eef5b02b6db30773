"""The wgmma kernel's tuning cells from a `dev/wgmma_ab.py` run: for each (K, N, M) the fastest one-wave schedule
("wXsY", or the plan's), kept where it beats the route `QuantLinear` took by `--margin` (session 67 kept >= 4%), as
`"wgmma wX sY"` cells of kernels/tuning.py's table for the card the run was on (MIXED for an H200, MIXED_H100 for an
H100; `dev/mixed_sweep.py`'s merge, cell by cell). Rows whose route was a GEMV (`wo_gemv`, the planes: they run before
any table, weight_only.route) are skipped; the split GEMV (`wo_split`) gives way to a cell naming this kernel
(weight_only._wgmma_cell, session 70), so its rows count, and so does a cell of the kernel's own ("wgmma w2 s7"),
which another schedule or form replaces where it leads by the margin (session 72: the post-scale form).

    python3 dev/wgmma_cells.py wgmma_ab.json [--margin 0.04] [--card H100|H200] [--merge]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))

SCHEDULE = re.compile(r"w(\d)s(\d)([tp]?)")  # one-wave forced schedules ("t": the tall tile, "p": the post-scale form)
FORMS = {"": "", "t": " tall", "p": " post"}


def cells(rows: list[dict], margin: float) -> dict:
    """{(4, K, N): {M: "wgmma wX sY[ tall| post]"}} where the best schedule leads the route by `margin`."""
    out: dict = {}
    for row in rows:
        speedup, route = row["speedup"], str(row.get("route", ""))
        if not speedup.get("route") or not route.startswith(("hopper", "wgmma")) and route not in (
                "wo_gemm", "dequant", "wo_split"):
            continue  # a GEMV route (ahead of the tables)
        named = {name: v for name, v in speedup.items() if v and SCHEDULE.fullmatch(name)}
        plan = row.get("plan") or {}
        if speedup.get("wgmma") and plan:  # the plan's schedule, named as the forced ones are
            named.setdefault(f"w{plan['warpgroups']}s{plan['split']}", speedup["wgmma"])
        if not named:
            continue
        name = max(named, key=named.get)
        if named[name] < (1 + margin) * speedup["route"]:
            continue
        wg, split, form = SCHEDULE.fullmatch(name).groups()
        text = f"wgmma w{wg} s{split}{FORMS[form]}"
        out.setdefault((4, row["K"], row["N"]), {})[row["M"]] = text
        print(f"{row['K']} x {row['N']} M={row['M']}: {text} {named[name]:.2f}x against the route's "
              f"{speedup['route']:.2f}x ({route})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--margin", type=float, default=0.04)
    parser.add_argument("--card", default=None, help="H200 or H100 (default: the run's device name)")
    parser.add_argument("--merge", action="store_true", help="write the cells into kernels/tuning.py")
    args = parser.parse_args()
    run = json.loads(args.json.read_text())
    card = args.card or ("H200" if "H200" in run.get("device", "") else "H100")
    found = cells(run["rows"], args.margin)
    if not found:
        print("no cell leads the route by the margin")
        return
    import mixed_sweep

    name = mixed_sweep.card_table("mixed", card)
    if args.merge:
        mixed_sweep.merge_entries(found, name)
        print(f"merged {sum(len(r) for r in found.values())} cells into kernels/tuning.py's {name}")
    else:
        print(f"(--merge writes them into {name})")


if __name__ == "__main__":
    main()
