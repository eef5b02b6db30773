"""Session 12: mixed-GEMM cluster launches (variant 2) fail after fp8-block layers ran in the same process. Which
call breaks them, and does a fresh stream recover? python3 dev/stream_probe.py"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_mixed_gpu import random_weight  # noqa: E402

from qtool_kernels import mixed_mm, scaled_mm  # noqa: E402


def v2(p, x, label):
    try:
        mixed_mm.mixed_linear(x, p.mixed, ktile=64, variant=2)
        torch.cuda.synchronize()
        print(label, "ok")
    except RuntimeError as err:
        print(label, "FAILED", err)


def main() -> None:
    p = random_weight(768, 2048, 128, True, seed=1)
    x = torch.randn(100, 2048, device="cuda", dtype=torch.bfloat16)
    v2(p, x, "fresh process:")
    g = torch.Generator(device="cuda").manual_seed(0)
    xq = torch.randn(16, 4096, device="cuda", generator=g).to(torch.float8_e4m3fn)
    wq = torch.randn(1536, 4096, device="cuda", generator=g).to(torch.float8_e4m3fn)
    xs = torch.ones(16, 32, device="cuda")
    ws = torch.ones(12, 32, device="cuda")
    y = scaled_mm.block_mm(xq, xs, wq, ws)
    torch.cuda.synchronize()
    print("F.scaled_mm block-wise ran", tuple(y.shape))
    v2(p, x, "after cuBLAS block-wise, default stream:")
    with torch.cuda.stream(torch.cuda.Stream()):
        v2(p, x, "after cuBLAS block-wise, a new stream:")
    v2(p, x, "again on the default stream:")
    from quantize.linear import QuantLinear
    from quantize.primitives import quantize_weight
    from quantize.scheme import preset

    scheme = preset("fp8-block")
    for k in (4096, 576):
        w = torch.randn(1536, k, device="cuda") / k**0.5
        layer = QuantLinear.from_qtensor(quantize_weight(w, scheme.weights), scheme,
                                         bias=torch.randn(1536, device="cuda").to(torch.bfloat16))
        for m in (1, 16, 17, 300, 2048):
            layer(torch.randn(3, m, k, device="cuda").to(torch.bfloat16))
            torch.cuda.synchronize()
            v2(p, x, f"after an fp8-block layer, k={k}, 3 x {m} tokens (route "
                     f"{scaled_mm.w8a8_route(3 * m, 1536, k, 'fp8-block')}):")


if __name__ == "__main__":
    main()
