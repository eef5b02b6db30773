"""8-bit row-major weights times 16-bit activations past w8_gemv's 16-32 tokens: `qtool_cuda::w8_gemm`
(csrc/w8_gemm.cu), per-channel scales. Blocks of 64 weight rows x 64 tokens share the activations through shared
memory, and k is split where the tiles alone would leave SMs idle. Two callers: W8A8 layers without activation
quantization (scaled_mm.py, the measured routes "w8_gemm" and "w8_gemm-r") and W8A16's row-major layers
(weight_only.py, ROWS_GEMM_MAX_M). Written in session 22 without a GPU: no route takes it until its GPU tests and
`dev/w8a8_sweep.py` (its two columns) have run.

The split-k counters of these kernels (and of wo_resident, the 4-bit one on the same tile) are one int32 zeros buffer
per device, which every call leaves zero: allocated on the first call outside a CUDA graph capture (inside one, the
first call returns None and the caller takes another path).
"""

from __future__ import annotations

import torch

COUNTERS = 1 << 16  # output tiles of 64 x 64 a call may have (n = 28672 at 256 tokens: 1792)
TILE = 64
_counters: dict[torch.device, torch.Tensor] = {}


# The forms of the kernel, by route name (kernels/tuning.py W8A8): activations through two staged buffers with a
# barrier pair per 128 k, or a split's activations resident in shared memory and the weights streamed barrier-free.
VARIANTS = {"w8_gemm": 0, "w8_gemm-r": 1, "w8_gemm-rp": 2}  # rp: resident, the weights prefetched into L2 ahead


def split_counters(device: torch.device, m: int, n: int) -> torch.Tensor | None:
    """The device's split-k counters for an m x n output (64 x 64 tiles), or None (too many tiles, or not yet
    allocated during a graph capture)."""
    counters = _counters.get(device)
    if counters is None:
        if torch.cuda.is_current_stream_capturing():
            return None
        counters = _counters[device] = torch.zeros(COUNTERS, dtype=torch.int32, device=device)
    return counters if -(-n // TILE) * -(-m // TILE) <= counters.numel() else None


def w8_gemm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
            splits: int = 0, variant: int = 0, blocked: bool = False) -> torch.Tensor | None:
    """y [m, n] = x [m, k] @ (weight [n, k] * scale)^T + bias -> x's dtype, scale [n] (or one value), or with
    `blocked` 128 x 128 block scales [ceil(n / 128), ceil(k / 128)] (applied to the codes in x's dtype, one rounding
    per weight); None where the kernel does not apply (k % 16, a strided weight, the counters not yet allocated
    during a graph capture). splits: 0 by the kernel's rule, else about that many k splits; variant: VARIANTS'."""
    (m, k), n = x.shape, weight.shape[0]
    counters = split_counters(x.device, m, n)
    if k % 16 or not weight.is_contiguous() or counters is None:
        return None
    flat = scale.float().reshape(-1)
    flat = flat.expand(n).contiguous() if flat.numel() == 1 and n != 1 and not blocked else flat.contiguous()
    x = x.contiguous()
    if x.data_ptr() % 16:
        x = x.clone()
    return torch.ops.qtool_cuda.w8_gemm(x, weight, flat, bias, counters, splits, variant, int(blocked))
