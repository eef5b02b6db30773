"""Where the small layers' fixed time goes: one kernel's graph time per call over a sweep of K (the rows each CTA
streams, with the grid fixed) and of N (the CTA count, with each CTA's work fixed), fitted as time = fixed + per-k
or per-row cost.

Issue 19's open cells (W4 g128 at 9-64 tokens on 4096 x 4096 ... 8192 x 8192) sit on ~10 us of "fixed" time per
call (dev/route_probe.py's fit over shapes). Session 44's sweep found the mixed-input GEMM on 8192 x 8192 at 16
tokens as fast with 32 CTAs (256-row tiles, no split) as with 128 (split 4): so the fixed time does not shrink with
the work per CTA. A sweep over K with N fixed says whether it is per launch (intercept) or per k step (slope,
shown as the weight bytes it streams per us); over N with K fixed, whether more CTAs cost time. The floor of a graph
kernel node (a one-element add) and bf16 F.linear are timed in the same run.

    python3 dev/fixed_cost.py [--m 16] [--n 8192] [--ks 512,...] [--k 4096] [--ns 1024,...] [--json out.json]
    QTOOL_GEMM_PDL=1 python3 dev/fixed_cost.py ...   # the Hopper GEMMs launched with programmatic serialization
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, copies_for, graph_ms, packed_copies  # noqa: E402

from qtool_kernels import build, mixed_mm  # noqa: E402
from qtool_kernels.layout import EPILOGUE  # noqa: E402

# the mixed-input GEMM's schedules the routes take at 9-64 tokens (kernels/tuning.py): 128- or 256-row tiles, split
SCHEDULES = {"k128 v0 s0": dict(ktile=128, variant=0, split=0), "k128 v1 s0": dict(ktile=128, variant=1, split=0),
             "k128 v0 s4": dict(ktile=128, variant=0, split=4), "k128 v1 s4": dict(ktile=128, variant=1, split=4)}


def time_shape(k: int, n: int, m: int, kernels) -> dict[str, float | None]:
    """Graph time per call (us) of each kernel on a k x n W4 g128 weight at m tokens, weights rotated past the L2."""
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    packed = Rotation(packed_copies(4, 128, k, n))
    p0 = packed.items[0]
    x = torch.randn(m, p0.k_padded, device="cuda", dtype=torch.bfloat16)
    one = torch.zeros(1, device="cuda")
    calls = {"node floor": lambda: one.add_(1), "bf16": lambda: F.linear(x, dense()),
             "wo_gemm": lambda: kernels.wo_gemm(x, packed().qweight, p0.scale, p0.zero, None, 4, 128, n, EPILOGUE)}
    for label, s in SCHEDULES.items():
        try:
            mixed_mm.check_schedule(m, p0.mixed.group, p0.k_padded, 0, s["ktile"], s["variant"], 0)
        except ValueError:
            continue
        calls[label] = lambda s=s: mixed_mm.mixed_linear(x, packed().mixed, **s)
    out = {}
    for label, call in calls.items():
        ms = graph_ms(call, reps=20, replays=9)
        out[label] = None if ms is None else 1000 * ms
    return out


def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares y = a + b x over (x, y): (a, b)."""
    points = [(x, y) for x, y in points if y is not None]
    if len(points) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def sweep(label: str, shapes: list[tuple[int, int]], m: int, kernels) -> dict:
    """Time every kernel on each (k, n); print the table and the fit of time against the weight's MB."""
    rows = []
    for k, n in shapes:
        rows.append({"K": k, "N": n, "us": time_shape(k, n, m, kernels)})
        torch.cuda.empty_cache()  # the shape's copies are gone with time_shape's frame
        print(f"{label} K={k:<6} N={n:<6} M={m}: " + ", ".join(
            f"{name} {us:.1f}" if us else f"{name} -" for name, us in rows[-1]["us"].items()), flush=True)
    fits = {}
    for name in rows[0]["us"]:
        mbytes = [(r["K"] * r["N"] * (2 if name == "bf16" else 0.5 + 4 / 128) / 1e6, r["us"].get(name)) for r in rows]
        line = fit(mbytes)
        if line:
            fits[name] = {"fixed_us": line[0], "TB_per_s": 1 / line[1] if line[1] > 0 else None}
            rate = f"{1 / line[1]:.2f} TB/s" if line[1] > 0 else "no growth"
            print(f"  {label} fit {name:11}: {line[0]:5.1f} us fixed + weight bytes at {rate}")
    return {"rows": rows, "fits": fits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--n", type=int, default=8192, help="N of the K sweep")
    ap.add_argument("--ks", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--k", type=int, default=4096, help="K of the N sweep")
    ap.add_argument("--ns", default="1024,2048,4096,8192,16384,28672")
    ap.add_argument("--json")
    args = ap.parse_args()
    kernels = build.load_extension()
    result = {"m": args.m, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "k_sweep": sweep("K", [(int(k), args.n) for k in args.ks.split(",")], args.m, kernels),
              "n_sweep": sweep("N", [(args.k, int(n)) for n in args.ns.split(",")], args.m, kernels)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
