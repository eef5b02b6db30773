"""One wgmma weight-only GEMM call under ncu (dev/session66.sh wgncu): W4 g128 (or 8-bit int8 rows with --rows) on
one shape, one schedule, launched three times (ncu takes the last: --launch-skip 2)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qtool_kernels import build, warpgroup_mm  # noqa: E402
from qtool_kernels.layout import pack_weight  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4096x4096", help="K x N")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--schedule", default="", help="tile,warpgroups,split (default: the plan)")
    ap.add_argument("--rows", action="store_true", help="int8 rows (w8_mm) in place of W4 g128")
    a = ap.parse_args()
    build.load_extension()
    k, n = (int(v) for v in a.shape.split("x"))
    s = warpgroup_mm.Plan(*(int(v) for v in a.schedule.split(","))) if a.schedule else None
    x = torch.randn(a.tokens, k, device="cuda", dtype=torch.bfloat16)
    if a.rows:
        w = torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8)
        scale = torch.rand(n, device="cuda") / 64
        call = lambda: warpgroup_mm.rows_linear(x, w, scale, None, s)  # noqa: E731
    else:
        codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
        p = pack_weight(codes, torch.rand(n, k // 128, device="cuda") / 8, None, None, 4, 128)
        call = lambda: warpgroup_mm.wgmma_linear(x, p, None, s)  # noqa: E731
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    print("plan", s or warpgroup_mm.device_plan(a.tokens, -(-n // 16) * 16, -(-k // 64) * 64, 0, int(a.rows)))


if __name__ == "__main__":
    main()
