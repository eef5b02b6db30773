"""A few eager launches of norm_planes (csrc/norm_planes.cu), for compute-sanitizer: each register form (K = 4096,
14336, 28672: one, two and four subtiles per thread), 1 and 4 tokens, with and without the residual, both orders;
checks the sum against the reference so a launch that ran is also a launch that was right."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qtool_kernels import build, reference  # noqa: E402


def main() -> None:
    kernels = build.load_extension()
    torch.manual_seed(0)
    launches = 0
    for k in (4096, 14336, 28672):
        for m in (1, 4):
            x, residual = (torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            weight = torch.rand(k, device="cuda", dtype=torch.bfloat16) + 0.5
            for res in (residual, None):
                for natural in (0, 1):
                    s, planes, xscale = kernels.norm_planes(x, res, weight, 1e-5, 1, natural)
                    want = reference.norm_planes(x, res, weight, 1e-5, bool(natural))
                    assert torch.equal(s, want[0]) and (planes != want[1]).float().mean() < 0.01, (k, m, natural)
                    launches += 1
    torch.cuda.synchronize()
    print(f"{launches} launches done, sums exact, planes within a code")


if __name__ == "__main__":
    main()
