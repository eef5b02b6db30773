"""Where the small layers' fixed time goes: one kernel's graph time per call over a sweep of K (the rows each CTA
streams, with the grid fixed) and of N (the CTA count, with each CTA's work fixed), fitted as time = fixed + per-k
or per-row cost.

Issue 19's open cells (W4 g128 at 9-64 tokens on 4096 x 4096 ... 8192 x 8192) sit on ~10 us of "fixed" time per
call (dev/route_probe.py's fit over shapes). Session 44's sweep found the mixed-input GEMM on 8192 x 8192 at 16
tokens as fast with 32 CTAs (256-row tiles, no split) as with 128 (split 4): so the fixed time does not shrink with
the work per CTA. A sweep over K with N fixed says whether it is per launch (intercept) or per k step (slope,
shown as the weight bytes it streams per us); over N with K fixed, whether more CTAs cost time. The floor of a graph
kernel node (a one-element add), bf16 F.linear and the fp8 W8A8 layer as routed (w8_gemv up to 16 tokens, a kernel
of 11-29 KB of code where the mixed GEMM has 80-107 KB) are timed in the same run.

Three modes of the K sweep say whether the fixed time is a cold cache: "rotated" (the protocol: copies past the
L2), "resident" (one copy, weights and code stay in the L2: K up to 8192 at N = 8192 is 34 MB of W4), and
"streaming" (rotated, with each call's codes marked as L2 streaming data through the stream's access policy window,
so they are evicted before the kernels' code and the activations). The Hopper mixed-input GEMM is 80-107 KB of SASS
per configuration (the W8A8 GEMMs 19-27 KB, the GEMVs 11-35 KB; cuobjdump -sass of the prebuilt libraries), 40-70 KB
of it run once per tile outside the k loop: if its fetch from a cold L2 is the fixed time, "resident" and
"streaming" show it.

    python3 dev/fixed_cost.py [--m 16] [--n 8192] [--ks 512,...] [--k 4096] [--ns 1024,...] [--modes rotated,...]
        [--json out.json]
    QTOOL_GEMM_PDL=1 python3 dev/fixed_cost.py ...   # the Hopper GEMMs launched with programmatic serialization
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, copies_for, graph_ms, packed_copies  # noqa: E402
from bench_w8a8 import qlayers  # noqa: E402

from qtool_kernels import build, mixed_mm  # noqa: E402
from qtool_kernels.layout import EPILOGUE  # noqa: E402

# the mixed-input GEMM's schedules the routes take at 9-64 tokens (kernels/tuning.py): 128- or 256-row tiles, split
SCHEDULES = {"k128 v0 s0": dict(ktile=128, variant=0, split=0), "k128 v1 s0": dict(ktile=128, variant=1, split=0),
             "k128 v0 s4": dict(ktile=128, variant=0, split=4), "k128 v1 s4": dict(ktile=128, variant=1, split=4)}


class _Window(ctypes.Structure):  # CUaccessPolicyWindow (cuda.h)
    _fields_ = [("base_ptr", ctypes.c_void_p), ("num_bytes", ctypes.c_size_t), ("hitRatio", ctypes.c_float),
                ("hitProp", ctypes.c_int), ("missProp", ctypes.c_int)]


class _AttrValue(ctypes.Union):  # CUlaunchAttributeValue: 64 bytes
    _fields_ = [("accessPolicyWindow", _Window), ("pad", ctypes.c_char * 64)]


_DRIVER = None


def stream_streaming(t: torch.Tensor | None) -> None:
    """Mark t's bytes as L2 streaming data for the kernels launched on the current stream from now on (None: clear).
    cuStreamSetAttribute(CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW); a captured launch takes the stream's window."""
    global _DRIVER
    _DRIVER = _DRIVER or ctypes.CDLL("libcuda.so.1")
    value = _AttrValue()
    if t is not None:  # a window is at most the device's limit (CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE)
        device, limit = ctypes.c_int(), ctypes.c_int()
        _DRIVER.cuDeviceGet(ctypes.byref(device), torch.cuda.current_device())
        _DRIVER.cuDeviceGetAttribute(ctypes.byref(limit), 109, device)
        size = min(t.numel() * t.element_size(), limit.value)
        value.accessPolicyWindow = _Window(t.data_ptr(), size, 1.0, 1, 1)  # hits and misses: STREAMING
    rc = _DRIVER.cuStreamSetAttribute(ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), 1,
                                      ctypes.byref(value))
    if rc != 0:
        raise RuntimeError(f"cuStreamSetAttribute returned {rc}")


