"""Split-K reductions under each setting of their knobs: the Hopper GEMMs' (csrc/sm90/sm90_scheduler.cuh:
QTOOL_GEMM_SPLIT_ADD=ordered, the default since session 43, or chain / any; QTOOL_GEMM_LOCKS=keep, flags kept zeroed
between launches, no memset per call, under chain / any) and wo_gemm's (QTOOL_WO_SPLIT=ordered: partials in slots,
the last split adds them, one launch; =kept, the default since session 52: the atomic adds into sums kept zero
between launches; =atomic: into sums zeroed per call; =fused: kept sums, and the last split of a tile finishes it).
The knobs are read once per process, so each setting runs in a child process (this file run as a script), with a time
limit: a flag or counter left non-zero by one launch would hang (or corrupt) the next one.

Each child runs, for the three Hopper libraries (mixed-input W4 / W8, W8A8 int8 / FP8, FP8 block), split-K with and
without "big" splits (k tiles not divisible by the split count), stream-K and the automatic split, and wo_gemm at
split shapes (4- and 8-bit, groups and per channel, bias and SiLU), each twice eagerly and twice by replaying one
CUDA graph, on fresh random inputs. Bounds: relative Frobenius error <= 1e-2 against float64 (as the kernels' own
tests); every run bit-identical to the first where the setting adds in a fixed order (CUTLASS's chain, ordered;
wo_gemm only when ordered: its default adds with atomics); and where the flags or counters are kept, one eager call
is one kernel and no memset (the torch profiler's list).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SETTINGS = {
    "default": {},  # the Hopper libraries' ordered adds (session 43), wo_gemm's atomic adds into kept sums
    "wo-atomic": {"QTOOL_WO_SPLIT": "atomic"},  # wo_gemm's atomic adds into sums zeroed per call (before session 52)
    "chain": {"QTOOL_GEMM_SPLIT_ADD": "chain"},
    "chain-keep": {"QTOOL_GEMM_SPLIT_ADD": "chain", "QTOOL_GEMM_LOCKS": "keep"},
    "keep-any": {"QTOOL_GEMM_LOCKS": "keep", "QTOOL_GEMM_SPLIT_ADD": "any"},
    "ordered": {"QTOOL_GEMM_SPLIT_ADD": "ordered", "QTOOL_WO_SPLIT": "ordered"},
    # wo_gemm's atomic adds into kept sums that finish_split_k leaves zero (no at::zeros per call: the default),
    # named and under PDL (session 50's A/B knobs)
    "wo-kept": {"QTOOL_WO_SPLIT": "kept"},
    "wo-kept-pdl": {"QTOOL_WO_SPLIT": "kept", "QTOOL_WO_GEMM_PDL": "1"},
    # ... and the last split of each tile finishing it (one launch, atomic adds)
    "wo-fused": {"QTOOL_WO_SPLIT": "fused"},
    "wo-fused-pdl": {"QTOOL_WO_SPLIT": "fused", "QTOOL_WO_GEMM_PDL": "1"},
    # the tile grid padded to whole swizzle groups (csrc/sm90/sm90_common.cuh, TileOrder): more tiles, more flags
    "ordered-swizzled": {"QTOOL_GEMM_SPLIT_ADD": "ordered", "QTOOL_WO_SPLIT": "ordered", "QTOOL_GEMM_SWIZZLE": "8",
                         "QTOOL_GEMM_RASTER": "n"},
    # PDL with the next grid released from the prologue and every GEMM's weights prefetched before the wait
    # (session 45's A/B knobs): the same reductions, the same bits
    "pdl-early-prefetch": {"QTOOL_GEMM_PDL": "1", "QTOOL_GEMM_EARLY_RELEASE": "1",
                           "QTOOL_GEMM_PREFETCH": "1073741824"},
}


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double().cpu(), ref.double().cpu()
    return float((y - ref).norm() / ref.norm())


def _launches(fn, *args) -> dict[str, int]:
    """The memsets, kernels and ATen fills (at::zeros) one eager call of fn(*args) puts on the GPU (torch
    profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(*args)
        torch.cuda.synchronize()
    names = [e.name.lower() for e in prof.events() if e.device_type.name == "CUDA"]
    memsets = sum("memset" in name for name in names)
    fills = sum("fill" in name or "elementwise" in name for name in names)
    return {"memsets": memsets, "kernels": len(names) - memsets, "fills": fills}


def _runs(fn, *args) -> list[torch.Tensor]:
    """fn(*args) twice eagerly, then one CUDA graph of it replayed twice (the last call's flags must be zero for
    the next)."""
    outs = [fn(*args).clone(), fn(*args).clone()]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = fn(*args)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        outs.append(y.clone())
    return outs


# (name, outputs of four runs, float64 reference, launches of one eager call)
Case = tuple[str, list[torch.Tensor], torch.Tensor, dict[str, int]]


def _mixed_cases() -> list[Case]:
    from qtool_kernels import mixed_mm
    from qtool_kernels.layout import dequantize_packed, pack_weight, unpack_codes

    cases = []
    for bits in (4, 8):
        if not mixed_mm.available(bits):
            continue
        for k, n, m, split in [(4096, 1024, 16, 4), (4096, 1000, 33, 3), (2048, 768, 64, -1), (4096, 512, 5, 0)]:
            g = torch.Generator(device="cuda").manual_seed(k + n + m + bits)
            lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
            codes = torch.randint(lo, hi, (n, k), device="cuda", dtype=torch.int8, generator=g)
            scale = torch.rand(n, k // 128, device="cuda", generator=g) / 50 + 1e-3
            zero = torch.randint(lo, hi, (n, k // 128), device="cuda", dtype=torch.int8, generator=g)
            p = pack_weight(codes, scale, zero, None, bits, 128)
            mixed = mixed_mm.pack_mixed(unpack_codes(p.qweight, bits), p.scale, p.zero, p.group_size, bits)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
            ref = x.double() @ dequantize_packed(p.qweight, p.scale, p.zero, bits, 128, n, torch.float64)[:, :k].T
            outs = [y[:, :n] for y in _runs(mixed_mm.mixed_linear, x, mixed, split)]
            cases.append((f"w{bits} k{k} n{n} m{m} split{split}", outs, ref,
                          _launches(mixed_mm.mixed_linear, x, mixed, split)))
    return cases


def _w8a8_cases() -> list[Case]:
    from qtool_kernels import block_mm, build, reference, scaled_mm, sm90

    kernels = build.load_extension()
    cases = []
    if sm90.load():
        for fmt in ("int8", "e4m3"):
            k, n, m = 4096, 1024, 64
            g = torch.Generator(device="cuda").manual_seed(n + m + len(fmt))
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
            w = (torch.randint(-127, 128, (n, k), device="cuda", generator=g).to(torch.int8) if fmt == "int8" else
                 (torch.randn(n, k, device="cuda", generator=g) * 40).to(torch.float8_e4m3fn))
            ws = torch.rand(n, device="cuda", generator=g) / 100 + 1e-3
            xq, xs = kernels.act_quant(x, fmt, 0, None)
            ref = reference.scaled_linear(xq.cpu(), xs.cpu(), w.cpu(), ws.cpu().view(-1, 1), None, 0, 0, 0,
                                          torch.float64)
            xs_flat = xs.reshape(-1).contiguous()
            args = (xq, w, xs_flat, ws, None, torch.bfloat16, scaled_mm.SM90_CONFIGS["split"])
            outs = _runs(kernels.sm90_scaled_mm, *args)
            cases.append((f"{fmt} split k{k} n{n} m{m}", outs, ref, _launches(kernels.sm90_scaled_mm, *args)))
    if block_mm.available():
        for config, split in [("block-split", 3), ("block-split", -1), ("block-swap", 4), ("block-swap", 0)]:
            k, n, m = 4096, 1024, 20  # rows a multiple of 4: block_linear pads no rows, so the call is the GEMM
            g = torch.Generator(device="cuda").manual_seed(n + m + split)
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
            w = (torch.randn(n, k, device="cuda", generator=g) * 40).to(torch.float8_e4m3fn)
            ws = torch.rand(n // 128, k // 128, device="cuda", generator=g) / 100 + 1e-3
            xq, xs = kernels.act_quant(x, "e4m3", 128, None)
            ref = reference.scaled_linear(xq.cpu(), xs.cpu(), w.cpu(), ws.cpu(), None, 128, 128, 128, torch.float64)
            args = (xq, xs, w, ws, block_mm.CONFIGS[config], split)
            outs = _runs(block_mm.block_linear, *args)
            cases.append((f"{config} split{split} k{k} n{n} m{m}", outs, ref, _launches(block_mm.block_linear, *args)))
    return cases


def _wo_gemm_cases() -> list[Case]:
    from conftest import random_qtensor
    from qtool_kernels import build
    from qtool_kernels.layout import pack_weight

    kernels = build.load_extension()
    cases = []
    for bits, group, symmetric, k, n, m in [(4, 128, True, 4096, 200, 16), (4, 32, False, 4096, 1536, 33),
                                            (8, -1, True, 4096, 200, 9), (4, 128, False, 14336, 512, 64)]:
        qt, _, dense = random_qtensor(bits, group, symmetric, False, k, n, seed=k + n + m)
        p = pack_weight(qt.values, qt.scale, qt.zero_point, None, bits, group)
        bias = torch.randn(n, device="cuda")
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        xp = torch.nn.functional.pad(x, (0, p.k_padded - k))
        ref = torch.nn.functional.silu(x.double() @ dense.T + bias.double())
        args = (xp, p.qweight, p.scale, p.zero, bias, bits, p.group_size, n, "silu")
        outs = _runs(kernels.wo_gemm, *args)
        cases.append((f"wo_gemm w{bits} g{group} k{k} n{n} m{m}", outs, ref, _launches(kernels.wo_gemm, *args)))
    return cases


def child() -> None:
    """Run every case under this process's knobs; print one JSON line per case, with whether its adds run in a
    fixed order under them."""
    import quantize  # noqa: F401  (the package's import path sets up qtool_kernels)

    env = os.environ.get
    ordered = env("QTOOL_GEMM_SPLIT_ADD") not in ("chain", "any")  # ordered unless set otherwise
    # (fixed order, one launch and no memset expected) for the CUTLASS cases, then for wo_gemm's
    cutlass = (env("QTOOL_GEMM_SPLIT_ADD") != "any", env("QTOOL_GEMM_LOCKS") == "keep" or ordered)
    mode = env("QTOOL_WO_SPLIT")
    wo = (mode == "ordered", mode in ("ordered", "fused"))  # (fixed order, one launch)
    kept = mode != "atomic"  # no at::zeros before wo_gemm's launch (kept sums unless QTOOL_WO_SPLIT=atomic)
    cases = ([(c, (*cutlass, cutlass[1])) for c in [*_mixed_cases(), *_w8a8_cases()]]
             + [(c, (*wo, kept)) for c in _wo_gemm_cases()])
    for (name, outs, ref, launches), (fixed, single, no_fill) in cases:
        print(json.dumps({"case": name, "errors": [_rel_err(y, ref) for y in outs], "fixed_order": fixed,
                          "identical": all(torch.equal(y, outs[0]) for y in outs[1:]),
                          "single_launch": single, "no_fill": no_fill, **launches}), flush=True)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_split_reduction_under_each_knob(kernels, setting):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the CUTLASS GEMMs are for Hopper (sm_90)")
    env = {**os.environ, **SETTINGS[setting]}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "child"], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) >= 8, done.stdout[-2000:] + done.stderr[-2000:]  # the mixed W4 and wo_gemm cases at least
    for r in results:
        assert max(r["errors"]) <= 1e-2, (setting, r)
        if r["fixed_order"]:
            assert r["identical"], (setting, r)
        if r["single_launch"]:  # kept flags / counters: no memset, and wo_gemm without its finishing kernel
            assert r["memsets"] == 0 and r["kernels"] == 1, (setting, r)
        if r["no_fill"]:  # wo_gemm's kept sums (or slots): nothing zeroed per call
            assert r["memsets"] == 0 and r["fills"] == 0 and r["kernels"] <= 2, (setting, r)



def test_wo_switches_reload_in_process(kernels, monkeypatch):
    """build.reload_switches (dev/step_ab.py's env variants): wo_gemm follows QTOOL_WO_SPLIT set after its first
    call, in both directions, with the same bound; the process's own setting is restored at the end."""
    from qtool_kernels import build

    before = os.environ.get("QTOOL_WO_SPLIT")
    # (setting, kernels of one eager call, ATen fills): the default (kept sums) GEMM and finish; atomic: a fill, the
    # GEMM and the finish; fused: the GEMM alone; then the default again
    expected = [("", 2, 0), ("atomic", 3, 1), ("fused", 1, 0), ("kept", 2, 0), ("", 2, 0)]
    try:
        for mode, launches, fills in expected:
            monkeypatch.setenv("QTOOL_WO_SPLIT", mode)
            build.reload_switches()
            (name, outs, ref, counted), = [c for c in _wo_gemm_cases() if " m16" in c[0]]
            assert max(_rel_err(y, ref) for y in outs) <= 1e-2, (mode, name)
            assert (counted["kernels"], counted["fills"], counted["memsets"]) == (launches, fills, 0), (mode, counted)
    finally:
        monkeypatch.undo()
        build.reload_switches()
        assert os.environ.get("QTOOL_WO_SPLIT") == before


if __name__ == "__main__" and sys.argv[1:] == ["child"]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages
    child()
