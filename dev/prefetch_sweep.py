"""How much of the next weight each GEMV should pull into L2 (QTOOL_PREFETCH_MB), and whether W8A8 gate/up layers
should run SiLU-and-multiply in w8_gemv's epilogue (kernels/scaled_mm.py SWIGLU_GEMV_MAX_M), measured end to end.

The bf16 8B-shaped model is timed once; each scheme is quantized (RTN) and fused once, as `qtool bench` does,
then decoded at every prefetch size (the links are rebuilt per size; decode compiles again when they change).
One JSON line per (scheme, MiB) goes to --json as it is measured, so a cut-off run keeps what it finished.

    python3 dev/prefetch_sweep.py --schemes w4a16,fp8 --mb 0,4,16,32 --batch-sizes 1,16 --json $OUT/prefetch.jsonl
    python3 dev/prefetch_sweep.py --schemes fp8,w8a8-int8 --mb 0 --swiglu 8,0 --json $OUT/swiglu.jsonl
    python3 dev/prefetch_sweep.py --schemes w4a16 --mb 0 --silu ref,op,pdl --json $OUT/silu.jsonl
    python3 dev/prefetch_sweep.py --schemes w8a8-int8 --mb 0 --attention sdpa,kernel1,kernel2 --json $OUT/attn.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import quantize.attention as decode_attention
from qtool_kernels import attention, mlp, scaled_mm, tuning
from quantize.bench import bench_model, compare
from quantize.cli_tools import _fuse
from quantize.prefetch import PREFETCH_MB_ENV
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import preset
from quantize.shapes import random_model

EIGHT_BIT = ("fp8", "w8a8-int8", "fp8-static", "w8a8-int8-static", "w8a16")  # schemes on w8_gemv at decode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="llama-8b")
    ap.add_argument("--schemes", default="w4a16,fp8")
    ap.add_argument("--mb", default="0,4,16,32")
    ap.add_argument("--swiglu", default=str(scaled_mm.SWIGLU_GEMV_MAX_M),
                    help="values of scaled_mm.SWIGLU_GEMV_MAX_M to run (0: the separate SiLU-and-multiply)")
    ap.add_argument("--silu", default="ref", help="the separate SiLU-and-multiply under torch.compile: ref "
                    "(Inductor's), op (the CUDA kernel), pdl (its PDL twin); comma-separated, each run")
    ap.add_argument("--gemv-pdl", default=tuning.GEMV_PDL, help="values of kernels/tuning.py GEMV_PDL to run (rule, "
                    "all: w8_gemv's PDL twin on every static 8-bit weight to 8 tokens); only 8-bit schemes run more "
                    "than the first")
    ap.add_argument("--attention", default=decode_attention.BACKEND, help="the decode attention: sdpa, kernel "
                    "(qtool_kernels.attention.VARIANT), kernel1 (online softmax), kernel2 (two passes); "
                    "comma-separated")
    ap.add_argument("--batch-sizes", default="1,16")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; no new measurement starts after it")
    ap.add_argument("--skip-base", action="store_true", help="no bf16 model (about two minutes): tokens/s only, "
                    "for A/Bs within a scheme")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    start, default_variant = time.time(), attention.VARIANT
    opts = dict(batch_sizes=[int(b) for b in args.batch_sizes.split(",")], decode_tokens=args.decode_tokens,
                prefill_len=128)
    out = open(args.json, "a")

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)
        out.write(json.dumps(record) + "\n")
        out.flush()

    base = None
    if not args.skip_base:
        base_model = random_model(args.config, dtype=torch.bfloat16, device="cuda")
        base = bench_model(base_model, **opts)
        emit({"scheme": "bf16", **{f"steps_bs{d.batch_size}": d.step_tokens_per_s for d in base.decode}})
        del base_model
    for scheme in args.schemes.split(","):
        model = random_model(args.config, dtype=torch.bfloat16, device="cuda")
        quantize_model(model, Recipe.single(preset(scheme), "rtn"), device="cuda", progress=False)
        _fuse(model, (True, False), f"{args.config} {scheme}")
        pdl_modes = args.gemv_pdl.split(",")[:None if scheme in EIGHT_BIT else 1]
        settings = [(mb, sw, si, gp, at) for mb in args.mb.split(",") for sw in args.swiglu.split(",")
                    for si in args.silu.split(",") for gp in pdl_modes for at in args.attention.split(",")]
        for mb, swiglu, silu, gemv_pdl, attn in settings:
            if time.time() - start > args.budget:
                emit({"scheme": scheme, "mb": mb, "swiglu": swiglu, "silu": silu, "gemv_pdl": gemv_pdl,
                      "attention": attn, "skipped": "budget"})
                continue
            decode_attention.BACKEND = "sdpa" if attn == "sdpa" else "kernel"
            attention.VARIANT = int(attn[len("kernel"):] or default_variant) if attn.startswith("kernel") else 0
            tuning.GEMV_PDL = gemv_pdl
            os.environ[PREFETCH_MB_ENV] = mb
            scaled_mm.SWIGLU_GEMV_MAX_M = int(swiglu)
            scaled_mm.SWIGLU_CODES = {torch.int8, torch.float8_e4m3fn}  # the A/B runs whichever format it is given
            scaled_mm.SWIGLU_BLOCKS = True
            mlp.COMPILED_KERNEL, mlp.PDL = silu != "ref", silu == "pdl"
            torch._dynamo.reset()  # new links recompile; past 8 recompiles dynamo would fall back to eager
            t = time.time()
            result = bench_model(model, **opts)
            ratios = compare(base, result) if base is not None else {}
            emit({"scheme": scheme, "mb": float(mb), "swiglu": int(swiglu), "silu": silu, "gemv_pdl": gemv_pdl,
                  "attention": attn, "seconds": round(time.time() - t, 1),
                  **{f"steps_bs{d.batch_size}": d.step_tokens_per_s for d in result.decode},
                  **{k: round(v, 4) for k, v in ratios.items() if k.startswith("decode_steps")}})
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
