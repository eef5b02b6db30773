"""The wgmma W4A16 kernel (kernels/warpgroup_mm.py, csrc/sm90/wo_wgmma_sm90.cu) against the route that ships, the
CUTLASS mixed-input GEMM's default schedule and bf16 F.linear, W4 g128 at 9-128 tokens, every call's graph replayed in
turn in one process (benchmarks/replay.py): the plan's schedule and forced ones (warpgroups x split). Each schedule is
checked against float64 on the dequantized weight before any timing. Speedup against bf16 in the same process.

    python3 dev/wgmma_ab.py [--tokens 16,32,64,128] [--shapes 4096x4096,...] [--asym] [--json out.json]
                            [--stages "0 4 8"] [--tall] [--post]

--stages: the activation ring's stage counts to sweep (warpgroup_mm.STAGES); each count's plan and its one-wave
forced schedules, named "s8 w1s3" (the default's, 0, keep their names). --tall: the tall tile's one-wave schedules
too ("w1s2t": 128 rows a warpgroup, each warp two stripes; 4-bit, tiles <= 64 tokens, 1-2 warpgroups). --post: the
post-scale form's one-wave schedules too ("w1s2p": g128 scales after the MMA; tiles <= 32 tokens, 1-2 warpgroups).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
sys.path.insert(0, str(HERE.parents[1]))

SHAPES = "4096x4096,4096x14336,14336x4096,8192x8192,8192x28672,28672x8192"
FORCED = tuple((wg, split) for wg in (1, 2, 4) for split in (1, 2, 3, 4, 6, 8))  # (warpgroups, split)
TALL = False  # --tall: the tall tile's schedules too
POST = False  # --post: the post-scale form's schedules too


def with_stages(stages, fn):
    """fn, run (and captured) with warpgroup_mm.STAGES = stages."""
    from qtool_kernels import warpgroup_mm

    def call():
        saved, warpgroup_mm.STAGES = warpgroup_mm.STAGES, stages
        try:
            return fn()
        finally:
            warpgroup_mm.STAGES = saved
    return call


def h200_cell(k_pad: int, n: int, m: int, zero: bool = False) -> str | None:
    """The H200 table's CUTLASS schedule for m tokens of a 4-bit [n, k_pad] weight ("k128 t16 v1 s4"; `zero`: with
    zero points), the route a card's wgmma cell displaces; None where the table names no schedule there."""
    from qtool_kernels import tuning

    saved = list(tuning._card)
    tuning._card[:] = ["H200"]
    tuning.clear_cache()
    try:
        route = tuning.lookup("mixed", 4, k_pad, n, m)
    finally:
        tuning._card[:] = saved
        tuning.clear_cache()
    route = None if route is None else tuning.route_for(route, zero)
    return route if route is not None and isinstance(tuning.parse(route), dict) else None


def rel_err(p, m: int, schedule) -> float:
    import torch

    from qtool_kernels import warpgroup_mm
    from qtool_kernels.layout import dequantize_packed

    x = torch.randn(m, p.k_padded, device="cuda", dtype=torch.bfloat16)
    y = warpgroup_mm.wgmma_linear(x, p, None, schedule)
    ref = x.double() @ dequantize_packed(p.qweight, p.scale, p.zero, 4, p.group_size, p.out_features).double().T
    return ((y.double() - ref).norm() / ref.norm()).item()


