"""Where one steady-state decode step's GPU time goes on the 8B shape: kernels of single-token steps only.

`qtool bench --profile` profiles a whole decode (the prompt's prefill spread over the tokens). This profiles N
compiled single-token steps after warm-up: GPU time per step by kernel (grouped by a short name), how many kernels
a step launches, and the step's wall time, so wall - busy is the idle time between kernels. One process per
setting. The step compiles as `qtool bench` compiles it (quantize/bench.py decode_compile_options: Inductor's kernels
with PDL unless QTOOL_INDUCTOR_PDL=0; session 24 ran it with TORCHINDUCTOR_ENABLE_PDL=0 / 1 before that default):

    python3 dev/decode_profile.py --scheme w4a16 --json $OUT/profile_w4.json
    QTOOL_INDUCTOR_PDL=0 python3 dev/decode_profile.py --scheme w4a16 --json $OUT/profile_w4_nopdl.json

--roles also times each quantized layer role (q/k/v, o, gate/up, down: the distinct (K, N) of the blocks' layers)
outside the model, over the model's own layers (every block's copy, so no weight repeats), in one CUDA graph each:
back to back (as the layer tables time them: each GEMV may start during the last one's tail) and with a one-element
kernel between the calls (as in the model, where Inductor's kernels sit between the GEMVs); beside them the role's
kernel time per call inside the profiled steps (the step's GEMV kernels labelled by their order in a block, where
every block launches the same number). Run it with QTOOL_INDUCTOR_PDL=0, so that no kernel in the step starts
early and each kernel's span is its own time. Session 31's question (kernels/NOTES.md): are the ~250 us per W4
step between the layer tables' sum and the profile's GEMV time a per-launch ramp the tables hide?
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_kernels import Rotation, graph_ms  # noqa: E402

from quantize.bench import _next_token, decode_compile_options, loop_cache
from quantize.cli_tools import _fuse
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import preset
from quantize.shapes import random_model


def short_name(name: str) -> str:
    """A kernel's name without template arguments and parameter lists, so instantiations group together."""
    name = re.sub(r"<.*", "", name)
    name = re.sub(r"\(.*", "", name)
    return name.replace("void ", "")[:80]


def steps(model, batch: int, prompt_len: int, count: int):
    """A closure running `count` compiled single-token steps after a prefill of `prompt_len` random tokens."""
    device = torch.device("cuda")
    cache = loop_cache(model, prompt_len + count + 1)  # as `qtool bench`'s loop: rotary and write in the attention
    step = torch.compile(_next_token, options=decode_compile_options())
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=device)

    def prefill():
        cache.reset()
        return _next_token(model, prompt, cache, torch.arange(prompt_len, device=device))

    def run(token):
        position = torch.tensor([prompt_len], device=device)
        for _ in range(count):
            token = step(model, token, cache, position).clone()
            position += 1
        return token

    return prefill, run


def role_layers(model) -> dict[tuple[int, int], list]:
    """(K, N) -> the QuantLinear of that shape in each block, in block order (the roles of a block's GEMVs)."""
    from quantize.linear import QuantLinear

    roles: dict[tuple[int, int], list] = {}
    for block in model.model.layers:
        for m in block.modules():
            if isinstance(m, QuantLinear):
                roles.setdefault((m.in_features, m.out_features), []).append(m)
    return roles


def graph_us(calls) -> float:
    """Median GPU time per call of `calls` (closures), all captured in one CUDA graph (bench_kernels.graph_ms)."""
    for call in calls:  # every layer's first call outside the capture (layouts, allocations)
        call()
    rotation = Rotation(calls)
    ms = graph_ms(lambda: rotation()(), reps=len(calls))
    return float("nan") if ms is None else ms * 1000


