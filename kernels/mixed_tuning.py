"""Which kernel and which schedule serve a batch of m tokens on a weight with a Hopper copy: measured, as data.

The Hopper mixed-input GEMM (mixed_mm.py) has many schedules: k per pipeline stage (64 or 128), tokens per
tile (16-256, at most the batch's own tile), 128-row tiles, 256-row tiles or clusters of two 128-row tiles,
and no split, split-K or stream-K. Which one is fastest depends on the batch and on how many tiles the weight
gives the 132 SMs, in ways that rules of thumb got wrong (session 10 ran 256 tokens of a 4096 x 4096 layer
in 128 x 256 tiles split 4 ways: 0.57x bf16). So `dev/mixed_sweep.py` timed every schedule at each measured
shape and batch, beside wo_gemm and dequantization + cuBLAS, and SCHEDULES holds the winners.

A route is "wo_gemm" (qtool's mma.sync GEMM), "dequant" (dequant_int + cuBLAS), or a schedule
"k<ktile> t<token tile> v<variant> s<split>" (the arguments of `mixed_mm.mixed_linear`). A weight of another
shape takes the routes of the measured shape nearest in log(K) and log(N); a batch between measured ones takes
the route of the next larger one measured (its token tile holds the batch).
"""

from __future__ import annotations

import math
from functools import lru_cache

from .mixed_mm import check_schedule

# (bits, K, N) -> {M: route}, H200 (132 SMs), dev/mixed_sweep.py in session 11 (BENCHMARKS.md).
SCHEDULES: dict[tuple[int, int, int], dict[int, str]] = {}


def parse(route: str) -> dict | str:
    """"k128 t64 v0 s-1" -> mixed_linear's keyword arguments; "wo_gemm" and "dequant" as they are."""
    if route in ("wo_gemm", "dequant"):
        return route
    parts = dict((p[0], int(p[1:])) for p in route.split())
    return {"ktile": parts["k"], "token_tile": parts["t"], "variant": parts["v"], "split": parts["s"]}


@lru_cache(maxsize=None)
def _nearest_shape(bits: int, k: int, n: int) -> tuple[int, int, int] | None:
    shapes = [key for key in SCHEDULES if key[0] == bits]
    if not shapes:
        return None
    return min(shapes, key=lambda s: abs(math.log(s[1] / k)) + abs(math.log(s[2] / n)))


def measured_route(bits: int, k: int, n: int, m: int) -> dict | str | None:
    """The measured route for m tokens of a bits-wide K x N weight, or None where nothing was measured."""
    shape = _nearest_shape(bits, k, n)
    if shape is None:
        return None
    cells = SCHEDULES[shape]
    at = next((cm for cm in sorted(cells) if cm >= m), max(cells))
    return parse(cells[at])


def fit(schedule: dict, m: int, group: int, k_padded: int) -> dict:
    """A measured schedule made valid for this weight: 64-k stages where its groups do not take 128, and the
    tiles those stages build (token tiles of 32 or more, 128-row tiles)."""
    try:
        check_schedule(m, group, k_padded, 0, **{key: schedule[key] for key in ("ktile", "variant", "token_tile")})
        return schedule
    except ValueError:
        tile = max(32, schedule["token_tile"])
        return {"ktile": 64, "token_tile": tile, "variant": 0, "split": schedule["split"]}
