"""Where a small layer's time goes under CUDA graphs: each kernel's duration, the memsets between them and the gap
from one kernel's end to the next one's start, for 20 calls replayed from one graph (the protocol of
benchmarks/bench_kernels.py), read from torch.profiler's CUDA activity records.

Session 11 measured a 14-15 us floor for every schedule of the Hopper mixed-input GEMM on a 4096 x 4096 layer at
8-32 tokens, where bf16 cuBLAS takes 12.5-13.7 us for 4x the bytes: this says whether that floor is the kernel
(its prologue, pipeline fill, split-K fixup, epilogue), the stream-K workspace memset, or the launch spacing.

    python3 dev/floor_probe.py [--shape 4096x4096] [--tokens 8,128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, capture, copies_for, packed_copies  # noqa: E402

from qtool_kernels import build, mixed_mm  # noqa: E402
from qtool_kernels.layout import EPILOGUE  # noqa: E402

CALLS = 20


def timeline(call) -> list[tuple[str, float, float]]:
    """(name, start us, duration us) of every GPU activity of one replay of CALLS captured calls."""
    graph = capture(call, CALLS)
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sorted((e.name, e.time_range.start, e.time_range.end - e.time_range.start) for e in events)


def summarize(label: str, acts: list[tuple[str, float, float]]) -> None:
    acts = sorted(acts, key=lambda a: a[1])
    if not acts:
        print(f"{label}: no CUDA activity recorded (profiler without graph-kernel records?)")
        return
    span = acts[-1][1] + acts[-1][2] - acts[0][1]
    gaps = [b[1] - (a[1] + a[2]) for a, b in zip(acts, acts[1:], strict=False)]
    by_name: dict[str, list[float]] = {}
    for name, _, dur in acts:
        by_name.setdefault(name[:70], []).append(dur)
    print(f"{label}: {span / CALLS:.1f} us per call over {len(acts)} activities; gaps median "
          f"{statistics.median(gaps) if gaps else 0:.1f} us, total {sum(gaps) / CALLS:.1f} us per call")
    for name, durs in sorted(by_name.items(), key=lambda kv: -sum(kv[1])):
        print(f"    {len(durs) / CALLS:.0f}x per call  {statistics.median(durs):7.1f} us  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="4096x4096", help="KxN")
    parser.add_argument("--tokens", default="8,128")
    args = parser.parse_args()
    kernels = build.load_extension()
    assert kernels is not None, build._loader.reason
    k, n = (int(v) for v in args.shape.lower().split("x"))
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    packed = Rotation(packed_copies(4, 128, k, n))
    p0 = packed.items[0]
    for m in (int(t) for t in args.tokens.split(",")):
        x = torch.randn(m, p0.k_padded, device="cuda", dtype=torch.bfloat16)
        summarize(f"bf16 F.linear M={m}", timeline(lambda x=x: F.linear(x, dense())))
        summarize(f"wo_gemm M={m}", timeline(lambda x=x: kernels.wo_gemm(
            x, packed().qweight, p0.scale, None, None, 4, p0.group_size, n, EPILOGUE)))
        for split in (1, 0, -1):
            summarize(f"w4_mm split={split} M={m}", timeline(
                lambda x=x, split=split: mixed_mm.mixed_linear(x, packed().mixed, split=split)))


if __name__ == "__main__":
    main()
