"""Where an 8B-shaped prefill's GPU time goes, per kernel, for bf16 and a quantized scheme (session 11 found the
fp8-block prefill at 0.88x bf16 while its layers run 1.26-1.61x at 1024-8192 tokens).

    python3 dev/profile_prefill.py --scheme fp8-block [--layers 8] [--no-fuse]

Builds `random_model("llama-8b")` with fewer layers (the per-layer picture is the same), quantizes it by RTN as
`qtool bench --random-weights` does, runs one eager prefill of 1 x 2048 tokens as the bench does (logits for the
last position), and prints torch.profiler's top kernels for both models.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from quantize.fusion import fuse_projections
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import preset
from quantize.shapes import random_model


def run(model, prompt, label: str) -> None:
    def step():
        with torch.inference_mode():
            model(input_ids=prompt, use_cache=False, logits_to_keep=1)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    torch.cuda.synchronize()
    print(f"\n{label}: {start.elapsed_time(end):.2f} ms per prefill (wall, eager)")
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheme", default="fp8-block")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--no-fuse", action="store_true")
    args = parser.parse_args()
    model = random_model("llama-8b", dtype=torch.bfloat16, device="cuda")
    model.model.layers = model.model.layers[: args.layers]
    model.config.num_hidden_layers = args.layers
    prompt = torch.randint(0, model.config.vocab_size, (1, 2048), device="cuda")
    run(model, prompt, "bf16")
    quantize_model(model, Recipe.single(preset(args.scheme), "rtn"), device="cuda", progress=False)
    if not args.no_fuse:
        fuse_projections(model)
    run(model, prompt, args.scheme)


if __name__ == "__main__":
    main()
