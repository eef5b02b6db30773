"""Small calls of wo_gemm in each form (QTOOL_WO_GEMM 0-3), for compute-sanitizer (dev/session26.sh sanitize): split
k with the one-kernel epilogue, ragged k, rows not a multiple of 16, 1 to 130 tokens. Exits non-zero if an output is
far from the reference."""

import os

import torch

from qtool_kernels import build
from qtool_kernels.layout import ReferenceOps, pack_weight

ops = build.load_extension()
torch.manual_seed(0)
for mode in (3, 0, 1, 2):
    os.environ["QTOOL_WO_GEMM"] = str(mode)
    for bits, group, k, n in ((4, 128, 1024, 200), (4, 32, 576, 136), (8, -1, 1024, 200)):
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        groups = 1 if group <= 0 else -(-k // group)
        codes = torch.randint(lo, hi + 1, (n, k), device="cuda", dtype=torch.int8)
        zero = torch.randint(lo, hi + 1, (n, groups), device="cuda", dtype=torch.int8)
        p = pack_weight(codes, torch.rand(n, groups, device="cuda") / 100, zero, None, bits, group)
        for m in (1, 9, 33, 130):
            x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
            got = ops.wo_gemm(x, p.qweight, p.scale, p.zero, None, bits, p.group_size, n, "none")
            want = ReferenceOps.wo_gemv(x, p.qweight, p.scale, p.zero, None, bits, p.group_size, n, "none").double()
            assert ((got.double() - want).norm() / want.norm()) < 1e-2, (mode, bits, group, k, n, m)
torch.cuda.synchronize()
print("wo_gemm forms: all outputs within 1e-2 of the reference")