def time_roles(model, batch: int, gemv_events: list[float], count_per_step: float) -> dict:
    """Each role's GEMV time back to back, with a small kernel between calls, and inside the model (module docstring)."""
    roles = role_layers(model)
    per_block = len(roles)
    out = {}
    blocks = len(model.model.layers)
    in_model = {}
    if count_per_step == blocks * per_block and gemv_events:  # label the step's GEMVs by their place in a block
        for i, us in enumerate(gemv_events):
            in_model.setdefault(i % per_block, []).append(us)
    flag = torch.zeros(1, device="cuda")
    for place, ((k, n), layers) in enumerate(roles.items()):
        x = torch.randn(batch, 1, k, device="cuda", dtype=torch.bfloat16)
        plain = [lambda m=m, x=x: m(x) for m in layers]
        spaced = [c for m in layers for c in (lambda m=m, x=x: m(x), lambda: flag.add_(1))]
        row = {"K": k, "N": n, "layers": len(layers), "back_to_back_us": round(graph_us(plain), 2),
               "spaced_us": round(graph_us(spaced) * 2 - graph_us([lambda: flag.add_(1)] * len(layers)), 2)}
        if place in in_model:
            row["in_model_us"] = round(statistics.mean(in_model[place]), 2)
        out[f"{k}x{n}"] = row
        print(f"role {k:>5} x {n:<5}  back to back {row['back_to_back_us']:7.2f} us  spaced {row['spaced_us']:7.2f} us"
              + (f"  in the model {row['in_model_us']:7.2f} us" if "in_model_us" in row else ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="llama-8b")
    ap.add_argument("--scheme", default="w4a16", help="a preset, or bf16 for the unquantized model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", required=True)
    ap.add_argument("--roles", action="store_true", help="time each layer role outside the model too (docstring)")
    args = ap.parse_args()
    model = random_model(args.config, dtype=torch.bfloat16, device="cuda")
    if args.scheme != "bf16":
        quantize_model(model, Recipe.single(preset(args.scheme), "rtn"), device="cuda", progress=False)
        _fuse(model, (True, False), f"{args.config} {args.scheme}")
    prefill, run = steps(model, args.batch, 128, args.steps)
    walls = []
    with torch.no_grad():
        for _ in range(4):  # compile, record the graphs, then time
            token = prefill()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(token)
            end.record()
            end.synchronize()
            walls.append(start.elapsed_time(end) * 1000 / args.steps)
        token = prefill()
        torch.cuda.synchronize()
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run(token)
            torch.cuda.synchronize()
    totals: dict[str, list[float]] = {}
    gemvs = []  # (start, us) of the GEMV kernels, for --roles
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and "Memcpy" not in event.name:
            totals.setdefault(short_name(event.name), []).append(event.time_range.elapsed_us())
            if "qtool" in event.name and "gemv" in event.name:  # ours, not cuBLAS's lm_head GEMV
                gemvs.append((event.time_range.start, event.time_range.elapsed_us()))
    per_step = {k: (sum(v) / args.steps, len(v) / args.steps) for k, v in totals.items()}
    ranked = sorted(per_step.items(), key=lambda kv: -kv[1][0])
    busy = sum(us for us, _ in per_step.values())
    record = {"scheme": args.scheme, "batch": args.batch, "wall_us_per_step": round(statistics.median(walls[1:]), 1),
              "busy_us_per_step": round(busy, 1), "kernels_per_step": round(sum(n for _, n in per_step.values()), 1),
              "tok_s": round(args.batch * 1e6 / statistics.median(walls[1:]), 1),
              "kernels": {k: {"us": round(us, 1), "count": round(n, 2)} for k, (us, n) in ranked[:args.top]}}
    print(json.dumps({k: v for k, v in record.items() if k != "kernels"}))
    for k, (us, n) in ranked[:args.top]:
        print(f"{us:8.1f} us  x{n:5.1f}  {k}")
    if args.roles and args.scheme != "bf16":
        with torch.no_grad():
            record["roles"] = time_roles(model, args.batch, [us for _, us in sorted(gemvs)], len(gemvs) / args.steps)
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
