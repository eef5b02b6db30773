"""Where one steady-state decode step's GPU time goes on the 8B shape: kernels of single-token steps only.

`qtool bench --profile` profiles a whole decode (the prompt's prefill spread over the tokens). This profiles N
compiled single-token steps after warm-up: GPU time per step by kernel (grouped by a short name), how many kernels
a step launches, and the step's wall time, so wall - busy is the idle time between kernels. One process per
setting. The step compiles as `qtool bench` compiles it (quantize/bench.py decode_compile_options: Inductor's kernels
with PDL unless QTOOL_INDUCTOR_PDL=0; session 24 ran it with TORCHINDUCTOR_ENABLE_PDL=0 / 1 before that default):

    python3 dev/decode_profile.py --scheme w4a16 --json $OUT/profile_w4.json
    QTOOL_INDUCTOR_PDL=0 python3 dev/decode_profile.py --scheme w4a16 --json $OUT/profile_w4_nopdl.json
"""

from __future__ import annotations

import argparse
import json
import re
import statistics

import torch
from transformers import StaticCache

from quantize.bench import _next_token, decode_compile_options
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
    cache = StaticCache(config=model.config, max_cache_len=prompt_len + count + 1)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="llama-8b")
    ap.add_argument("--scheme", default="w4a16", help="a preset, or bf16 for the unquantized model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--json", required=True)
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
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and "Memcpy" not in event.name:
            totals.setdefault(short_name(event.name), []).append(event.time_range.elapsed_us())
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
    with open(args.json, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
