"""Time llm-compressor's GPTQ on a model directory, for a same-call comparison with `qtool quantize`.

    python benchmarks/llmcompressor_speed.py --model /tmp/big/m8b4 --samples 128 --seq-len 2048 --json out.json

oneshot with GPTQModifier (W4A16, group 128, symmetric, lm_head kept) over `--samples` windows of
`--seq-len` random token ids (the models this is run on have random weights: the text does not change
the speed), with the model loaded on the host in its own dtype, as llm-compressor's big-model guide
does (its sequential pipeline moves one decoder layer at a time to the GPU). Records the seconds of
`oneshot` alone and of the whole process; peak memory is measured around it by dev/measure_run.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

START = time.perf_counter()

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    import llmcompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab = AutoConfig.from_pretrained(args.model).vocab_size
    ids = torch.randint(3, vocab, (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"], dampening_frac=0.01)
    t = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=args.seq_len,
            num_calibration_samples=args.samples)
    oneshot_s = time.perf_counter() - t
    result = {"llmcompressor": llmcompressor.__version__, "torch": torch.__version__, "model": str(args.model),
              "layers": model.config.num_hidden_layers, "samples": args.samples, "seq_len": args.seq_len,
              "oneshot_s": oneshot_s, "per_layer_s": oneshot_s / model.config.num_hidden_layers,
              "process_s": time.perf_counter() - START}
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
