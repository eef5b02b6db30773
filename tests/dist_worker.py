"""Run quantization jobs as one rank of several (tests/test_distributed.py starts it under torchrun, gloo):

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py JOBS.json

Each job is {"model": dir, "output": dir, "method": str, "scheme": preset, "group_size": int or null,
"settings": {...}, "all_experts": bool}; `run_job` is also what the test runs in one process.
"""

from __future__ import annotations

import json
import sys

import torch


def calibration_ids(n: int = 8, seq: int = 32, vocab: int = 128) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, vocab, (2, seq), generator=g) for _ in range(n)]


def run_job(job: dict, device: str = "cpu"):
    from quantize.quantizer import quantize_to_directory
    from quantize.recipe import Recipe
    from quantize.scheme import preset

    scheme = preset(job["scheme"])
    if job.get("group_size"):
        scheme = scheme.with_weights(group_size=job["group_size"])
    recipe = Recipe.single(scheme, job["method"], job.get("settings") or {})
    # Ids over the whole vocabulary: block 0's inputs are the embeddings of the distinct tokens, and a
    # Hessian of lower rank than the width leaves GPTQ's choices to float rounding.
    batches = calibration_ids(vocab=json.loads(open(f"{job['model']}/config.json").read())["vocab_size"])
    return quantize_to_directory(job["model"], job["output"], recipe, calibration=lambda m, t: batches,
                                 device=device, all_experts=job.get("all_experts", False))


def main() -> None:
    from quantize import distributed

    _, device = distributed.start("cpu")
    for job in json.loads(open(sys.argv[1]).read()):
        run_job(job, device)
    distributed.stop()


if __name__ == "__main__":
    main()
