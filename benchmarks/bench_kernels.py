"""Weight-only CUDA kernels against bf16 F.linear, measured in the same run on the GPU.

    python benchmarks/bench_kernels.py --json bench.json [--quick]

For each shape (K x N), token count M and format (W4A16 g128 symmetric and asymmetric, W8A16 per channel,
W3 / W2): median time of bf16 F.linear and of qtool's dispatcher (kernels/weight_only.packed_linear), the
speedup against issue 19's goal (bar), the achieved bandwidth of the qtool path ((weight + scale bytes) / time)
next to the device-to-device copy bandwidth measured here, and the time of each kernel alone (wo_gemv,
wo_gemm, dequant_int + cuBLAS) to tune GEMV_MAX_M and GEMM_MAX_M. Timing: triton.testing.do_bench when
triton imports, else CUDA events; weights rotate over enough copies that they cannot sit in L2, and L2 is
flushed before each timed call. The graph columns time 20 calls captured in one CUDA graph (rotating
weights, no flush; bf16 and the layer replayed in turn, replay.interleaved_graph_ms): GPU time without the
per-call launch and dispatch cost, the issues' protocol, which the bar's ok / MISS judges where it was measured
(the eager column holds the host's dispatch: ~30-60 us per call on the Hopper GEMM's routes, so small layers at
16-32 tokens read 0.66x eager where the graph gives 1.4x).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from replay import Rotation, capture, graph_ms, interleaved_graph_ms, replay_order  # noqa: F401  (re-exported)

from qtool_kernels import binary, build, mixed_mm
from qtool_kernels.layout import EPILOGUE, PackedWeight, pack_rows, pack_weight, unpack_codes
from qtool_kernels.weight_only import GEMV_MAX_M, packed_linear, takes_rows
from quantize.primitives import pack_int

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192), (8192, 28672), (28672, 8192)]  # (K, N)
TOKENS = [1, 16, 64, 128, 512, 4096]
# 2- and 3-bit (issue 19): the native layouts of kernels/layout.py, on wo_gemv and dequant_int + cuBLAS.
FORMATS = {"w4a16-g128": (4, 128), "w4a16-g128-asym": (4, 128), "w8a16-channel": (8, -1), "w3a16-g128": (3, 128),
           "w2a16-g64": (2, 64)}
# Formats with a zero point per row and group (AWQ's default, and issue 19 asks for both): codes and zero points
# drawn over the whole signed range, so every weight is (q - z) * s with q - z in [-2^bits + 1, 2^bits - 1].
ASYMMETRIC = {"w4a16-g128-asym"}
# 1-bit formats (issue 21), each with its group size and default token counts: the W1A16 GEMV serves
# decode (m <= 8), the W1A1 GEMM batches (the bar is at M = 4096).
BINARY_FORMATS = {"w1a16": (64, [1, 2, 4, 8]), "w1a1": (-1, [256, 1024, 4096, 8192])}
ROTATE_BYTES = 512 << 20  # weight copies per case cover this much, 10x the H100's 50 MB L2


# Issue 19's goals for the weight-only formats, speedup over bf16 by tokens (M = 1 depends on the shape: bar()),
# and the floor it sets for every other M up to 8192 on 4- and 8-bit layers.
W4_GOALS = {16: 2.5, 32: 2.0, 64: 1.6, 128: 1.2, 256: 1.0}
W8_GOALS = {1: 1.75, 16: 1.6, 64: 1.2}
FLOOR = 0.95


def bar(fmt: str, m: int, k: int = 0, n: int = 0) -> float | None:
    """Issue 19's speedup goal over bf16 F.linear for `fmt` at m tokens on a K x N weight (issue 21's for 1-bit), or
    None where it sets none. W4 at one token: 2.6x on the 8192-wide shapes, 2.3x elsewhere (4096 x 4096)."""
    if fmt in BINARY_FORMATS:
        return 4.0 if (fmt, m) in (("w1a16", 1), ("w1a1", 4096)) else None
    if fmt.startswith("w4a16"):
        if m == 1:
            return 2.6 if 8192 in (k, n) else 2.3
        return W4_GOALS.get(m, FLOOR)
    if fmt.startswith(("w3a16", "w2a16")):  # decode only
        return (3.0 if fmt.startswith("w3") else 3.3) if m == 1 else None
    return W8_GOALS.get(m, FLOOR)


def make_timer():
    """fn -> median milliseconds; with L2 flushed before each call."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        return "triton.testing.do_bench", lambda fn: do_bench(fn, warmup=25, rep=100, return_mode="median")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    def events(fn, reps: int = 50) -> float:
        for _ in range(5):
            fn()
        times = []
        for _ in range(reps):
            flush.zero_()  # also gives the CPU a head start, so launch overhead is not timed
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    return "cuda events", events


