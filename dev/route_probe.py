"""Where a weight-only route's time goes, per shape and token count: the kernels one QuantLinear call launches (torch
profiler: name, launches per call, device time), their sum against the call's time in a CUDA graph (the issue's
protocol: what the sum leaves out is launch gaps and serialization), and a fit of time = fixed + bytes / bandwidth
over the shapes at each token count. Session 40's figures put ~13 us of "fixed" time on the Hopper mixed-input GEMM
at 9-32 tokens (kernels/NOTES.md): this says which launches hold it.

    python3 dev/route_probe.py [--shapes 4096x4096,8192x8192,...] [--tokens 1,8,16,32,64] [--format w4a16-g128 |
        --scheme fp8] [--bf16] [--prefetch 0,65536,1073741824] [--json out.json]
    ncu --profile-from-start off ... python3 dev/route_probe.py --ncu ...   # only the probed calls are profiled
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))

DEFAULT_SHAPES = "4096x4096,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192"


def kernel_times(call, calls: int = 10) -> dict[str, tuple[float, float]]:
    """name -> (launches per call, device us per call) of the CUDA kernels `calls` calls launch."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    out: dict[str, list[float]] = {}
    for event in prof.events():
        if event.device_type.name == "CUDA":
            out.setdefault(event.name[:70], []).append(event.device_time)
    return {name: (len(times) / calls, sum(times) / calls) for name, times in out.items()}


def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares time_us = fixed_us + mbytes / (bandwidth in MB/us = TB/s): (fixed_us, TB/s)."""
    if len(points) < 2:
        return None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, (1.0 / slope if slope > 0 else float("inf"))


def weight_call(shape: str, fmt: str, scheme: str | None):
    """(call(x) -> y through the route, MB of weight one call reads, the number of copies) for a weight-only format
    of bench_kernels.py (packed copies) or a W8A8 preset of bench_w8a8.py (QuantLinear copies); copies rotate past
    the L2."""
    import torch
    from bench_kernels import ASYMMETRIC, FORMATS, Rotation, packed_copies

    from qtool_kernels import build
    from qtool_kernels.weight_only import packed_linear

    k, n = (int(v) for v in shape.split("x"))
    if scheme:
        from bench_w8a8 import qlayers

        layers = Rotation(qlayers(scheme, torch.randn(n, k, device="cuda", dtype=torch.bfloat16)))
        first = layers.items[0]
        mbytes = sum(t.numel() * t.element_size() for t in [*first.parameters(), *first.buffers()]) / 1e6
        # a copy's first call may prepare a layout (block_mm.narrow_scales): probe() calls every copy before capture
        return (lambda x: layers()(x)), mbytes, len(layers.items)
    kernels = build.load_extension()
    bits, group = FORMATS[fmt]
    layer = Rotation(packed_copies(bits, group, k, n, layer=True, asym=fmt in ASYMMETRIC))
    p0 = layer.items[0]
    mbytes = (p0.codes_tensor.numel() * p0.codes_tensor.element_size() + p0.scale.numel() * 4) / 1e6
    return (lambda x: packed_linear(x, layer(), None, kernels)), mbytes, len(layer.items)


def bf16_call(shape: str):
    """call(x) -> F.linear over bf16 copies of the weight rotated past the L2 (the protocol's baseline)."""
    import torch
    import torch.nn.functional as F
    from bench_kernels import Rotation, copies_for

    k, n = (int(v) for v in shape.split("x"))
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    return lambda x: F.linear(x, dense())


def prefetch_times(call, caps: list[int]) -> dict[int, float]:
    """cap -> graph us of call() with the Hopper GEMMs' L2 prefetch at each cap (kernels/sm90.py set_prefetch),
    interleaved over three rounds, median per cap; the prefetch is off again after."""
    from bench_kernels import graph_ms

    from qtool_kernels import sm90

    times: dict[int, list[float]] = {cap: [] for cap in caps}
    for _ in range(3):
        for cap in caps:
            sm90.set_prefetch(cap)
            times[cap].append(1000 * graph_ms(call))
    sm90.set_prefetch(0)
    return {cap: statistics.median(t) for cap, t in times.items()}


def probe(shape: str, tokens: list[int], fmt: str, scheme: str | None, ncu: bool, bf16: bool = False,
          caps: list[int] | None = None) -> list[dict]:
    import torch
    from bench_kernels import graph_ms

    k = int(shape.split("x")[0])
    route, mbytes, count = weight_call(shape, fmt, scheme)
    dense = bf16_call(shape) if bf16 and not ncu else None
    rows = []
    for m in tokens:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

        def call(x=x):
            return route(x)

        for _ in range(max(3, count)):  # every copy once, outside any capture
            call()
        torch.cuda.synchronize()
        if ncu:
            torch.cuda.profiler.start()
            for _ in range(2):
                call()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            continue
        launched = kernel_times(call)
        graph_us = 1000 * graph_ms(call)
        rows.append({"shape": shape, "M": m, "mbytes": mbytes, "graph_us": graph_us,
                     "kernel_us": sum(us for _, us in launched.values()), "kernels": launched})
        versus = ""
        if dense is not None:
            rows[-1]["bf16_us"] = 1000 * graph_ms(lambda x=x: dense(x))
            versus = f" (bf16 {rows[-1]['bf16_us']:6.1f} us: {rows[-1]['bf16_us'] / graph_us:4.2f}x)"
        if caps and any("cutlass" in name for name in launched):  # a Hopper GEMM (a GEMV route has nothing to try)
            rows[-1]["prefetch_us"] = prefetch_times(call, caps)
            versus += " prefetch " + " ".join(f"{cap >> 10}K {us:.1f}" for cap, us in rows[-1]["prefetch_us"].items())
        names = "; ".join(f"{name} x{count:g} {us:.1f} us" for name, (count, us) in launched.items())
        print(f"{shape:>11} M={m:<3} graph {graph_us:6.1f} us{versus}  kernels {rows[-1]['kernel_us']:6.1f} us  | "
              f"{names}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    ap.add_argument("--tokens", default="1,8,16,32,64")
    ap.add_argument("--format", default="w4a16-g128", help="a weight-only format of benchmarks/bench_kernels.py")
    ap.add_argument("--scheme", help="a W8A8 preset instead (fp8, w8a8-int8, fp8-block: benchmarks/bench_w8a8.py)")
    ap.add_argument("--ncu", action="store_true", help="profile only the probed calls (ncu --profile-from-start off)")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 F.linear in the same run (speedup)")
    ap.add_argument("--prefetch", help="comma-separated caps in bytes (0: off): also time each call with the "
                    "Hopper GEMMs' L2 prefetch at each (kernels/sm90.py set_prefetch)")
    ap.add_argument("--json")
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    caps = [int(c) for c in args.prefetch.split(",")] if args.prefetch else None
    rows = [row for shape in args.shapes.split(",")
            for row in probe(shape, tokens, args.format, args.scheme, args.ncu, args.bf16, caps)]
    for m in tokens:
        at = [r for r in rows if r["M"] == m]
        for key in ("graph_us", "kernel_us"):
            line = fit([(r["mbytes"], r[key]) for r in at])
            if line:
                print(f"M={m:<3} {key:9} ~ {line[0]:5.1f} us fixed + bytes at {line[1]:.2f} TB/s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
