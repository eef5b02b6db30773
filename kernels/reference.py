"""Pure-PyTorch reference of every qtool op: the CPU path and the oracle the CUDA kernels are tested against.

Each function mirrors one op in `ops.py` argument for argument. They compute in float32
(dequantize, then matmul) and return the activation dtype. Self-contained on purpose: kernels/ is a
leaf that takes tensors and ints, so the checkpoint conventions it relies on are restated here:
  - integer codes are signed, [-2^(b-1), 2^(b-1) - 1]; a weight is (q - zero_point) * scale;
  - codes below 8 bits are packed 32 // b per int32 along K, code j of a word at bits [j*b, (j+1)*b),
    offset to unsigned (q + 2^(b-1)); 8-bit codes are stored as int8 [N, K];
  - 1-bit codes are +-1 (binary weights), 32 per int32, bit j set where code j is +1;
  - group g covers input columns [g * group_size, (g + 1) * group_size), or g_idx[k] with act-order;
  - symmetric 8-bit activation scales are max|x| / 127.5 (int8: the whole code range, as the weights)
    or max|x| / 448 (e4m3), divided in float64 and rounded once to float32, 1 where max|x| = 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def unpack_weight(qweight: torch.Tensor, num_bits: int, in_features: int) -> torch.Tensor:
    """qweight: [N, ceil(K / (32 // bits))] int32 for bits < 8, or [N, K] int8 -> codes [N, K] int8."""
    if num_bits == 8:
        return qweight
    per_word = 32 // num_bits
    shifts = torch.arange(per_word, device=qweight.device, dtype=torch.int32) * num_bits
    u = (qweight.unsqueeze(-1) >> shifts) & ((1 << num_bits) - 1)
    u = u.reshape(*qweight.shape[:-1], -1)[..., :in_features]
    if num_bits == 1:
        return (2 * u - 1).to(torch.int8)
    return (u - (1 << (num_bits - 1))).to(torch.int8)


def expand_groups(param: torch.Tensor, group_size: int, in_features: int,
                  g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """[rows, G] per-group values -> [rows, in_features]; group_size <= 0: one value per row ([rows, 1])."""
    if group_size <= 0:
        return param[:, :1].expand(-1, in_features)
    if g_idx is None:
        return param.repeat_interleave(group_size, dim=1)[:, :in_features]
    return param.index_select(1, g_idx.to(device=param.device, dtype=torch.long))


def weight_only_linear(
    x: torch.Tensor,  # [..., K] fp16/bf16/fp32 activations
    qweight: torch.Tensor,  # [N, ceil(K/pack)] int32, or [N, K] int8 when num_bits == 8
    scale: torch.Tensor,  # [N, G] float32, G = ceil(K / group_size) (1 per channel)
    zero_point: torch.Tensor | None,  # [N, G] int8, None when symmetric
    g_idx: torch.Tensor | None,  # [K] int32 group of each input (act-order), None when contiguous
    bias: torch.Tensor | None,  # [N]
    num_bits: int,
    group_size: int,  # <= 0: per output channel
    in_features: int,
) -> torch.Tensor:  # [..., N] in x.dtype
    w = dequantize_weight(qweight, scale, zero_point, g_idx, num_bits, group_size, in_features)
    return F.linear(x, w.to(x.dtype), None if bias is None else bias.to(x.dtype))


def dequantize_weight(qweight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                      g_idx: torch.Tensor | None, num_bits: int, group_size: int, in_features: int) -> torch.Tensor:
    """The float32 weight [N, K] of `weight_only_linear`'s arguments: (q - zero_point) * scale."""
    w = unpack_weight(qweight, num_bits, in_features).float()
    if zero_point is not None:
        w = w - expand_groups(zero_point, group_size, in_features, g_idx).float()
    return w * expand_groups(scale, group_size, in_features, g_idx)


def activation_scale(x: torch.Tensor, fmt: str, group_size: int) -> torch.Tensor:
    """Dynamic symmetric scales of x [M, K]: [M, 1] per token (group_size 0) or [M, ceil(K/g)] per 1 x g group."""
    a = x.float().abs()
    if group_size > 0:
        a = F.pad(a, (0, (-a.shape[1]) % group_size)).reshape(a.shape[0], -1, group_size)
    amax = a.amax(-1, keepdim=group_size <= 0).double()
    top = float(torch.finfo(FP8_DTYPES[fmt]).max) if fmt in FP8_DTYPES else 255 / 2
    scale = (amax / top).float()
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_activation(
    x: torch.Tensor,  # [M, K]
    fmt: str,  # "int8" | "e4m3" | "e5m2"
    group_size: int,  # 0: one scale per token; g > 0: one per 1 x g group
    static_scale: torch.Tensor | None,  # [1] float32 from calibration; None for dynamic
) -> tuple[torch.Tensor, torch.Tensor]:  # codes [M, K] (int8 or fp8), scale [M, 1] / [M, ceil(K/g)] / [1]
    if fmt != "int8" and fmt not in FP8_DTYPES:
        raise ValueError(f"activation format must be int8, e4m3 or e5m2, got {fmt!r}")
    # A copy of the static scale: a custom op's outputs may not alias its inputs.
    scale = static_scale.float().reshape(1).clone() if static_scale is not None else activation_scale(x, fmt, group_size)
    grouped = static_scale is None and group_size > 0
    y = x.float() / (expand_groups(scale, group_size, x.shape[1]) if grouped else scale)
    if fmt == "int8":
        return torch.round(y).clamp(-128, 127).to(torch.int8), scale
    top = float(torch.finfo(FP8_DTYPES[fmt]).max)
    return y.clamp(-top, top).to(FP8_DTYPES[fmt]), scale


def split_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """act_quant's "int8x2" of x [M, K]: codes [2M, K] int8 and scales [2M, 1], row r's two planes at r and M + r,
    x = s * hi + (s / 255) * lo + e with |e| <= s / 510 (s = max|x| / 127.5 per row: e is ~2^-16 of max|x|)."""
    hi, scale = quantize_activation(x, "int8", 0, None)
    rest = x.float() - hi.float() * scale  # a product, then a difference: the kernel rounds both the same way
    lo_scale = scale / torch.full_like(scale, 255.0)  # a true division: torch divides by a scalar as a product
    lo = torch.round(rest / lo_scale).clamp(-128, 127).to(torch.int8)
    return torch.cat([hi, lo]), torch.cat([scale, lo_scale])


def plane_slots(k_padded: int) -> torch.Tensor:
    """[k_padded] int64: the byte of a plane row (x_planes) holding x's k (csrc/wo_kernels.h, plane_slot): within
    each 64-k chunk, lane t's 16 bytes hold k = 16j + (2t, 2t + 8, 2t + 1, 2t + 9) of subtile j, the k of its int8 A
    register in the 4-bit weight layout."""
    k = torch.arange(k_padded)
    return 64 * (k // 64) + 16 * ((k % 8) // 2) + 4 * ((k % 64) // 16) + 2 * (k % 2) + (k % 16) // 8


def plane_sources(k_padded: int, device: torch.device | str | None = None) -> torch.Tensor:
    """[k_padded] int64: the k whose planes' byte sits at each slot, plane_slots' inverse (slot = 64 c + 16 t + 4 j + b
    holds k = 64 c + 16 j + 8 (b % 2) + 2 t + b // 2)."""
    slot = torch.arange(k_padded, device=device)
    r = slot % 64
    t, j, b = r // 16, (r % 16) // 4, r % 4
    return slot - r + 16 * j + 8 * (b % 2) + 2 * t + b // 2


def x_planes(x: torch.Tensor, natural: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The x_planes kernel's planes of x [m, K]: [2m, K] int8 (rows 2r / 2r + 1: token r's high / low plane, bytes in
    plane_slots order) and scales [m] float32, x = s hi + (s / 254) lo + e with |e| <= s / 508, s = max|x| / 127 per
    token (no clamps: |x / s| <= 127, |x - s hi| <= s / 2). The kernel rounds x / s as one FMA, so a code may differ
    by one where the product falls within a rounding of a half; the reconstruction bound holds for both."""
    xf = x.float()
    s = xf.abs().amax(1) / 127
    s = torch.where(s > 0, s, torch.ones_like(s))  # an all-zero token: any scale
    hi = torch.round(xf * (1 / s)[:, None])
    lo = torch.round((xf - hi * s[:, None]) * (254 / s)[:, None])
    rows = torch.stack([hi, lo], 1).reshape(2 * x.shape[0], x.shape[1]).to(torch.int8)
    if natural:  # k order (w8_planes_gemv)
        return rows, s
    return rows[:, plane_sources(x.shape[1], x.device)], s  # a gather: under torch.compile it fuses into the producer


def norm_planes(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float,
                natural: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The norm_planes kernel's outputs for x [m, K] (and residual [m, K]), weight [K] of x's dtype: (s = residual + x
    rounded to x's dtype, [0] without residual; x_planes of n = rms_norm(s) * weight rounded once), as the graph
    it replaces computes them (F.rms_norm decomposed: float32 products, one rounding)."""
    s = x if residual is None else (residual.float() + x.float()).to(x.dtype)
    sf = s.float()
    n = (sf * torch.rsqrt(sf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)
    planes, xscale = x_planes(n, natural)
    return (s if residual is not None else x.new_empty(0)), planes, xscale


def planes_to_x(planes: torch.Tensor, xscale: torch.Tensor, natural: bool = False) -> torch.Tensor:
    """x_planes' inverse: planes [2m, K] int8 and scales [m] -> x [m, K] float32 (within s / 508 of the x they came
    from)."""
    if not natural:
        planes = planes[:, plane_slots(planes.shape[1]).to(planes.device)]
    rows = planes.float().view(-1, 2, planes.shape[1])
    return xscale[:, None] * (rows[:, 0] + rows[:, 1] / 254)


def scaled_linear(
    xq: torch.Tensor,  # [M, K] int8 or fp8 codes
    x_scale: torch.Tensor,  # [M, 1] per token, [M, ceil(K/g)] per 1 x g group, or [1] per tensor
    wq: torch.Tensor,  # [N, K] int8 or fp8 codes
    w_scale: torch.Tensor,  # [N, 1] per channel, [1] per tensor, or [ceil(N/bn), ceil(K/bk)] per block
    bias: torch.Tensor | None,  # [N]
    x_group_size: int,  # g of the activation groups, 0 if per token/tensor
    w_block_n: int,  # bn x bk weight blocks, 0 if per channel/tensor
    w_block_k: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:  # [M, N] out_dtype
    m, k = xq.shape
    x = xq.float()
    if x_group_size > 0:
        x = x * x_scale.float().repeat_interleave(x_group_size, -1)[:, :k]
    else:
        x = x * x_scale.float()
    out = x @ dequantize_scaled_weight(wq, w_scale, w_block_n, w_block_k).T
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def dequantize_scaled_weight(wq: torch.Tensor, w_scale: torch.Tensor, w_block_n: int, w_block_k: int) -> torch.Tensor:
    """The float32 weight [N, K] of `scaled_linear`'s wq [N, K] and w_scale (per channel, tensor or block)."""
    w = wq.float()
    if w_block_n > 0:
        n, k = w.shape
        return w * w_scale.float().repeat_interleave(w_block_n, 0)[:n].repeat_interleave(w_block_k, 1)[:, :k]
    return w * w_scale.float()


def w8a8_linear(
    x: torch.Tensor,  # [M, K] fp16/bf16/fp32 activations
    weight: torch.Tensor,  # [N, K] int8 or fp8 codes
    weight_scale: torch.Tensor,  # as w_scale of `scaled_linear`
    bias: torch.Tensor | None,  # [N]
    input_scale: torch.Tensor | None,  # [1] static activation scale, None for dynamic
    fmt: str,  # activation format: "int8" | "e4m3" | "e5m2"
    act_group_size: int,  # 0: per token (or static); g > 0: 1 x g activation groups
    block_n: int,  # weight blocks, 0 if per channel/tensor
    block_k: int,
) -> torch.Tensor:  # [M, N] in x.dtype
    xq, xs = quantize_activation(x, fmt, act_group_size, input_scale)
    group = act_group_size if input_scale is None else 0
    return scaled_linear(xq, xs, weight, weight_scale, bias, group, block_n, block_k, x.dtype)


def silu_mul(y: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """A gated MLP's SiLU-and-multiply: y [..., 2I] = [gate | up] -> silu(gate) * up [..., I], in float32, rounded
    once to y's dtype. interleaved: y's gate and up alternate by 8 columns ([g 8 | u 8] per 16, quantize/mlp.py)."""
    if interleaved:
        gate, up = y.float().unflatten(-1, (-1, 2, 8)).unbind(-2)
        return (F.silu(gate) * up).flatten(-2).to(y.dtype)
    gate, up = y.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(y.dtype)


def binary_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (signs [M, K] float32 in {-1, +1}, sign(0) = +1; scales [M, 1] = mean|x| per token, 1 where 0)."""
    xf = x.float()
    scale = xf.abs().mean(-1, keepdim=True)
    return torch.where(xf >= 0, 1.0, -1.0), torch.where(scale > 0, scale, torch.ones_like(scale))


def binary_linear(
    x: torch.Tensor,  # [M, K] fp16/bf16/fp32 activations, binarized here
    qweight: torch.Tensor,  # [N, ceil(K/32)] int32, 1-bit codes
    scale: torch.Tensor,  # [N, G] float32 (G = 1 per channel)
    bias: torch.Tensor | None,  # [N]
    group_size: int,  # <= 0: per output channel
    in_features: int,
) -> torch.Tensor:  # [M, N] in x.dtype
    """W1A1 (XNOR-Net): sign(x) * mean|x| per token times sign(W) * scale. With one scale per row the
    product is popcount arithmetic: (K - 2 * popcount(xbits ^ wbits)) * x_scale * w_scale."""
    signs, x_scale = binary_activation(x)
    w = unpack_weight(qweight, 1, in_features).float() * expand_groups(scale, group_size, in_features)
    out = (signs @ w.T) * x_scale
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)


def decode_attention(
    q: torch.Tensor,  # [B, H, D]
    k: torch.Tensor,  # [B, KV, L, D], H a multiple of KV
    v: torch.Tensor,  # [B, KV, L, D]
    mask: torch.Tensor | None,  # [B, L] bool, True = attend; None: every position
    scale: float,
) -> torch.Tensor:  # [B, H, D] in q's dtype
    """softmax(q k^T * scale over the attended positions) v per query head, head h reading KV head h // (H / KV)."""
    batch, heads, dim = q.shape
    kv_heads = k.shape[1]
    qf = q.float().reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.einsum("bjgd,bjld->bjgl", qf, k.float()) * scale
    values = v.float()
    if mask is not None:
        keep = mask[:, None, None, :]
        scores = scores.masked_fill(~keep, -math.inf)
        values = values.masked_fill(~mask[:, None, :, None], 0.0)  # not finite where masked: still nothing
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:  # every position masked: zeros, not softmax's NaN
        weights = torch.where(mask.any(-1)[:, None, None, None], weights, 0.0)
    return torch.einsum("bjgl,bjld->bjgd", weights, values).reshape(batch, heads, v.shape[-1]).to(q.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, heads, D] by cos, sin [B, D] (transformers' rotate_half convention: the first and
    second halves of D pair up), in float32, rounded once to x's dtype."""
    xf, c, s = x.float(), cos.float()[:, None, :], sin.float()[:, None, :]
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * c + rotated * s).to(x.dtype)


def rope_decode_attention(
    qkv: torch.Tensor,  # [B, (H + 2 KV) * D]: one token's fused q/k/v projection, before the rotary embedding
    cos: torch.Tensor,  # [B, D]: the rotary embedding of the token's position (transformers' rotary module output)
    sin: torch.Tensor,  # [B, D]
    k_cache: torch.Tensor,  # [B, KV, L, D]: row `slot` is written here
    v_cache: torch.Tensor,  # [B, KV, L, D]: row `slot` is written here
    slot: torch.Tensor,  # [1] int64: the cache row of this token, the same for every sequence (a static cache)
    mask: torch.Tensor | None,  # [B, L] bool, True = attend (row `slot` included); None: every row up to `slot`
    scale: float,
    heads: int,  # H
) -> torch.Tensor:  # [B, H, D] in qkv's dtype
    """One decode step's attention from the unrotated projection: q and k rotated (`rotate`), k and v written into
    the caches at `slot`, then `decode_attention` over the caches. Rows after `slot` (a static cache's future
    positions) are not attended, whatever the mask says."""
    q = rotate_and_write(qkv, cos, sin, k_cache, v_cache, slot, heads)
    return decode_attention(q, k_cache, v_cache, causal_mask(mask, slot, q.shape[0], k_cache.shape[2]), scale)


def rotate_and_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, slot: torch.Tensor, heads: int) -> torch.Tensor:
    """The rotated query [B, H, D], with the rotated key and the value written into the caches at `slot` (shapes as
    in rope_decode_attention). Also the CUDA path where the rotary-and-write kernel does not run: in a compiled step
    one Inductor kernel, where transformers' step has its rotary and cache-write kernels."""
    batch, kv_heads, _, dim = k_cache.shape
    q, k, v = qkv.view(batch, heads + 2 * kv_heads, dim).split((heads, kv_heads, kv_heads), dim=1)
    k_cache.index_copy_(2, slot, rotate(k, cos, sin)[:, :, None, :])
    v_cache.index_copy_(2, slot, v[:, :, None, :])
    return rotate(q, cos, sin)


def causal_mask(mask: torch.Tensor | None, slot: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """[B, L] bool: `mask` (None: every row) and the rows up to `slot` [1]."""
    upto = (torch.arange(length, device=slot.device) <= slot)[None, :].expand(batch, length)
    return upto if mask is None else mask & upto