def copies_for(nbytes: int) -> int:
    return max(2, math.ceil(ROTATE_BYTES / nbytes))


def packed_copies(bits: int, group_size: int, k: int, n: int, layer: bool = False,
                  asym: bool = False) -> list[PackedWeight]:
    """Rotating copies in the wo layout (the kernels' columns), or with layer=True as quantize/linear.py packs
    a layer: row-major codes where weight_only.takes_rows (8-bit symmetric per channel); with the Hopper copy
    where built. asym: with a zero point per row and group."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    groups = 1 if group_size <= 0 else -(-k // group_size)
    codes = torch.randint(lo, hi + 1, (n, k), device="cuda", dtype=torch.int8)
    scale = torch.rand(n, groups, device="cuda") / 100
    zero = torch.randint(lo, hi + 1, (n, groups), device="cuda", dtype=torch.int8) if asym else None
    if layer and takes_rows(bits, group_size, zero, None, n, k):
        p = pack_rows(codes, scale)
    else:
        p = pack_weight(codes, scale, zero, None, bits, group_size)
        codes = unpack_codes(p.qweight, bits)
    count = copies_for(p.codes_tensor.numel() * p.codes_tensor.element_size() + p.scale.numel() * 4)
    mixed = None
    wide = 4 if bits in (2, 3) else bits  # 2-3-bit layers get a 4-bit copy, as quantize/linear.py builds it
    if mixed_mm.takes(wide, p.group_size, p.k_padded) and mixed_mm.available(wide):  # the Hopper GEMM's copy
        mixed = mixed_mm.pack_mixed(codes, p.scale, p.zero, p.group_size, wide)
    del codes

    def clone(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.clone()

    return [dataclasses.replace(p, qweight=clone(p.qweight), rows=clone(p.rows), scale=p.scale.clone(),
                                zero=clone(p.zero),
                                mixed=None if mixed is None else dataclasses.replace(
                                    mixed, w=mixed.w.clone(), scale=mixed.scale.clone(), zero=mixed.zero.clone()))
            for _ in range(count)]


def tinygemm_copies(k: int, n: int, group_size: int) -> list | None:
    """Rotating copies of a random W4 weight for torch's tinygemm (`aten._weight_int4pack_mm`, torchao's
    int4 path), the anchor issue 19 asks for beside ours; None where this torch or GPU refuses it."""
    try:
        q = torch.randint(0, 16, (n, k), device="cuda", dtype=torch.int32)
        packed = ((q[:, ::2] << 4) | q[:, 1::2]).to(torch.uint8)
        w = torch.ops.aten._convert_weight_to_int4pack(packed, 8)
        sz = torch.rand(k // group_size, n, 2, device="cuda", dtype=torch.bfloat16) / 100
        count = copies_for(w.numel() * w.element_size() + sz.numel() * 2)
        return [(w.clone(), sz.clone()) for _ in range(count)]
    except (RuntimeError, NotImplementedError) as err:
        print(f"tinygemm unavailable: {str(err).splitlines()[0]}")
        return None


def _tinygemm(x: torch.Tensor, copy: tuple, group_size: int) -> torch.Tensor:
    """x [M, K] bf16 times one tinygemm copy (packed weight, scales-and-zeros [K / group, N, 2])."""
    weight, scales_and_zeros = copy
    return torch.ops.aten._weight_int4pack_mm(x, weight, group_size, scales_and_zeros)


def copy_bandwidth(timer) -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second, in GB/s."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() / ms / 1e6


def bench_tokens(timer, kernels, x: torch.Tensor, dense: Rotation, packed: Rotation, fmt: str,
                 tiny: Rotation | None = None, layer: Rotation | None = None) -> dict:
    """One row: bf16 F.linear, the qtool dispatcher, and each kernel alone, for activations x [M, K];
    packed: wo-layout copies (the kernels' columns); layer: the copies as a layer packs them (the dispatcher's;
    `packed` where None), whose row-major codes (8-bit per channel) also give w8_gemv's column;
    tiny: tinygemm copies of the same shape (W4 only), timed as an anchor."""
    bits, group_size = FORMATS[fmt]
    (m, k), p0 = x.shape, packed.items[0]
    n = p0.out_features
    gemm = bits in (4, 8)  # the tensor-core GEMMs take 4- and 8-bit weights only (2-/3-bit: wo_gemv, dequant)

    def raw(name, *extra):
        p = packed()
        return getattr(kernels, name)(x, p.qweight, p.scale, p.zero, None, bits, p.group_size, n, EPILOGUE, *extra)

    def dequant_gemm():
        p = packed()
        return F.linear(x, kernels.dequant_int(p.qweight, p.scale, p.zero, bits, p.group_size, n, x.dtype))

    t_bf16 = timer(lambda: F.linear(x, dense()))
    layer = layer or packed
    t_auto = timer(lambda: packed_linear(x, layer(), None, kernels))
    paired = interleaved_graph_ms({"bf16": lambda: F.linear(x, dense()),
                                   "qtool": lambda: packed_linear(x, layer(), None, kernels)})
    g_bf16, g_auto = paired["bf16"], paired["qtool"]
    kernel_ms = {"wo_gemv": timer(lambda: raw("wo_gemv")) if m <= 8 else None,
                 "wo_gemm": timer(lambda: raw("wo_gemm")) if gemm and m <= 1024 else None,
                 "dequant+cublas": timer(dequant_gemm)}
    # The same in CUDA graphs (the protocol's view: no launch or Python cost), with the Hopper W4A16/W8A16
    # GEMM, which is called through ctypes and so only fairly timed in a graph.
    mixed = p0.mixed is not None and m >= 8
    graph_kernel_ms = {"wo_gemv": graph_ms(lambda: raw("wo_gemv")) if m <= 8 else None,
                       "wo_gemv_lean": graph_ms(lambda: raw("wo_gemv", None, 1)) if m <= 8 else None,  # 4 blocks/SM
                       "wo_gemv_wide": graph_ms(lambda: raw("wo_gemv", None, 2)) if m <= 8 else None,  # 16 warps
                       # variant 3 (csrc/wo_stream.cu): stripes sharing x through L1, up to 32 tokens
                       "wo_gemv_stream": graph_ms(lambda: raw("wo_gemv", None, 3)) if m <= 32 else None,
                       "wo_gemm": graph_ms(lambda: raw("wo_gemm")) if gemm and 5 <= m <= 1024 else None,
                       "sm90_mixed": graph_ms(lambda: mixed_mm.mixed_linear(x, packed().mixed)) if mixed else None,
                       "sm90_mixed_nosplit": graph_ms(lambda: mixed_mm.mixed_linear(x, packed().mixed, split=1))
                       if mixed and m <= 256 else None,
                       "sm90_mixed_streamk": graph_ms(lambda: mixed_mm.mixed_linear(x, packed().mixed, split=-1))
                       if mixed and m <= 256 else None,
                       "sm90_mixed_pingpong": graph_ms(lambda: mixed_mm.mixed_linear(x, packed().mixed, pingpong=1))
                       if mixed and m <= 64 else None,
                       "dequant+cublas": graph_ms(dequant_gemm) if m >= 8 else None}
    k128 = mixed and mixed_mm.takes_ktile(128, m, p0.mixed.group, p0.k_padded)  # stages of 128 k (unmeasured)
    graph_kernel_ms["sm90_mixed_k128"] = graph_ms(lambda: mixed_mm.mixed_linear(x, packed().mixed, ktile=128)) \
        if k128 else None
    graph_kernel_ms["sm90_mixed_k128_streamk"] = graph_ms(
        lambda: mixed_mm.mixed_linear(x, packed().mixed, split=-1, ktile=128)) if k128 else None
    # 256-row tiles (variant 1, m <= 64)
    graph_kernel_ms["sm90_mixed_k128_r256"] = graph_ms(
        lambda: mixed_mm.mixed_linear(x, packed().mixed, ktile=128, variant=1)) if k128 and m <= 64 else None
    # wo_gemm_v3's variants (kernels/NOTES.md): a = default (ring of 8 chunks, 4 at M > 32), b = the other
    # ring depth, c = no split-K, d = twice the splits.
    for variant, tag in enumerate("abcd"):
        graph_kernel_ms[f"wo_gemm_v3_{tag}"] = graph_ms(lambda v=variant: raw("wo_gemm_v3", v)) \
            if gemm and m <= 64 else None
    if tiny is not None:
        graph_kernel_ms["tinygemm"] = graph_ms(lambda: _tinygemm(x, tiny(), group_size))
    if layer.items[0].rows is not None and m <= 32:
        graph_kernel_ms["w8_gemv_rows"] = graph_ms(lambda: _rows_gemv(x, layer(), kernels))
    weight_bytes = p0.qweight.numel() * 4 + p0.scale.numel() * 4 + (0 if p0.zero is None else p0.zero.numel() * 4)
    return {"K": k, "N": n, "format": fmt, "M": m, "bf16_ms": t_bf16, "qtool_ms": t_auto,
            "speedup": t_bf16 / t_auto, "bar": bar(fmt, m, k, n), "weight_bytes": weight_bytes,
            "qtool_GBps": weight_bytes / t_auto / 1e6, "bf16_GBps": 2 * n * k / t_bf16 / 1e6,
            "graph_bf16_ms": g_bf16, "graph_qtool_ms": g_auto,
            "graph_speedup": g_bf16 / g_auto if g_bf16 and g_auto else None,
            "kernel_ms": kernel_ms, "graph_kernel_ms": graph_kernel_ms, "best_kernel": min((v, key) for key, v in kernel_ms.items() if v)[1]}


def bench_case(timer, kernels, k: int, n: int, fmt: str, tokens: list[int]) -> list[dict]:
    bits, group_size = FORMATS[fmt]
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    asym = fmt in ASYMMETRIC
    packed = Rotation(packed_copies(bits, group_size, k, n, asym=asym))
    tiny = tinygemm_copies(k, n, group_size) if bits == 4 and group_size in (32, 64, 128, 256) else None
    tiny = None if tiny is None else Rotation(tiny)
    layer = Rotation(packed_copies(bits, group_size, k, n, layer=True)) \
        if not asym and takes_rows(bits, group_size, None, None, n, k) else None
    return [bench_tokens(timer, kernels, torch.randn(m, k, device="cuda", dtype=torch.bfloat16), dense, packed, fmt,
                         tiny, layer) for m in tokens]


def _rows_gemv(x: torch.Tensor, p: PackedWeight, kernels) -> torch.Tensor:
    """w8_gemv on a row-major copy (rows [N, K] int8, scale [1, N])."""
    return kernels.w8_gemv(x, p.rows, p.scale.view(-1), None, 0, 0)


def binary_copies(fmt: str, k: int, n: int) -> list:
    """Rotating copies of a random 1-bit weight in the layout of `fmt`'s kernel (qtool_kernels.binary)."""
    group_size = BINARY_FORMATS[fmt][0]
    codes = (torch.randint(0, 2, (n, k), device="cuda", dtype=torch.int8) * 2 - 1).to(torch.int8)
    scale = torch.rand(n, 1 if group_size <= 0 else -(-k // group_size), device="cuda") + 0.5
    pack = binary.pack_gemv if fmt == "w1a16" else binary.pack_gemm
    w = pack(pack_int(codes, 1), scale, group_size, k)
    del codes
    tensors = [t for t in vars(w).values() if isinstance(t, torch.Tensor)]
    count = copies_for(sum(t.numel() * t.element_size() for t in tensors))
    return [type(w)(**{key: v.clone() if isinstance(v, torch.Tensor) else v for key, v in vars(w).items()})
            for _ in range(count)]


def bench_binary_tokens(timer, kernels, x: torch.Tensor, dense: Rotation, packed: Rotation, fmt: str) -> dict:
    """One 1-bit row: bf16 F.linear against the W1A16 GEMV or W1A1 binarize + GEMM, for x [M, K]."""
    (m, k), p0 = x.shape, packed.items[0]
    n = p0.out_features
    weight_bytes = sum(t.numel() * t.element_size() for t in vars(p0).values() if isinstance(t, torch.Tensor))
    graph_parts = {}
    if fmt == "w1a16":
        def call():
            return binary.binary_gemv_linear(x, packed(), None, kernels)
        kernel_ms = {"w1_gemv": timer(call)}
    else:
        def call():
            return binary.binary_gemm_linear(x, packed(), None, kernels)
        xb = kernels.binarize(x, p0.group_size, p0.k_padded)
        parts = {"binarize": lambda: kernels.binarize(x, p0.group_size, p0.k_padded),
                 "w1a1_gemm": lambda: kernels.w1a1_gemm(*xb, p0.bits, p0.scale, p0.cterm, None, m, n, p0.group_size,
                                                        x.dtype)}
        kernel_ms = {name: timer(fn) for name, fn in parts.items()}
        # in a graph too: the eager figures hold allocation and launch (binarize's 30 us at 4096 x 8192)
        graph_parts = {name: graph_ms(fn) for name, fn in parts.items()}
    t_bf16, t_q = timer(lambda: F.linear(x, dense())), timer(call)
    g_bf16, g_q = graph_ms(lambda: F.linear(x, dense())), graph_ms(call)
    return {"K": k, "N": n, "format": fmt, "M": m, "bf16_ms": t_bf16, "qtool_ms": t_q, "speedup": t_bf16 / t_q,
            "bar": bar(fmt, m, k, n), "weight_bytes": weight_bytes, "qtool_GBps": weight_bytes / t_q / 1e6,
            "bf16_GBps": 2 * n * k / t_bf16 / 1e6, "bf16_TFLOPs": 2 * m * n * k / t_bf16 / 1e9,
            "qtool_TOPs": 2 * m * n * k / t_q / 1e9, "graph_bf16_ms": g_bf16, "graph_qtool_ms": g_q,
            "graph_speedup": g_bf16 / g_q if g_bf16 and g_q else None, "kernel_ms": kernel_ms,
            "graph_kernel_ms": graph_parts, "best_kernel": "w1_gemv" if fmt == "w1a16" else "binarize+w1a1_gemm"}


def bench_binary_case(timer, kernels, k: int, n: int, fmt: str, tokens: list[int]) -> list[dict]:
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    packed = Rotation(binary_copies(fmt, k, n))
    return [bench_binary_tokens(timer, kernels, torch.randn(m, k, device="cuda", dtype=torch.bfloat16), dense,
                                packed, fmt) for m in tokens]


def show(result: dict) -> None:
    rows = result["rows"]
    header = ["K x N", "format", "M", "bf16 us", "qtool us", "speedup", "bar", "qtool GB/s", "% copy BW",
              "graph bf16/qtool us", "graph speedup", "best kernel"]
    table = []
    for r in rows:
        judged = r["graph_speedup"] or r["speedup"]  # the issues' protocol (graph replay) where it was measured
        verdict = "" if r["bar"] is None else (" ok" if judged >= r["bar"] else " MISS")
        table.append([f"{r['K']}x{r['N']}", r["format"], str(r["M"]), f"{r['bf16_ms'] * 1e3:.1f}",
                      f"{r['qtool_ms'] * 1e3:.1f}", f"{r['speedup']:.2f}x",
                      "" if r["bar"] is None else f"{r['bar']:.2f}x{verdict}", f"{r['qtool_GBps']:.0f}",
                      f"{100 * r['qtool_GBps'] / result['copy_GBps']:.0f}",
                      "-" if r["graph_speedup"] is None else
                      f"{r['graph_bf16_ms'] * 1e3:.1f}/{r['graph_qtool_ms'] * 1e3:.1f}",
                      "-" if r["graph_speedup"] is None else f"{r['graph_speedup']:.2f}x", r["best_kernel"]])
    title = (f"{result['device']}  torch {result['torch']}  timer: {result['timer']}  "
             f"copy bandwidth {result['copy_GBps']:.0f} GB/s")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print(" | ".join(header))
        for line in table:
            print(" | ".join(line))
        return
    t = Table(title=title)
    for h in header:
        t.add_column(h, justify="left" if h in ("K x N", "format", "best kernel") else "right")
    for line in table:
        t.add_row(*line)
    Console(width=160).print(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="two shapes, M in 1, 16, 64")
    parser.add_argument("--tokens", help="comma-separated M values, replacing the default list (e.g. 1,4,5,8)")
    parser.add_argument("--formats", help=f"comma-separated subset of {', '.join([*FORMATS, *BINARY_FORMATS])}")
    parser.add_argument("--shapes", help="comma-separated KxN shapes, replacing the default list (e.g. 8192x8192)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_kernels.py needs a CUDA device")
    kernels = build.load_extension()
    if kernels is None:
        sys.exit(f"the CUDA extension is not available: {build._loader.reason}")
    torch.manual_seed(0)
    name, timer = make_timer()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "switches": build.switches(), "timer": name,
              "copy_GBps": copy_bandwidth(timer), "rows": [], "gemv_max_m": GEMV_MAX_M}
    shapes, tokens = (SHAPES[:2], TOKENS[:3]) if args.quick else (SHAPES, TOKENS)
    if args.tokens:
        tokens = [int(t) for t in args.tokens.split(",")]
    if args.shapes:
        shapes = [tuple(int(d) for d in s.lower().split("x")) for s in args.shapes.split(",")]
    for k, n in shapes:
        for fmt in args.formats.split(",") if args.formats else FORMATS:
            if fmt in BINARY_FORMATS:
                result["rows"] += bench_binary_case(timer, kernels, k, n, fmt,
                                                    tokens if args.tokens else BINARY_FORMATS[fmt][1])
            else:
                result["rows"] += bench_case(timer, kernels, k, n, fmt, tokens)
            torch.cuda.empty_cache()
            if args.json:  # after each case: a run cut short by a time limit keeps what it measured
                args.json.write_text(json.dumps(result, indent=2))
    show(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
