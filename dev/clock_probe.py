"""What bounds the W8A8 GEMMs at thousands of tokens: the SM clock and board power while one GEMM runs back to
back (session 57). For each GEMM on an M x K x N problem (default 8192 x 8192 x 8192): bf16 F.linear, torch's FP8
`_scaled_mm` (row-wise scales), `_int_mm`, and qtool's fp8 / w8a8-int8 / fp8-block layers (QuantLinear, activation
quantization included), run for --seconds while `nvidia-smi` samples clocks.sm and power.draw every 50 ms; prints the
median clock, power and the achieved TFLOP/s (2 M K N / time per call, from CUDA events over the whole run).

    python3 dev/clock_probe.py [--shape 8192x8192x8192] [--seconds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def calls(m: int, k: int, n: int) -> dict:
    import torch
    import torch.nn.functional as F
    from bench_w8a8 import qlayer

    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w8 = w.to(torch.float8_e4m3fn)
    x8 = x.to(torch.float8_e4m3fn)
    sa, sb = torch.ones(m, 1, device="cuda"), torch.ones(1, n, device="cuda")
    wi = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
    xi = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8)
    out = {"bf16": lambda: F.linear(x, w),
           "scaled_mm": lambda: torch._scaled_mm(x8, w8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16),
           "int_mm": lambda: torch._int_mm(xi, wi.t())}
    for scheme in ("fp8", "w8a8-int8", "fp8-block"):
        layer = qlayer(scheme, w)
        out[scheme] = lambda layer=layer: layer(x)
    return out


def sample(call, seconds: float) -> dict:
    import torch

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu", "--format=csv,noheader,nounits",
                            "-lms", "50"], stdout=subprocess.PIPE, text=True)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    count, t0 = 0, time.time()
    start.record()
    while time.time() - t0 < seconds:
        for _ in range(10):
            call()
        count += 10
        torch.cuda.synchronize()  # keeps the host near the GPU, so the samples cover the run
    end.record()
    torch.cuda.synchronize()
    smi.terminate()
    lines = [line.split(",") for line in smi.communicate()[0].strip().splitlines()]
    samples = [(float(a), float(b), float(c)) for a, b, c in lines[2:]]  # the first ~100 ms: ramp
    return {"us": start.elapsed_time(end) * 1e3 / count, "calls": count,
            "clock_mhz": statistics.median(s[0] for s in samples), "power_w": statistics.median(s[1] for s in samples),
            "temp_c": max(s[2] for s in samples), "samples": len(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="8192x8192x8192", help="M x K x N")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    from qtool_kernels import build

    build.load_extension()
    m, k, n = (int(v) for v in args.shape.split("x"))
    idle = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm,power.limit", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True).stdout.strip()
    print(f"device: {torch.cuda.get_device_name()}  max SM clock, power limit: {idle}")
    rows = {}
    for name, call in calls(m, k, n).items():
        row = sample(call, args.seconds)
        row["tflops"] = 2 * m * k * n / row["us"] / 1e6
        rows[name] = row
        print(f"{name:10s} {m}x{k}x{n}: {row['us']:8.1f} us  {row['tflops']:6.0f} TFLOP/s  clock {row['clock_mhz']:.0f} MHz"
              f"  power {row['power_w']:.0f} W  max {row['temp_c']:.0f} C  ({row['samples']} samples)", flush=True)
        time.sleep(1.0)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "shape": [m, k, n],
                                               "limits": idle, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
