"""Output shapes of the extension's raw ops (`torch.ops.qtool_cuda`), for torch.compile and opcheck: their kernels
live in C++ (csrc/), so each op gets a fake here that allocates what the kernel would return, no more. Registered by
build.py once the library has loaded."""

from __future__ import annotations

import torch

from .layout import chunk_k


def wo_linear(x, qweight, scale, zero, bias, num_bits, group_size, out_features, activation, prefetch=None):
    return x.new_empty(x.shape[0], out_features)


def wo_gemv(x, qweight, scale, zero, bias, num_bits, group_size, out_features, activation, prefetch=None,
            variant=0):
    return x.new_empty(x.shape[0], out_features)


def wo_gemm_v3(x, qweight, scale, zero, bias, num_bits, group_size, out_features, activation, variant=0):
    return x.new_empty(x.shape[0], out_features)


def dequant_int(qweight, scale, zero, num_bits, group_size, out_features, dtype):
    return qweight.new_empty(out_features, qweight.shape[1] * chunk_k(num_bits), dtype=dtype)


def act_quant(x, fmt, group_size, static_scale):
    m, k = x.shape
    if fmt == "int8x2":  # two planes per row (ops_w8a8.cpp)
        return x.new_empty(2 * m, k, dtype=torch.int8), x.new_empty(2 * m, 1, dtype=torch.float32)
    codes = x.new_empty(m, k, dtype=torch.int8 if fmt == "int8" else getattr(
        torch, {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}[fmt]))
    if group_size > 0 and static_scale is None:  # column-major, as ops_w8a8.cpp writes it
        return codes, x.new_empty_strided((m, -(-k // group_size)), (1, max(m, 1)), dtype=torch.float32)
    return codes, x.new_empty(m, 1, dtype=torch.float32)


def w8_gemv(x, w, scale, bias, block_n, block_k, pdl=0, prefetch=None, swiglu=0):
    return x.new_empty(x.shape[0], w.shape[0] // 2 if swiglu else w.shape[0])


def sm90_scaled_mm(a, b, a_scale, b_scale, bias, out_dtype, config=0):
    return a.new_empty(a.shape[0], b.shape[0], dtype=out_dtype)


def w1_gemv(x, qweight, scale, bias, group_size, out_features):
    return x.new_empty(x.shape[0], out_features)


def binarize(x, group_size, k_padded):
    m, k = x.shape
    m_padded = max(128, -(-m // 128) * 128)  # csrc/w1_kernels.h, kW1A1PadM
    groups = 1 if group_size <= 0 else -(-k // group_size)
    return (x.new_empty(m_padded, k_padded // 32, dtype=torch.int32), x.new_empty(m_padded, dtype=torch.float32),
            x.new_empty(groups, m_padded, dtype=torch.int32))


def w1a1_gemm(xbits, xscale, xpopc, wbits, wscale, cterm, bias, m, out_features, group_size, out_dtype):
    return xbits.new_empty(m, out_features, dtype=out_dtype)


def silu_mul(x, pdl=0):
    return x.new_empty(x.shape[0], x.shape[1] // 2)


def x_planes(x, pdl=0, natural=0, gated=0):
    k = x.shape[1] // (2 if gated else 1)
    return x.new_empty(2 * x.shape[0], k, dtype=torch.int8), x.new_empty(x.shape[0], dtype=torch.float32)


def norm_planes(x, residual, weight, eps, pdl=0, natural=0):
    m, k = x.shape
    return (x.new_empty(m, k) if residual is not None else x.new_empty(0),
            x.new_empty(2 * m, k, dtype=torch.int8), x.new_empty(m, dtype=torch.float32))


def w8_planes_gemv(planes, xscale, w, wscale, bias, dtype, variant=0):
    return planes.new_empty(planes.shape[0] // 2, w.shape[0], dtype=dtype)


def wo_planes_gemv(planes, xscale, qweight, scale, zero, bias, group_size, out_features, dtype, variant=0,
                   num_bits=4, prefetch=None):
    gated = variant >= 32  # csrc/wo_kernels.h kGatedFlag: silu(gate) * up of interleaved rows, half the width
    return planes.new_empty(planes.shape[0] // 2, out_features // 2 if gated else out_features, dtype=dtype)


def decode_attention(q, k, v, mask, scale, splits=0, pdl=0, variant=0):
    return q.new_empty(q.shape)


def rope_decode_attention(qkv, cos, sin, k, v, slot, mask, scale, heads, splits=0, pdl=0):
    return qkv.new_empty(qkv.shape[0], heads, k.shape[-1])  # (k and v: written in place)


# op name -> its fake (wo_gemm returns what every weight-only linear op returns)
FAKES = {
    "silu_mul": silu_mul,
    "x_planes": x_planes,
    "norm_planes": norm_planes,
    "wo_planes_gemv": wo_planes_gemv,
    "w8_planes_gemv": w8_planes_gemv,
    "decode_attention": decode_attention,
    "rope_decode_attention": rope_decode_attention,
    "w1_gemv": w1_gemv,
    "binarize": binarize,
    "w1a1_gemm": w1a1_gemm,
    "act_quant": act_quant,
    "w8_gemv": w8_gemv,
    "sm90_scaled_mm": sm90_scaled_mm,
    "wo_gemv": wo_gemv,
    "wo_gemm": wo_linear,
    "wo_gemm_v3": wo_gemm_v3,
    "dequant_int": dequant_int,
}


def register(namespace: str) -> None:
    for op, fake in FAKES.items():
        torch.library.register_fake(f"{namespace}::{op}")(fake)