def weight_calls(k: int, n: int, m: int, kernels, mode: str) -> dict:
    """label -> call() on a k x n W4 g128 weight at m tokens, each call on the next copy (one copy if resident)."""
    count = 1 if mode == "resident" else copies_for(2 * n * k)
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(count)])
    packed = Rotation(packed_copies(4, 128, k, n)[: 1 if mode == "resident" else None])
    p0 = packed.items[0]
    x = torch.randn(m, p0.k_padded, device="cuda", dtype=torch.bfloat16)
    one = torch.zeros(1, device="cuda")

    def mixed(**s):
        w = packed().mixed
        if mode == "streaming":
            stream_streaming(w.w)
        return mixed_mm.mixed_linear(x, w, **s)

    fp8 = Rotation(qlayers("fp8", dense.items[0])[:count])  # the fp8 W8A8 layer as routed (w8_gemv to 16 tokens)
    calls = {"node floor": lambda: one.add_(1), "bf16": lambda: F.linear(x, dense()),
             "fp8 layer": lambda: fp8()(x[:, :k]),
             "wo_gemm": lambda: kernels.wo_gemm(x, packed().qweight, p0.scale, p0.zero, None, 4, 128, n, EPILOGUE)}
    for label, s in SCHEDULES.items():
        try:
            mixed_mm.check_schedule(m, p0.mixed.group, p0.k_padded, 0, s["ktile"], s["variant"], 0)
        except ValueError:
            continue
        calls[label] = lambda s=s: mixed(**s)
    return calls


def time_shape(k: int, n: int, m: int, kernels, mode: str = "rotated") -> dict[str, float | None]:
    """Graph time per call (us) of each kernel, weights rotated past the L2 unless resident."""
    out = {}
    for label, call in weight_calls(k, n, m, kernels, mode).items():
        ms = graph_ms(call, reps=20, replays=9)
        out[label] = None if ms is None else 1000 * ms
        if label.startswith("k"):  # eager too: whether a captured launch kept the stream's window (streaming)
            try:
                out[f"{label} eager"] = 1000 * eager_ms(call)
            except RuntimeError as err:
                print(f"{label} eager: {err}")
    if mode == "streaming":
        stream_streaming(None)
    return out


def eager_ms(call, reps: int = 20, replays: int = 9) -> float:
    """Median time per call of `reps` eager calls between two events (host launch time included where it is longer)."""
    for _ in range(3):
        call()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            call()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / reps)
    return statistics.median(times)


def fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares y = a + b x over (x, y): (a, b)."""
    points = [(x, y) for x, y in points if y is not None]
    if len(points) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in points), statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def sweep(label: str, shapes: list[tuple[int, int]], m: int, kernels, mode: str = "rotated") -> dict:
    """Time every kernel on each (k, n); print the table and the fit of time against the weight's MB."""
    rows = []
    for k, n in shapes:
        rows.append({"K": k, "N": n, "us": time_shape(k, n, m, kernels, mode)})
        torch.cuda.empty_cache()  # the shape's copies are gone with time_shape's frame
        print(f"{label} {mode} K={k:<6} N={n:<6} M={m}: " + ", ".join(
            f"{name} {us:.1f}" if us else f"{name} -" for name, us in rows[-1]["us"].items()), flush=True)
    fits = {}
    for name in rows[0]["us"]:
        per = 2 if name == "bf16" else 1 if name == "fp8 layer" else 0.5 + 4 / 128  # weight bytes per element
        mbytes = [(r["K"] * r["N"] * per / 1e6, r["us"].get(name)) for r in rows]
        line = fit(mbytes)
        if line:
            fits[name] = {"fixed_us": line[0], "TB_per_s": 1 / line[1] if line[1] > 0 else None}
            rate = f"{1 / line[1]:.2f} TB/s" if line[1] > 0 else "no growth"
            print(f"  {label} {mode} fit {name:11}: {line[0]:5.1f} us fixed + weight bytes at {rate}")
    return {"mode": mode, "rows": rows, "fits": fits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--n", type=int, default=8192, help="N of the K sweep")
    ap.add_argument("--ks", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--k", type=int, default=4096, help="K of the N sweep")
    ap.add_argument("--ns", default="1024,2048,4096,8192,16384,28672")
    ap.add_argument("--modes", default="rotated,resident,streaming", help="modes of the K sweep (the N sweep is "
                    "rotated): rotated, resident (K up to 8192 at N 8192), streaming")
    ap.add_argument("--json")
    args = ap.parse_args()
    kernels = build.load_extension()
    ks = [int(k) for k in args.ks.split(",")]
    result = {"m": args.m, "device": torch.cuda.get_device_name(), "torch": torch.__version__, "k_sweeps": []}
    for mode in args.modes.split(","):  # written after each sweep: a run cut by its time limit keeps what it measured
        shapes = [(k, args.n) for k in ks if mode != "resident" or k * args.n <= 8192 * 8192]
        result["k_sweeps"].append(sweep("K", shapes, args.m, kernels, mode))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1))
    result["n_sweep"] = sweep("N", [(args.k, int(n)) for n in args.ns.split(",")], args.m, kernels)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
