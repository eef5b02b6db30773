"""The parts of a streamed run: quantizing a model straight from its safetensors files to a checkpoint,
one block in memory at a time. `quantizer.quantize_to_checkpoint` runs them (and `qtool quantize`,
through `quantize_to_directory`); they sit below quantizer.py so that imports form no circle:

    from quantize.quantizer import quantize_to_checkpoint
    result = quantize_to_checkpoint("models/llama-8b", recipe, "out/gptq", calibration=batches, device="cuda")

The model is a skeleton on the meta device (quantize/lazy.py); each decoder block is read when its
turn comes, quantized, written to its shard (quantize/writer.py) and dropped. Host memory is a block
or two, the embeddings while the calibration inputs are captured and while the rest is written, and
the cached activations when they do not fit on the device. Unquantized tensors are written in the
source's dtype unless `dtype` says otherwise. An interrupted run continues with `resume=True`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import unique_state_dict
from .lazy import LazyBlocks, LazyLoadError, SourceWeights, skeleton
from .pipeline import Plan, quantize_outside_blocks
from .scheme import QuantScheme


@dataclass(frozen=True)
class StreamSettings:
    """dtype: of the unquantized tensors written (None: the source's). cache_dtype: of the cached
    calibration activations (None: the source's, so bf16 for a bf16 model; float32 on request).
    compute_dtype: what each block computes in on the device; float32 gives the eager path's results,
    bfloat16 is several times faster on a GPU (methods still do their own arithmetic in float32).
    all_experts: as `pipeline.Streaming.all_experts`."""

    dtype: torch.dtype | None = None
    cache_dtype: torch.dtype | None = None
    compute_dtype: torch.dtype = torch.float32
    resume: bool = False
    overwrite: bool = False
    all_experts: bool = False


def open_lazily(model_dir: str | Path) -> tuple[nn.Module, Any] | None:
    """The model of `model_dir` on the meta device and its tokenizer, or None where the model cannot be
    read block by block (not a local safetensors directory, or keys that transformers renames)."""
    from transformers import AutoTokenizer

    if not (Path(model_dir) / "config.json").is_file():
        return None
    try:
        model = skeleton(model_dir, SourceWeights.open(model_dir))
    except LazyLoadError:
        return None
    try:
        return model, AutoTokenizer.from_pretrained(model_dir)
    except OSError as err:
        raise ValueError(f"could not load the tokenizer of {model_dir}: {str(err).splitlines()[0]}") from None


def outside_tensors(model: nn.Module, loader: LazyBlocks, plan: Plan, store: torch.dtype) -> dict[str, torch.Tensor]:
    """Embeddings, final norm and lm_head, read in the source dtype (never up-cast on the host), the
    linears among them that the plan names quantized by round-to-nearest as the eager path does."""
    loader.materialize(loader.outside_names(), "cpu", None)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()  # reading the embedding replaced the parameter a tied lm_head shares
    quantize_outside_blocks(model, plan)
    rest = unique_state_dict(model, store)
    loader.release_outside()
    return rest


def block_schemes(plan: Plan, prefix: str) -> dict[int, dict[str, QuantScheme]]:
    """Per block index, the schemes of its quantized linears by local name (to rebuild finished blocks)."""
    out: dict[int, dict[str, QuantScheme]] = {}
    for name, (scheme, _, _) in plan.items():
        if name.startswith(prefix + "."):
            index, _, local = name[len(prefix) + 1:].partition(".")
            out.setdefault(int(index), {})[local] = scheme
    return out


def fingerprint_settings(model_dir: str | Path, config: dict[str, Any], calibration: list[torch.Tensor] | None,
                          input_scales: dict[str, torch.Tensor] | None, observer: str) -> dict[str, Any]:
    """What decides the checkpoint, for ShardWriter: a resumed run must agree on all of it."""
    data = hashlib.sha256()
    for batch in calibration or []:
        data.update(batch.cpu().numpy().tobytes())
    scales = {k: v.tolist() for k, v in sorted((input_scales or {}).items())}
    return {"model": str(Path(model_dir).resolve()), "quantization": config, "data": data.hexdigest(),
            "input_scales": scales, "observer": observer}
