"""Launch each weight-only / 1-bit kernel a few times on one shape, for Nsight Compute to read counters.

    ncu --clock-control none --section SpeedOfLight ... python3 dev/profile_kernels.py --shape 8192x8192

Issue 19's one-token GEMVs stream 0.8-2.9 TB/s (small layers least) where the copy moves 4.25 TB/s
(BENCHMARKS.md, session 15): these launches are what `dev/ncu_session.sh` profiles to say why (DRAM throughput,
achieved occupancy, warp stall reasons), instead of guessing. Each case rotates over enough weight
copies that a launch cannot hit L2 for its weights; every case runs REPS times after a warm-up call.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F

import quantize  # noqa: F401  (makes qtool_kernels importable)
from qtool_kernels import binary, build, mixed_mm, weight_only
from qtool_kernels.layout import EPILOGUE, pack_weight, unpack_codes
from qtool_kernels.tuning import plain_schedule
from quantize.primitives import pack_int

REPS = 3


def hopper_schedule(p, mixed, m: int) -> dict:
    """The Hopper GEMM's schedule the dispatcher takes for m tokens (its plain one where the route is another kernel)."""
    route = weight_only.hopper_route(dataclasses.replace(p, mixed=mixed), m, torch.bfloat16)
    return route if isinstance(route, dict) else plain_schedule(m, mixed.group, p.k_padded)


def weight_cases(kernels, k: int, n: int, widths: tuple[int, ...] = (4, 8, 3, 2)) -> dict:
    """name -> zero-argument callable, one launch each (plus the tensors it closes over), for the bit widths given."""
    cases = {}
    for bits, group in [(b, g) for b, g in ((4, 128), (8, -1), (3, 128), (2, 64)) if b in widths]:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        codes = torch.randint(lo, hi + 1, (n, k), device="cuda", dtype=torch.int8)
        groups = 1 if group <= 0 else -(-k // group)
        p = pack_weight(codes, torch.rand(n, groups, device="cuda") / 100, None, None, bits, group)
        mixed = None
        if mixed_mm.available(bits) and mixed_mm.takes(bits, p.group_size, p.k_padded):
            mixed = mixed_mm.pack_mixed(unpack_codes(p.qweight, bits), p.scale, None, p.group_size, bits)
        # the GEMVs at 1 and 4 tokens in each variant (0 ring, 1 lean, 2 wide, 3 stream: weight_only.gemv_kind; 4
        # planes for 4-bit),
        # then the tensor-core GEMMs (4- and 8-bit codes only)
        launches = tuple((f" v{v}", m, "wo_gemv", (None, v)) for m in (1, 4) for v in (0, 1, 2, 3))
        if bits == 4:  # variant 4, "planes" (csrc/wo_planes.cu): symmetric 4-bit only, as these codes are
            launches += tuple((" v4", m, "wo_gemv", (None, 4)) for m in (1, 4))
        if bits >= 4:
            launches += (("", 16, "wo_gemm", ()), ("", 32, "wo_gemm_v3", (3,)))
        for tag, m, op, extra in launches:
            x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
            cases[f"w{bits} {op}{tag} M={m}"] = (lambda x=x, op=op, extra=extra, p=p, bits=bits: getattr(kernels, op)(
                x, p.qweight, p.scale, None, None, bits, p.group_size, n, EPILOGUE, *extra))
        if bits < 4:
            continue
        cases[f"w{bits} dequant_int"] = lambda p=p, bits=bits: kernels.dequant_int(
            p.qweight, p.scale, None, bits, p.group_size, n, torch.bfloat16)
        if mixed is not None:
            x = torch.randn(16, p.k_padded, device="cuda", dtype=torch.bfloat16)
            cases[f"w{bits} w{bits}_mm M=16"] = lambda x=x, mixed=mixed: mixed_mm.mixed_linear(x, mixed)
            cases[f"w{bits} w{bits}_mm k128 M=16"] = lambda x=x, mixed=mixed: mixed_mm.mixed_linear(x, mixed, ktile=128)
            cases[f"w{bits} w{bits}_mm k128 r256 M=16"] = lambda x=x, mixed=mixed: mixed_mm.mixed_linear(
                x, mixed, ktile=128, variant=1)
            # unsplit: on 8192 x 8192, 32 CTAs each streaming 1 MB of codes timed level with the default split 4
            # (128 CTAs, session 44); ncu of both says what holds each
            cases[f"w{bits} w{bits}_mm k128 r256 s1 M=16"] = lambda x=x, mixed=mixed: mixed_mm.mixed_linear(
                x, mixed, split=1, ktile=128, variant=1)
            for m in (64, 256):  # the measured route (tuning.py) where issue 19's W4 goals are furthest off
                xm = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
                cases[f"w{bits} w{bits}_mm routed M={m}"] = lambda xm=xm, p=p, mixed=mixed: mixed_mm.mixed_linear(
                    xm, mixed, **hopper_schedule(p, mixed, xm.shape[0]))
    signs = (torch.randint(0, 2, (n, k), device="cuda") * 2 - 1).to(torch.int8)
    w1 = binary.pack_gemv(pack_int(signs, 1), torch.rand(n, -(-k // 64), device="cuda") + 0.5, 64, k)
    x1 = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    cases["w1 w1_gemv M=1"] = lambda: binary.binary_gemv_linear(x1, w1, None, kernels)
    wg = binary.pack_gemm(pack_int(signs, 1), torch.rand(n, 1, device="cuda") + 0.5, -1, k)  # W1A1, per channel
    xa = torch.randn(4096, k, device="cuda", dtype=torch.bfloat16)
    cases["w1 w1a1 M=4096"] = lambda: binary.binary_gemm_linear(xa, wg, None, kernels)
    dense = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    for m in (1, 16, 64, 256):
        xd = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        cases[f"bf16 F.linear M={m}"] = lambda xd=xd: F.linear(xd, dense)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="8192x8192", help="KxN")
    parser.add_argument("--only", help="comma-separated substrings of case names to run")
    parser.add_argument("--bits", default="4,8,3,2", help="the bit widths whose cases are set up (each takes time "
                        "under ncu)")
    args = parser.parse_args()
    kernels = build.load_extension()
    assert kernels is not None, build._loader.reason
    k, n = (int(v) for v in args.shape.lower().split("x"))
    torch.manual_seed(0)
    cases = weight_cases(kernels, k, n, tuple(int(b) for b in args.bits.split(",")))
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for name, fn in cases.items():
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        fn()
        for _ in range(REPS):
            flush.zero_()  # evict the weights from L2, as the graph protocol's rotation does
            fn()
        torch.cuda.synchronize()
        print("ran", name, flush=True)


if __name__ == "__main__":
    main()
