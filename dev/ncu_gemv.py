"""Run wo_gemv once per decode-sized shape, for Nsight Compute to read its counters.

    ncu --clock-control none -k regex:wo_gemv --section SpeedOfLight ... python3 dev/ncu_gemv.py

Shapes are the 8B Llama's projections at batch 1 (K x N): k/v_proj, q/o_proj, fused q/k/v, gate/up,
fused gate/up, down. Each shape is called 3 times (ncu's --launch-skip can drop the first).
"""

from __future__ import annotations

import torch

from qtool_kernels import build
from qtool_kernels.layout import EPILOGUE, pack_weight

SHAPES = [(4096, 1024), (4096, 4096), (4096, 6144), (4096, 14336), (4096, 28672), (14336, 4096)]


def main() -> None:
    kernels = build.load_extension()
    assert kernels is not None, "the qtool_cuda extension did not build"
    for k, n in SHAPES:
        codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
        groups = -(-k // 128)
        p = pack_weight(codes, torch.rand(n, groups, device="cuda") / 100, None, None, 4, 128)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            kernels.wo_gemv(x, p.qweight, p.scale, None, None, 4, p.group_size, n, EPILOGUE)
        torch.cuda.synchronize()
        print(f"{k}x{n} done")


if __name__ == "__main__":
    main()
