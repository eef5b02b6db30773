"""A few eager launches of the wgmma W4A16 kernel (csrc/sm90/wo_wgmma_sm90.cu), for compute-sanitizer: every token
tile, one, two and four warpgroups, one split and eight (cluster sums through distributed shared memory), zero points, a
ragged shape (576 x 200: a partial row tile, a short last group), a bias, and at <= 32 tokens the post-scale form
(K = 1024: its group loop; 576: the plain loop in its kernel); each output checked against float64 so
a launch that ran is also a launch that was right."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qtool_kernels import build, warpgroup_mm  # noqa: E402
from qtool_kernels.layout import dequantize_packed, pack_weight  # noqa: E402


def main() -> None:
    build.load_extension()
    assert warpgroup_mm.available(), warpgroup_mm.sm90.wgmma.reason
    torch.manual_seed(0)
    launches = 0
    for k, n in ((576, 200), (1024, 1024)):
        for symmetric in (True, False):
            codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
            groups = -(-k // 128)
            zero = None if symmetric else torch.randint(-8, 8, (n, groups), device="cuda", dtype=torch.int8)
            p = pack_weight(codes, torch.rand(n, groups, device="cuda") / 100, zero, None, 4, 128)
            dense = dequantize_packed(p.qweight, p.scale, p.zero, 4, 128, n).double()
            bias = torch.randn(n, device="cuda")
            for tile, m in ((16, 9), (32, 32), (64, 50), (128, 128)):
                x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
                ref = x.double() @ dense.T + bias.double()
                for warpgroups, split in ((1, 1), (2, 1), (2, 8), (1, 3), (4, 2)):
                    if (tile, warpgroups) == (128, 4):
                        continue
                    for post in (False, True) if warpgroup_mm.takes_post(tile, warpgroups) else (False,):
                        plan = warpgroup_mm.Plan(tile, warpgroups, split, post=post)
                        y = warpgroup_mm.wgmma_linear(x, p, bias, plan)
                        err = ((y.double() - ref).norm() / ref.norm()).item()
                        assert err < 1e-2, (k, n, symmetric, m, plan, err)
                        launches += 1
    torch.cuda.synchronize()
    print(f"{launches} launches done, every output within 1e-2 of float64")


if __name__ == "__main__":
    main()
