"""Run llm-compressor on SmolLM2 with the same calibration tokens and evaluation protocol as qtool.

Runs in its OWN virtual environment (llm-compressor pins its own stack):
    python3 -m venv .lcvenv && . .lcvenv/bin/activate
    pip install torch==2.13.0 && pip install llmcompressor gguf rich
    python benchmarks/llmcompressor_baseline.py --model models/smollm2 --config gptq-w4g64 --out runs/llmc
It imports qtool's data and evaluate modules from this checkout (plain PyTorch + transformers), so the
calibration windows (128 x 512 tokens of WikiText-2 validation, seed 0) and the metrics are identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quantize.data import calibration_batches, evaluation_windows, load_texts  # noqa: E402
from quantize.evaluate import evaluate  # noqa: E402


def weights(bits: int, group: int, symmetric: bool) -> dict:
    return {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": "group", "group_size": group}


def recipe(name: str):
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    if name == "fp8-dynamic":
        return QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"])
    method, spec = name.split("-", 1)
    bits, group = {"w4g64": (4, 64), "w4g128": (4, 128), "w3g128": (3, 128), "w3g64": (3, 64)}[spec]
    groups = {"group_0": {"targets": ["Linear"], "weights": weights(bits, group, method == "gptq")}}
    if method == "gptq":
        return GPTQModifier(config_groups=groups, ignore=["lm_head"], dampening_frac=0.01)
    # Since 0.14 AWQModifier only smooths; the weights are quantized by a QuantizationModifier after it.
    # (The deprecated `modifiers.awq.AWQModifier(config_groups=...)` shim left this model in float:
    # KL 1e-9 against the base, measured on the H100.)
    return [AWQModifier(), QuantizationModifier(config_groups=groups, ignore=["lm_head"])]


def materialize_fake_quant(model) -> int:
    """Write each quantized linear's fake-quantized weight into it; returns how many there were.

    GPTQModifier leaves quantized values in the weights, but the AWQ recipe's QuantizationModifier only
    attaches scales and zero points: after `oneshot` the forward pass ran in float (KL 1e-9 against
    the base on the H100), so the figures would describe the float model. Rounding the weights with
    compressed-tensors' own fake_quantize makes the in-memory model compute what its checkpoint holds
    (idempotent for weights that are already on the grid).
    """
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize

    count = 0
    with torch.no_grad():
        for module in model.modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None or scheme.weights is None or not hasattr(module, "weight_scale"):
                continue
            module.weight.copy_(fake_quantize(module.weight, module.weight_scale,
                                              getattr(module, "weight_zero_point", None), scheme.weights))
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smollm2")
    parser.add_argument("--config", required=True, help="gptq-w4g64, awq-w4g64, gptq-w3g128, fp8-dynamic, ...")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "wikitext-2")
    parser.add_argument("--windows", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "llmc")
    args = parser.parse_args()

    import llmcompressor
    from datasets import Dataset
    from llmcompressor import oneshot

    if not torch.cuda.is_available():
        # 0.14's AWQ pins cached activations for faster host->GPU copies, which raises on a machine
        # without an accelerator; pinning only speeds up copies, so skipping it changes no result.
        from llmcompressor.pipelines.cache import IntermediatesCache
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    calib = calibration_batches(tokenizer, load_texts(str(args.data / "wiki.valid.tokens")),
                                num_samples=128, seq_len=512, seed=0)
    ds = Dataset.from_dict({"input_ids": calib.input_ids.tolist(),
                            "attention_mask": torch.ones_like(calib.input_ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    start = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe(args.config), max_seq_length=512, num_calibration_samples=128)
    seconds = time.perf_counter() - start
    quantized = materialize_fake_quant(model)

    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    windows = evaluation_windows(tokenizer, load_texts(str(args.data / "test.jsonl"), split="test"),
                                 seq_len=512, max_windows=args.windows)
    # On a GPU machine evaluate there: oneshot leaves the model on the CPU, where 40 windows with a
    # base model take minutes.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = evaluate(model.to(device).eval(), windows, base=base.to(device), progress=False, device=device)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = {"config": args.config, "llmcompressor": llmcompressor.__version__, "seconds": seconds,
               "fake_quantized_linears": quantized,
               "torch": torch.__version__, **result.to_dict()}
    (args.out / f"{args.config}.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
