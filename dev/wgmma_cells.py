"""The wgmma kernel's tuning cells from a `dev/wgmma_ab.py` run: for each (K, N, M) the fastest one-wave schedule
("wXsY", or the plan's), kept where it beats the route `QuantLinear` took by `--margin` (session 67 kept >= 4%), as
`"wgmma wX sY"` cells of kernels/tuning.py's table for the card the run was on (MIXED for an H200, MIXED_H100 for an
H100; `dev/mixed_sweep.py`'s merge, cell by cell). Rows whose route was a GEMV (`wo_gemv`, the planes: they run before
any table, weight_only.route) are skipped; the split GEMV (`wo_split`) gives way to a cell naming this kernel
(weight_only._wgmma_cell, session 70), so its rows count, and so does a cell of the kernel's own ("wgmma w2 s7"),
which another schedule or form replaces where it leads by the margin (session 72: the post-scale form). Rows with
zero points (`--asym`) add a route for such weights to a cell, "A | B" (tuning.ZERO_ROUTE): their best schedule,
of this kernel or CUTLASS's ("table": the H200 table's, which a card's cell displaced), where it leads their route
by the margin (session 73: the post-scale form's cell lost 7-9% to CUTLASS on 8192 x 8192 with zero points).

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


def takes_table(row: dict) -> bool:
    """Whether the row's layer took a table's route (its cells can change it), not a GEMV ahead of the tables."""
    route = str(row.get("route", ""))
    return bool(row["speedup"].get("route")) and (route.startswith(("hopper", "wgmma")) or route in (
        "wo_gemm", "dequant", "wo_split"))


def schedules(row: dict, zero: bool) -> dict:
    """{cell text: speedup} of the row's one-wave schedules and the plan's; with `zero` (a row with zero points) also
    the CUTLASS schedules timed there ("mixed": the default one, "table": the H200 table's), and not the tall tile's
    (warpgroup_mm.for_weight gives zero points the plan there)."""
    speedup, named = row["speedup"], {}
    for name, v in speedup.items():
        if v and (match := SCHEDULE.fullmatch(name)) and not (zero and match[3] == "t"):
            named[f"wgmma w{match[1]} s{match[2]}{FORMS[match[3]]}"] = v
    plan = row.get("plan") or {}
    if speedup.get("wgmma") and plan:  # the plan's schedule, named as the forced ones are
        named.setdefault(f"wgmma w{plan['warpgroups']} s{plan['split']}", speedup["wgmma"])
    if zero and speedup.get("mixed"):
        named["k64 t0 v0 s0"] = speedup["mixed"]
    if zero and speedup.get("table") and row.get("table"):
        named[row["table"]] = speedup["table"]
    return named


def cells(rows: list[dict], margin: float, zero: bool = False) -> dict:
    """{(4, K, N): {M: "wgmma wX sY[ tall| post]"}} where the best schedule of the rows without zero points leads
    the route by `margin`; with `zero`, the rows with zero points' best schedule where it does."""
    out: dict = {}
    for row in rows:
        if bool(row.get("asym")) != zero or not takes_table(row) or zero and row["route"] == "wo_split":
            continue  # (the split GEMV, ahead of the tables, gives way to a cell of this kernel only: symmetric)
        named = schedules(row, zero)
        if not named:
            continue
        text = max(named, key=named.get)
        if named[text] < (1 + margin) * row["speedup"]["route"]:
            continue
        out.setdefault((4, row["K"], row["N"]), {})[row["M"]] = text
        print(f"{row['K']} x {row['N']} M={row['M']}{' zero points' if zero else ''}: {text} {named[text]:.2f}x "
              f"against the route's {row['speedup']['route']:.2f}x ({row['route']})")
    return out


def with_zero_routes(found: dict, zero: dict, card: str) -> dict:
    """The cells to write: `found`'s (for symmetric weights) and `zero`'s (for weights with zero points) at each batch
    either measured, as "A | B" (tuning.ZERO_ROUTE) where the two differ, else "A". The half a run did not measure
    stays the card's table's: a new A keeps the cell's B, a new B goes with the cell's A (a cell whose B is measured
    equal to its A drops the B)."""
    from qtool_kernels import tuning

    tuning._card[:] = [card]
    tuning.clear_cache()
    out: dict = {}
    for key in {*found, *zero}:
        for m in {*found.get(key, {}), *zero.get(key, {})}:
            current = tuning.lookup("mixed", *key, m) or ""
            old_a, _, old_b = current.partition(tuning.ZERO_ROUTE)
            a = found.get(key, {}).get(m) or old_a
            b = zero.get(key, {}).get(m) or old_b
            if not a:
                continue
            cell = a if not b or b == a else f"{a}{tuning.ZERO_ROUTE}{b}"
            if cell != current:
                out.setdefault(key, {})[m] = cell
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
    found = with_zero_routes(cells(run["rows"], args.margin), cells(run["rows"], args.margin, zero=True), card)
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
