"""A few eager launches of wo_gemv's split variant (csrc/wo_split.cu), for compute-sanitizer: two, four and eight
n-tiles (5, 16, 32 tokens), zero points (16), a ragged shape (576 x 200: one row block, a short last group), one
split and eight (cluster sums through distributed shared memory), with PDL; each output checked against float64 so a
launch that ran is also a launch that was right."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qtool_kernels import build  # noqa: E402
from qtool_kernels.int8_planes import SPLIT_VARIANT, SPLITS_UNIT  # noqa: E402
from qtool_kernels.layout import EPILOGUE, PDL_STATIC_WEIGHT, dequantize_packed, pack_weight  # noqa: E402


def main() -> None:
    kernels = build.load_extension()
    torch.manual_seed(0)
    launches = 0
    for k, n in ((576, 200), (4096, 1024)):
        for symmetric in (True, False):
            codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
            groups = -(-k // 128)
            zero = None if symmetric else torch.randint(-8, 8, (n, groups), device="cuda", dtype=torch.int8)
            p = pack_weight(codes, torch.rand(n, groups, device="cuda") / 100, zero, None, 4, 128)
            dense = dequantize_packed(p.qweight, p.scale, p.zero, 4, 128, n).double()
            for m in (5, 16, 32) if symmetric else (5, 16):
                x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
                for extra in (PDL_STATIC_WEIGHT, SPLITS_UNIT * (1 if k <= 1024 else 2), 8 * SPLITS_UNIT):  # fits
                    y = kernels.wo_gemv(x, p.qweight, p.scale, p.zero, None, 4, 128, n, EPILOGUE, None,
                                        SPLIT_VARIANT + extra)
                    ref = x.double() @ dense.T
                    err = ((y.double() - ref).norm() / ref.norm()).item()
                    assert err < 1e-2, (k, n, symmetric, m, extra, err)
                    launches += 1
    torch.cuda.synchronize()
    print(f"{launches} launches done, every output within 1e-2 of float64")


if __name__ == "__main__":
    main()
