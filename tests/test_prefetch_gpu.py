"""The Hopper GEMMs' L2 prefetch of each CTA's weights (kernels/sm90.py `set_prefetch`, csrc/sm90/sm90_prefetch.cuh)
and the early release of the next grid under PDL.

A prefetch only moves bytes into L2 ahead of the pipeline's own loads: it must not change a single output bit, at
any cap (smaller than one 16-k run of a tile's rows, part of a unit, more than the whole unit), in every schedule
(split-K auto / fixed / uneven, stream-K, none, 256-row tiles, clusters, ping-pong), with a ragged row count (the
last tile's rows fewer than the tile's) and groups that do not divide the unit's k range; likewise the W8A8 and FP8
block GEMMs, whose [n, k] weight rows are CUTLASS's B (or its A, swapped).
Every output is also held to 1e-2 relative (Frobenius) of float64, like the library's own tests.

Early release (QTOOL_GEMM_EARLY_RELEASE=1 under QTOOL_GEMM_PDL=1) lets the next GEMM start before this one has
written its output; its grid-dependency wait must still hold every read of that output until then: a chain of
GEMMs, each reading the one before, must give the bits it gives with a synchronize between them. On CPU only the
argument check runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# qtool_kernels is imported inside the tests: this file also runs as a child script (below), before its path is set.
gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0),
                         reason="the CUTLASS GEMMs are for Hopper (sm_90)")


def test_set_prefetch_names_bad_values():
    from qtool_kernels import sm90

    with pytest.raises(ValueError, match="nbytes=-1"):
        sm90.set_prefetch(-1)
    with pytest.raises(ValueError, match="nbytes=2.5"):
        sm90.set_prefetch(2.5)


def test_launch_bits_follow_the_module_settings(monkeypatch):
    from qtool_kernels import mixed_mm

    small, large = 4096 * 4096, 28672 * 8192
    assert mixed_mm.launch_bits(mixed_mm.PDL_MAX_M_SMALL + 1, small) == 0
    assert mixed_mm.launch_bits(mixed_mm.PDL_MAX_M + 1, large) == 0
    monkeypatch.setattr(mixed_mm, "PDL_MAX_M", 128)
    monkeypatch.setattr(mixed_mm, "PDL_MAX_M_SMALL", 256)
    assert [mixed_mm.launch_bits(m, small) for m in (1, 128, 256, 257)] == [1, 1, 1, 0]
    assert [mixed_mm.launch_bits(m, large) for m in (1, 128, 129)] == [1, 1, 0]
    monkeypatch.setattr(mixed_mm, "PDL_MAX_M", 0)  # QTOOL_MIXED_PDL_MAX_M=0: no call under PDL
    monkeypatch.setattr(mixed_mm, "PDL_MAX_M_SMALL", 0)
    assert (mixed_mm.launch_bits(1, small), mixed_mm.launch_bits(1, large)) == (0, 0)
    monkeypatch.setattr(mixed_mm, "PDL_MAX_M", 64)
    assert (mixed_mm.launch_bits(64, large), mixed_mm.launch_bits(65, small)) == (1, 0)
    monkeypatch.setattr(mixed_mm, "EARLY_RELEASE", True)
    assert (mixed_mm.launch_bits(1, large), mixed_mm.launch_bits(65, large)) == (3, 0)


@pytest.fixture
def sm90():
    """kernels/sm90.py, its prefetch turned off again after the test."""
    from qtool_kernels import sm90

    yield sm90
    sm90.set_prefetch(0)


# (tokens, split, ktile, variant, ping-pong): the routes' schedules at 9-64 tokens, ping-pong, a large batch
SCHEDULES = [(16, 0, 128, 1, 0), (16, 1, 128, 1, 0), (16, 4, 128, 0, 0), (9, 3, 64, 0, 0), (64, -1, 64, 0, 0),
             (64, 0, 64, 2, 0), (32, 0, 64, 0, 1), (300, 0, 64, 0, 0)]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("m,split,ktile,variant,pingpong", SCHEDULES)
@pytest.mark.parametrize("bits,symmetric", [(4, True), (4, False), (8, True)])
def test_prefetch_moves_no_bit(kernels, sm90, m, split, ktile, variant, pingpong, bits, symmetric):
    from qtool_kernels import mixed_mm
    from qtool_kernels.layout import dequantize_packed, pack_weight, unpack_codes

    assert mixed_mm.available(bits), f"the {bits}-bit library did not build or load"
    g = torch.Generator(device="cuda").manual_seed(m + split + ktile + variant + pingpong + bits)
    n, k, group = 2960, 3072, 128  # 2960 rows: the last 128-row tile has 16 (the last 256-row tile 144)
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    codes = torch.randint(lo, hi, (n, k), device="cuda", dtype=torch.int8, generator=g)
    scale = torch.rand(n, k // group, device="cuda", generator=g) / 50 + 1e-3
    zero = None if symmetric else torch.randint(lo, hi, (n, k // group), device="cuda", dtype=torch.int8, generator=g)
    p = pack_weight(codes, scale, zero, None, bits, group)
    mixed = mixed_mm.pack_mixed(unpack_codes(p.qweight, bits), p.scale, p.zero, p.group_size, bits)
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    ref = x.double() @ dequantize_packed(p.qweight, p.scale, p.zero, bits, group, n, torch.float64)[:, :k].T

    def run(cap: int) -> torch.Tensor:
        sm90.set_prefetch(cap)
        y = mixed_mm.mixed_linear(x, mixed, split=split, pingpong=pingpong, ktile=ktile, variant=variant)[:, :n]
        y = y.clone()
        torch.cuda.synchronize()
        return y

    first = run(0)
    err = float((first.double() - ref).norm() / ref.norm())
    assert torch.isfinite(first).all() and err <= 1e-2, err
    for cap in (256, 24 << 10, sm90.PREFETCH_MAX):
        assert torch.equal(run(cap), first), cap  # stream-K too: the same schedule, so the same split points


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("config", ["skinny", "narrow", "split", "large", "pingpong", "skinny-pair"])
@pytest.mark.parametrize("fmt", ["int8", "e4m3"])
def test_w8a8_prefetch_moves_no_bit(kernels, sm90, config, fmt):
    """The W8A8 GEMMs' prefetch (the [n, k] rows of each CTA's first tile): 72 tokens, 3000 rows (ragged tiles)."""
    from conftest import w8a8_problem
    from qtool_kernels import scaled_mm

    assert sm90.load(), sm90.reason()
    g = torch.Generator(device="cuda").manual_seed(len(config) + len(fmt))
    xq, xs, w, ws, _, ref = w8a8_problem(kernels.act_quant, fmt, 72, 3000, 2048, g)
    runs = []
    for cap in (0, 4096, sm90.PREFETCH_MAX):
        sm90.set_prefetch(cap)
        runs.append(torch.ops.qtool_cuda.sm90_scaled_mm(xq, w, xs, ws, None, torch.bfloat16,
                                                        scaled_mm.SM90_CONFIGS[config]).clone())
    err = float((runs[0].double().cpu() - ref).norm() / ref.norm())
    assert torch.isfinite(runs[0]).all() and err <= 1e-2, err
    assert all(torch.equal(y, runs[0]) for y in runs[1:])


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("config,split", [("block-narrow-overlap", 0), ("block-skinny", 0), ("block-large", 0),
                                          ("block-split", 3), ("block-swap", 4), ("block-swap", 0)])
def test_block_prefetch_moves_no_bit(kernels, sm90, config, split):
    """FP8 block GEMMs, the weights as CUTLASS's B or (swapped) its A."""
    from qtool_kernels import block_mm, reference

    assert block_mm.available(), "libqtool_sm90_block did not build or load"
    g = torch.Generator(device="cuda").manual_seed(len(config) + split)
    m, n, k = 40, 3000, 2048
    x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
    w = (torch.randn(n, k, device="cuda", generator=g) * 40).to(torch.float8_e4m3fn)
    ws = torch.rand(-(-n // 128), k // 128, device="cuda", generator=g) / 100 + 1e-3
    xq, xs = kernels.act_quant(x, "e4m3", 128, None)
    ref = reference.scaled_linear(xq.cpu(), xs.cpu(), w.cpu(), ws.cpu(), None, 128, 128, 128, torch.float64)
    runs = []
    for cap in (0, 4096, sm90.PREFETCH_MAX):
        sm90.set_prefetch(cap)
        runs.append(block_mm.block_linear(xq, xs, w, ws, block_mm.CONFIGS[config], split).clone())
    err = float((runs[0].double().cpu() - ref).norm() / ref.norm())
    assert torch.isfinite(runs[0]).all() and err <= 1e-2, err
    assert all(torch.equal(y, runs[0]) for y in runs[1:])


# Knobs read once per process (csrc/sm90/sm90_common.cuh): each setting runs the chain in a child process.
CHAIN_SETTINGS = {
    "pdl-early": {"QTOOL_GEMM_PDL": "1", "QTOOL_GEMM_EARLY_RELEASE": "1"},
    "per-call": {"CHAIN_PER_CALL": "1"},  # mixed_mm.PDL_MAX_M / EARLY_RELEASE: the launch bits of each call
    # wo_gemm under PDL, its first weights loaded before the wait (ordered splits: the same bits on every run)
    "wo-gemm-pdl": {"QTOOL_WO_GEMM_PDL": "1", "QTOOL_WO_SPLIT": "ordered", "QTOOL_GEMM_PDL": "1"},
    "pdl-early-prefetch": {"QTOOL_GEMM_PDL": "1", "QTOOL_GEMM_EARLY_RELEASE": "1", "QTOOL_GEMM_PREFETCH": "1073741824"},
}


def chain_layers(k: int, g: torch.Generator) -> list:
    """Four square layers (4, 8, 4, 8 bits, g128), scaled so that each output stays the size of its input:
    [(PackedWeight, float64 dense [k, k])]."""
    from qtool_kernels.layout import dequantize_packed, pack_weight

    layers = []
    for bits in (4, 8, 4, 8):
        lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
        codes = torch.randint(lo, hi, (k, k), device="cuda", dtype=torch.int8, generator=g)
        scale = (torch.rand(k, k // 128, device="cuda", generator=g) + 0.5) / (hi * 45)
        p = pack_weight(codes, scale, None, None, bits, 128)
        layers.append((p, dequantize_packed(p.qweight, p.scale, p.zero, bits, 128, k, torch.float64)[:, :k]))
    torch.cuda.synchronize()  # the weights are written before any launch that may read them early
    return layers


def compare_chain(name: str, x: torch.Tensor, steps: list, dense: list) -> None:
    """Run the steps (each y -> next y) back to back, then with a synchronize between them; print whether the bits
    match and the error against float64."""
    def chain(sync: bool) -> torch.Tensor:
        y = x
        for step in steps:
            y = step(y)
            if sync:
                torch.cuda.synchronize()
        return y

    overlapped = chain(False).clone()  # first: on fresh memory, where a read too early finds other bytes
    torch.cuda.synchronize()
    serial = chain(True)
    ref = x.double()
    for w in dense:
        ref = ref @ w.T
    err = float((serial.double() - ref).norm() / ref.norm())
    print(json.dumps({"chain": name, "m": x.shape[0], "identical": bool(torch.equal(overlapped, serial)),
                      "error": err}), flush=True)


def chain_child() -> None:
    """Four GEMMs, each reading the one before's output, launched back to back under this process's knobs (PDL, the
    next grid released from each one's prologue, weights loaded or prefetched before the wait), against the same
    with a synchronize between them (no overlap possible): the mixed-input GEMM in four schedules, and wo_gemm
    where QTOOL_WO_GEMM_PDL is set."""
    import quantize  # noqa: F401  (the package's import path sets up qtool_kernels)
    from qtool_kernels import build, mixed_mm
    from qtool_kernels.layout import unpack_codes

    if os.environ.get("CHAIN_PER_CALL") == "1":
        mixed_mm.PDL_MAX_M, mixed_mm.EARLY_RELEASE = 1 << 30, True
    k = 2048  # square: each output is the next input
    g = torch.Generator(device="cuda").manual_seed(45)
    layers = chain_layers(k, g)
    dense = [d for _, d in layers]
    mixed = [mixed_mm.pack_mixed(unpack_codes(p.qweight, p.num_bits), p.scale, p.zero, p.group_size, p.num_bits)
             for p, _ in layers]
    torch.cuda.synchronize()
    schedules = [dict(split=0), dict(split=1, ktile=128, variant=1), dict(split=3), dict(split=-1)]
    kernels = build.load_extension()
    for m in (16, 64):
        x = torch.randn(m, k, device="cuda", generator=g, dtype=torch.bfloat16)
        compare_chain("mixed", x, [lambda y, w=w, s=s: mixed_mm.mixed_linear(y, w, **s)
                                   for w, s in zip(mixed, schedules, strict=True)], dense)
        if os.environ.get("QTOOL_WO_GEMM_PDL") == "1":
            compare_chain("wo_gemm", x, [lambda y, p=p: kernels.wo_gemm(y, p.qweight, p.scale, p.zero, None,
                                                                        p.num_bits, p.group_size, k, "none")
                                         for p, _ in layers], dense)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("setting", list(CHAIN_SETTINGS))
def test_early_release_keeps_dependent_reads_after_the_writes(kernels, setting):
    env = {**os.environ, **CHAIN_SETTINGS[setting]}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "chain"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    expected = 4 if "QTOOL_WO_GEMM_PDL" in CHAIN_SETTINGS[setting] else 2
    assert len(results) == expected, done.stdout[-2000:] + done.stderr[-2000:]
    for r in results:
        assert r["identical"] and r["error"] <= 2e-2, (setting, r)  # four bf16 roundings of the chain


if __name__ == "__main__" and sys.argv[1:] == ["chain"]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages
    chain_child()
