"""Small calls of every W8A8 kernel (act_quant with its int8x2 planes, w8_gemv, every libqtool_sm90 configuration),
for compute-sanitizer (dev/w8a8_session.sh sanitize, dev/session23.sh sanitize): ragged k and n,
static and dynamic scales, 1 to 300 tokens. Exits non-zero if an output differs from the reference."""

import torch

import quantize.linear  # noqa: F401  (QuantLinear's module registers the qtool ops)
from qtool_kernels import reference, scaled_mm, sm90

ops = torch.ops.qtool_cuda
torch.manual_seed(0)
sm90.load()
for m in (1, 5, 16, 17, 300):
    for k, n in ((576, 1000), (1024, 1536)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        for fmt, wdtype in (("int8", torch.int8), ("e4m3", torch.float8_e4m3fn)):
            for group in (0, 64):
                q, s = ops.act_quant(x, fmt, group, None)
                rq, rs = reference.quantize_activation(x, fmt, group, None)
                assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)), (m, k, fmt, group)
            if fmt == "int8":  # the two planes of W8A16's split route (kernels/split_mm.py)
                q, s = ops.act_quant(x, "int8x2", 0, None)
                rq, rs = reference.split_activation(x)
                assert torch.equal(q, rq) and torch.equal(s, rs), (m, k)
            w = (torch.randn(n, k, device="cuda") * 30).clamp(-127, 127).to(wdtype)
            ws = torch.rand(n, 1, device="cuda") / 100
            want = x.double() @ (w.double() * ws.double()).T
            if m <= scaled_mm.W8_GEMV_KERNEL_MAX_M:
                got = scaled_mm._w8_gemv(x, w, ws, None, 0, 0)
                assert ((got.double() - want).norm() / want.norm()) < 1e-2, (m, k, n, fmt)
            xq, xs = ops.act_quant(x, fmt, 0, None)
            # against the product of the same codes: e4m3's activation rounding alone is ~2.5% of the float product
            ref = reference.scaled_linear(xq, xs, w, ws, None, 0, 0, 0, torch.float64)
            for config in scaled_mm.SM90_CONFIGS.values() if sm90.load() else ():  # every tile configuration
                if config:  # (0: by m, one of the others)
                    got = ops.sm90_scaled_mm(xq, w, xs.reshape(-1).contiguous(), ws.reshape(-1), None,
                                             torch.bfloat16, config)
                    assert ((got.double() - ref).norm() / ref.norm()) < 1e-2, (m, k, n, fmt, config)
            y = scaled_mm.scaled_mm(xq, xs, w, ws, None, 0, 0, 0, torch.bfloat16)
            if y is not None:
                assert ((y.double() - ref).norm() / ref.norm()) < 1e-2, (m, k, n, fmt)


def block_scales(n: int, k: int) -> torch.Tensor:
    return torch.rand(-(-n // 128), -(-k // 128), device="cuda") / 100


def expand(bs: torch.Tensor, n: int, k: int) -> torch.Tensor:  # [n / 128, k / 128] -> [n, k]
    return bs.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]


# w8_gemv's FP8 block scales (folded into the decode, session 28-29: one and two token tiles) and its two-stripe
# kernels (n >= 16384), ragged k and n, against float64.
for m in (1, 8, 9, 16):
    for k, n in ((576, 1000), (1040, 16400)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(n, k, device="cuda") * 30).clamp(-127, 127).to(torch.float8_e4m3fn)
        for bn, ws in ((128, block_scales(n, k)), (0, torch.rand(n, 1, device="cuda") / 100)):
            scale = expand(ws, n, k) if bn else ws
            want = x.double() @ (w.double() * scale.double()).T
            got = scaled_mm._w8_gemv(x, w, ws, None, bn, bn)
            assert got is not None and ((got.double() - want).norm() / want.norm()) < 1e-2, (m, k, n, bn)
torch.cuda.synchronize()
print("sanitize_w8a8: all outputs match")
