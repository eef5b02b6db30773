"""Where the wgmma W4A16 kernel's output departs from float64, if it does: one 64-row warpgroup, one split, codes of
one value (A known), then x of one nonzero token / k column (B known), printing the error by row % 64, by token and
by k, so a wrong fragment, descriptor or swizzle shows as a pattern. For a first device call of a new kernel."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from qtool_kernels import build, warpgroup_mm  # noqa: E402
from qtool_kernels.layout import dequantize_packed, pack_weight  # noqa: E402


def run(codes, x, tile=16):
    n, k = codes.shape
    p = pack_weight(codes, torch.full((n, 1), 1.0, device="cuda"), None, None, 4, -1)
    y = warpgroup_mm.wgmma_linear(x, p, None, warpgroup_mm.Plan(tile, 1, 1)).double()
    ref = x.double() @ dequantize_packed(p.qweight, p.scale, None, 4, -1, n).double().T
    return y, ref


def main() -> None:
    build.load_extension()
    assert warpgroup_mm.available(), warpgroup_mm.sm90.wgmma.reason
    torch.manual_seed(0)
    n, k, m = 64, 64, 16
    codes = torch.randint(-8, 8, (n, k), device="cuda", dtype=torch.int8)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y, ref = run(codes, x)
    err = (y - ref).abs()
    ok = err.max().item() <= 1e-2 * ref.abs().max().item()  # bf16 output: ~2^-9 relative
    print("random 64x64, 16 tokens: max err", err.max().item(), "ref max", ref.abs().max().item(),
          "RESULT", "ok" if ok else "wrong")
    print(" by row % 16:", [round(v, 2) for v in err.amax(0).view(4, 16).amax(0).tolist()])
    print(" by token:", [round(v, 2) for v in err.amax(1).tolist()])
    for t, kk in ((0, 0), (1, 0), (0, 1), (0, 8), (3, 17), (9, 63)):
        xs = torch.zeros(m, k, device="cuda", dtype=torch.bfloat16)
        xs[t, kk] = 1
        ys, refs = run(codes, xs)
        bad = (ys - refs).abs() > 1e-2 * refs.abs().max().clamp(min=1)
        where = bad.nonzero()[:6].tolist()
        found = {}
        if bad.any():  # which (token, k) of x the kernel read in place of (t, kk): match the output column
            for tt in range(m):
                for k2 in range(k):
                    if torch.allclose(ys[tt], codes[:, k2].double() + 0 * ys[tt], atol=1e-3):
                        found[(tt, k2)] = True
        print(f" x one-hot at token {t}, k {kk}: bad {int(bad.sum())} at {where}; nonzero output tokens "
              f"{ys.abs().amax(1).nonzero().flatten().tolist()}; output equals W[:, k'] at {list(found)[:4]}")


if __name__ == "__main__":
    main()