def stage_schedules(m: int, n_pad: int, k_pad: int, asym: bool, counts, forced: bool) -> dict:
    """{name: (stages, Plan)}: each stage count's plan, and with `forced` its schedules that fit in one wave."""
    import torch

    from qtool_kernels import warpgroup_mm

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tile = next(t for t in warpgroup_mm.TILES if t >= m)
    out = {}
    for stages in counts:
        tag = "" if stages == 0 else f"s{stages} "
        measured = warpgroup_mm.device_capacity(0, 0, asym, stages)

        def capacity(t, wg, split, measured=measured):  # 0: the schedule does not launch (shared memory)
            try:
                return measured(t, wg, split)
            except RuntimeError:
                return 0
        out[f"{tag}wgmma"] = (stages, warpgroup_mm.plan(m, n_pad, k_pad, sms, capacity))
        if not forced:
            continue
        for wg, split in FORCED:
            if (tile, wg) == (128, 4) or k_pad // 64 < 4 * split:
                continue
            row_tiles = -(-n_pad // (64 * wg))
            if capacity(tile, wg, split) == 0:
                continue
            waves = -(-row_tiles // capacity(tile, wg, split))  # '*': more than one wave
            if tag and waves > 1:
                continue
            out[f"{tag}w{wg}s{split}{'*' * (waves - 1)}"] = (stages, warpgroup_mm.Plan(tile, wg, split))
            if not tag:
                out.update(form_schedules(tile, wg, split, n_pad, asym))
    return out


def form_schedules(tile: int, wg: int, split: int, n_pad: int, asym: bool) -> dict:
    """{name: (0, Plan)}: the tall tile's ("w1s2t", with --tall) and the post-scale form's ("w1s2p", with --post)
    schedule for (tile, wg, split), where the kernel exists and its grid fits one wave."""
    from qtool_kernels import warpgroup_mm

    out = {}
    for on, takes, suffix, rows in ((TALL, warpgroup_mm.takes_tall, "t", 128), (POST, warpgroup_mm.takes_post, "p", 64)):
        if not on or not takes(tile, wg):
            continue
        tall, post = suffix == "t", suffix == "p"
        try:
            cap = warpgroup_mm.max_clusters(0, tile, wg, split, 0, asym, 0, tall, post)
        except RuntimeError:
            continue
        if cap and -(-n_pad // (rows * wg)) <= cap:  # one wave only
            out[f"w{wg}s{split}{suffix}"] = (0, warpgroup_mm.Plan(tile, wg, split, tall, post))
    return out


def split_gemv(ops, x, w):
    """wo_gemv's split variant on x [m, k_padded], as weight_only.packed_linear launches it for "wo_split"."""
    from qtool_kernels import int8_planes, weight_only

    return ops.wo_gemv(x, w.qweight, w.scale, w.zero, None, w.num_bits, w.group_size, w.out_features,
                       weight_only.EPILOGUE, None, int8_planes.SPLIT_VARIANT + weight_only.PDL_STATIC_WEIGHT)


def time_shape(ops, k: int, n: int, tokens: list[int], asym: bool, forced: bool, counts=(0,)) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from bench_kernels import Rotation, copies_for, packed_copies
    from replay import interleaved_graph_ms

    from qtool_kernels import int8_planes, mixed_mm, tuning, warpgroup_mm
    from qtool_kernels.weight_only import packed_linear, route

    packed = Rotation(packed_copies(4, 128, k, n, layer=True, asym=asym))
    dense = Rotation([torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies_for(2 * n * k))])
    p0 = packed.items[0]
    rows = []
    for m in tokens:
        n_pad = p0.qweight.shape[0] * 16
        schedules = stage_schedules(m, n_pad, p0.k_padded, asym, counts, forced)
        errs = {name: with_stages(stages, lambda s=s: rel_err(p0, m, s))()  # noqa: B023
                for name, (stages, s) in schedules.items()}
        x = torch.randn(m, p0.k_padded, device="cuda", dtype=torch.bfloat16)
        xk = x[:, :k].contiguous()
        r = route(p0, m, x.dtype)
        calls = {"bf16": lambda: F.linear(xk, dense()),  # noqa: B023
                 "route": lambda: packed_linear(x, packed(), None, ops)}  # noqa: B023
        table = h200_cell(p0.k_padded, n, m, asym)
        if p0.mixed is not None:
            calls["mixed"] = lambda: mixed_mm.mixed_linear(x, packed().mixed)  # noqa: B023
            if table is not None:  # the CUTLASS schedule this kernel's cells displace: a zero-point cell's candidate
                fitted = tuning.fit(tuning.parse(table), m, p0.mixed.group, p0.k_padded)
                calls["table"] = lambda: mixed_mm.mixed_linear(x, packed().mixed, **fitted)  # noqa: B023
        if int8_planes.takes_split(p0, m, x.dtype):  # the split GEMV, which a wgmma cell displaces (session 70)
            calls["split"] = lambda: split_gemv(ops, x, packed())  # noqa: B023

        def wgmma(stages, schedule):
            return with_stages(stages, lambda: warpgroup_mm.wgmma_linear(x, packed(), None, schedule))  # noqa: B023

        for name, (stages, s) in schedules.items():
            calls[name] = wgmma(stages, s)
        plan = schedules.get("wgmma", next(iter(schedules.values())))[1]
        ms = interleaved_graph_ms(calls)
        bf16 = ms["bf16"]
        row = {"K": k, "N": n, "M": m, "asym": asym, "route": r if isinstance(r, str) else "hopper " + str(r),
               "table": table, "plan": vars(plan), "err": errs,
               "us": {name: None if t is None else t * 1e3 for name, t in ms.items()},
               "speedup": {name: None if not t else bf16 / t for name, t in ms.items() if name != "bf16"}}
        rows.append(row)
        cells = "  ".join(f"{name} {v:5.2f}x" for name, v in row["speedup"].items() if v)
        print(f"{k:>5} x {n:<5} M={m:<3} {'asym' if asym else 'sym '} bf16 {bf16 * 1e3:6.1f} us  {cells}"
              f"  [{row['route']}; plan {plan}] err max {max(errs.values()):.1e}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="16,24,32,48,64,96,128")
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--asym", action="store_true", help="zero points too")
    parser.add_argument("--no-forced", action="store_true", help="the plan's schedule only")
    parser.add_argument("--json", default=None)
    parser.add_argument("--stages", default="0", help="stage counts, space-separated; 0: the default")
    parser.add_argument("--tall", action="store_true", help="also the tall tile's one-wave schedules ('w1s2t')")
    parser.add_argument("--post", action="store_true", help="also the post-scale form's one-wave schedules ('w1s2p')")
    args = parser.parse_args()
    import torch

    from qtool_kernels import build, warpgroup_mm

    ops = build.load_extension()
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)
    assert warpgroup_mm.available(), f"libqtool_sm90_wgmma: {warpgroup_mm.sm90.wgmma.reason}"
    tokens = [int(t) for t in args.tokens.split(",")]
    counts = [warpgroup_mm.parse_stages(c) for c in args.stages.split()]
    global TALL, POST
    TALL, POST = args.tall, args.post
    rows = []
    for shape in args.shapes.split(","):
        k, n = (int(v) for v in shape.split("x"))
        for asym in (False, True) if args.asym else (False,):
            rows += time_shape(ops, k, n, tokens, asym, not args.no_forced, counts)
            torch.cuda.empty_cache()
            if args.json:  # after every shape: a call cut off by its time limit keeps what it measured
                Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows},
                                                      indent=1))


if __name__ == "__main__":
    main()
