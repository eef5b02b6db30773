"""Session 12: the mixed GEMM's 2-CTA cluster launches (variant 2) failed for a whole pytest process once the
fp8-block layer tests had run in it, and never in a fresh process. Session 12's probe ran a cluster GEMM first
and did not reproduce it; the hypothesis left is that the first launch of a cluster kernel fails after some
earlier call. Here one earlier path runs first, then the first cluster GEMM of the process, then again:

  python3 dev/stream_probe.py --before none|gemv|block|cublas|layers

gemv: w8_gemv on FP8 block-scaled weights; block: libqtool_sm90_block (skinny, then its clustered config);
cublas: F.scaled_mm block-wise; layers: the fp8-block QuantLinears of tests/test_w8a8_gpu.py at every m.
Session 13 found 'layers' breaks them (and so do the per-channel fp8 layer tests), the others not; the finer
choices split a per-channel fp8 layer into its parts: actq (the fused activation quantization), sm90-<config>
(libqtool_sm90's W8A8 GEMM in one configuration), rowwise (torch._scaled_mm row-wise), gemv (now with the
extension loaded first; session 13's run failed to find the op).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_mixed_gpu import random_weight  # noqa: E402

from qtool_kernels import block_mm, build, mixed_mm, scaled_mm, sm90  # noqa: E402

SM90 = [f"sm90-{name}" for name in scaled_mm.SM90_CONFIGS if name != "auto"]


def cluster_gemm(label: str) -> None:
    p = random_weight(768, 2048, 128, True, seed=1)
    x = torch.randn(100, 2048, device="cuda", dtype=torch.bfloat16)
    try:
        mixed_mm.mixed_linear(x, p.mixed, ktile=64, variant=2)
        torch.cuda.synchronize()
        print(label, "ok")
    except RuntimeError as err:
        print(label, "FAILED:", err)


def fp8_operands(m: int, n: int = 1536, k: int = 4096):
    g = torch.Generator(device="cuda").manual_seed(0)
    xq = torch.randn(m, k, device="cuda", generator=g).to(torch.float8_e4m3fn)
    wq = torch.randn(n, k, device="cuda", generator=g).to(torch.float8_e4m3fn)
    xs = torch.ones(k // 128, m, device="cuda").t()  # [m, k/128] column-major
    return xq, xs, wq, torch.ones(n // 128, k // 128, device="cuda")


def run_layers(ms=(1, 16, 17, 300, 2048), ks=(4096, 576)) -> None:
    from quantize.linear import QuantLinear
    from quantize.primitives import quantize_weight
    from quantize.scheme import preset

    scheme = preset("fp8-block")
    for k in ks:
        w = torch.randn(1536, k, device="cuda") / k**0.5
        layer = QuantLinear.from_qtensor(quantize_weight(w, scheme.weights), scheme,
                                         bias=torch.randn(1536, device="cuda").to(torch.bfloat16))
        for m in ms:
            layer(torch.randn(3, m, k, device="cuda").to(torch.bfloat16))
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="none",
                        choices=("none", "gemv", "block", "cublas", "layers", "actq", "rowwise", *SM90))
    parser.add_argument("--m", type=int, help="layers: only this many tokens (x3 rows)")
    parser.add_argument("--k", type=int, help="layers: only this K (4096 or 576)")
    args = parser.parse_args()
    before = args.before
    build.load_extension()
    for lib in sm90.ALL:
        lib.load()
    x = torch.randn(64, 4096, device="cuda", dtype=torch.bfloat16)
    if before == "gemv":
        x = torch.randn(3, 4096, device="cuda", dtype=torch.bfloat16)
        _, _, wq, ws = fp8_operands(4)
        scaled_mm._w8_gemv(x, wq, ws, None, 128, 128)
    elif before == "block":
        xq, xs, wq, ws = fp8_operands(args.m or 64)
        for config in block_mm.CONFIGS.values():
            block_mm.block_linear(xq, xs, wq, ws, config)
    elif before == "cublas":
        xq, xs, wq, ws = fp8_operands(args.m or 64)
        scaled_mm.block_mm(xq, xs, wq, ws)
    elif before == "layers":
        run_layers(*(((args.m,),) if args.m else ()), **({"ks": (args.k,)} if args.k else {}))
    elif before == "actq":
        scaled_mm.quantize_activation_cuda(x, "e4m3", 0, None)
    elif before in ("rowwise", *SM90):
        xq, xs, wq, _ = fp8_operands(64)
        xs, ws = torch.ones(64, 1, device="cuda"), torch.ones(1, 1536, device="cuda")
        if before == "rowwise":
            torch._scaled_mm(xq, wq.t(), scale_a=xs, scale_b=ws, out_dtype=torch.bfloat16)
        else:
            torch.ops.qtool_cuda.sm90_scaled_mm(xq, wq, xs.view(-1), ws.view(-1), None, torch.bfloat16,
                                                scaled_mm.SM90_CONFIGS[before[5:]])
    torch.cuda.synchronize()
    cluster_gemm(f"first cluster GEMM after '{before}':")
    cluster_gemm(f"second cluster GEMM after '{before}':")


if __name__ == "__main__":
    main()
