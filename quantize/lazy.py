"""Lazy loading: a model skeleton on the meta device, each decoder block read from the safetensors
shards when its turn comes and freed after it is written.

Host memory then holds a block or two plus what runs outside the blocks, whatever the depth (the
approach llm-compressor calls onloading, one layer at a time). Tensors are read in the source's
dtype; a block is cast to the compute dtype (float32, as the eager path computes) only on its device.
Models whose state dict names differ from their checkpoint's (transformers renames some keys while
loading, e.g. multimodal Gemma-3) are refused with `LazyLoadError`, and callers fall back to loading
the model whole.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
from safetensors import safe_open

from .checkpoint import INDEX_NAME, SINGLE_NAME, empty_model
from .linear import replace_linears
from .loading import tied_names
from .mappings import find_architecture, find_blocks
from .moe import split_expert_tensors, unfuse_experts
from .scheme import QuantScheme

_FLOAT_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


class LazyLoadError(ValueError):
    """The model cannot be read block by block from its files (no safetensors, or renamed keys)."""


class BlockLoader(Protocol):
    """How the pipeline gets blocks onto the device: `outside` puts what runs before block 0 there for
    the input capture, `load` and `release` bring one block to the device and take it away."""

    def outside(self, model: nn.Module, blocks: nn.ModuleList,
                device: torch.device) -> AbstractContextManager[None]: ...

    def load(self, index: int, block: nn.Module, device: torch.device) -> None: ...

    def release(self, index: int, block: nn.Module) -> None: ...


def non_block_modules(model: nn.Module, blocks: nn.ModuleList) -> list[nn.Module]:
    """Leaf-level modules outside the blocks (embeddings, rotary, final norm, lm_head)."""
    block_ids = {id(m) for m in blocks.modules()}
    return [m for m in model.modules() if id(m) not in block_ids and not list(m.children())]


class ResidentBlocks:
    """Block loader for a model held in memory: each block moves to the device for its turn and back."""

    @contextmanager
    def outside(self, model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> Iterator[None]:
        outside = non_block_modules(model, blocks)
        homes = [next(m.parameters(), torch.empty(0)).device for m in outside]
        for m in outside:
            m.to(device)
        try:
            yield
        finally:
            for m, home in zip(outside, homes, strict=True):
                m.to(home)

    def load(self, index: int, block: nn.Module, device: torch.device) -> None:
        self._home, self._device = next(block.parameters()).device, device
        block.to(device)

    def release(self, index: int, block: nn.Module) -> None:
        block.to(self._home)
        if self._device.type == "cuda" and self._home != self._device:
            torch.cuda.empty_cache()


@dataclass
class SourceWeights:
    """The safetensors files of a model directory: which file holds each tensor, and their float dtype."""

    directory: Path
    files: dict[str, str]  # tensor name -> file name
    dtype: torch.dtype  # the most common floating dtype of the stored tensors

    @classmethod
    def open(cls, directory: str | Path) -> SourceWeights:
        directory = Path(directory)
        if (directory / INDEX_NAME).is_file():
            files = json.loads((directory / INDEX_NAME).read_text())["weight_map"]
        elif (directory / SINGLE_NAME).is_file():
            with safe_open(directory / SINGLE_NAME, framework="pt") as fh:
                files = dict.fromkeys(fh.keys(), SINGLE_NAME)
        else:
            raise LazyLoadError(f"no safetensors weights in {directory}")
        counts: Counter[torch.dtype] = Counter()
        for fname in sorted(set(files.values())):
            with safe_open(directory / fname, framework="pt") as fh:
                for key in fh.keys():
                    dtype = _FLOAT_DTYPES.get(fh.get_slice(key).get_dtype())
                    if dtype is not None:
                        counts[dtype] += 1
        return cls(directory, files, counts.most_common(1)[0][0] if counts else torch.float32)

    def read(self, names: list[str], device: torch.device | str = "cpu",
             dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The named tensors, floating ones cast to `dtype` after they reach `device`; each file is
        opened once and closed afterwards, so its mapped pages do not stay resident."""
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        out = {}
        for fname, keys in by_file.items():
            with safe_open(self.directory / fname, framework="pt") as fh:
                for key in keys:
                    t = fh.get_tensor(key).to(device)
                    out[key] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out


def skeleton(directory: str | Path, weights: SourceWeights) -> nn.Module:
    """The model of `directory` on the meta device (buffers such as rotary frequencies are real),
    checked against the stored tensor names: every parameter must be stored under one of its names
    (a tied lm_head is stored as the embedding). Experts become per-expert linears (moe.py), stored
    either as transformers 5 saves them (3-D, split by LazyBlocks) or one linear each (hub Qwen3-MoE)."""
    model = empty_model(directory, weights.dtype).eval()
    missing = _unstored(model, weights)
    if unfuse_experts(model) and missing:
        missing = _unstored(model, weights)
    if missing:
        raise LazyLoadError(f"{len(missing)} tensors of the model are not stored under their names "
                            f"(e.g. {missing[0]})")
    return model


def _unstored(model: nn.Module, weights: SourceWeights) -> list[str]:
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    tied = set(tied_names(model))  # filled by model.tie_weights() once the embedding is read
    return [names[0] for names in names_of.values() if not any(n in weights.files or n in tied for n in names)]


class LazyBlocks:
    """Block loader (`BlockLoader`) that reads each block from the source shards.

    compute_dtype: the dtype blocks compute in on the device (float32: what the eager path uses).
    done, partial: blocks below `done` are already quantized and read from the partial output
        (`partial(index)` gives their tensors) with QuantLinear modules for `schemes` (local names).
    """

    def __init__(self, model: nn.Module, weights: SourceWeights, *, compute_dtype: torch.dtype = torch.float32,
                 done: int = 0, partial=None, schemes: dict[int, dict[str, QuantScheme]] | None = None,
                 replay: bool = True) -> None:
        self.model, self.weights, self.compute_dtype = model, weights, compute_dtype
        self.prefix, self.blocks = find_blocks(model, find_architecture(model))
        self.done, self.partial, self.schemes, self.replay = done, partial, schemes or {}, replay
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qtool-read")
        self._next: tuple[int, Future] | None = None

    def outside_names(self) -> list[str]:
        """Stored tensors outside the decoder blocks (embeddings, final norm, lm_head)."""
        return [n for n in self.weights.files if not n.startswith(self.prefix + ".")]

    @contextmanager
    def outside(self, model: nn.Module, blocks: nn.ModuleList, device: torch.device) -> Iterator[None]:
        """What runs before block 0, on `device` in the compute dtype (as the eager path runs it),
        for the input capture; lm_head never runs there and is not read."""
        head = model.get_output_embeddings()
        skip = {f"{n}." for n, m in model.named_modules() if m is head}
        names = [n for n in self.outside_names() if not any(n.startswith(s) for s in skip)]
        self.materialize(names, device, self.compute_dtype)
        try:
            yield
        finally:
            self.release_outside()

    def materialize(self, names: list[str], device: torch.device | str, dtype: torch.dtype | None) -> None:
        """Read the named (full-name) tensors into the skeleton, and move its real buffers along."""
        tensors = self.weights.read(names, device, dtype)
        self.model.load_state_dict(tensors, strict=False, assign=True)
        for module in self.model.modules():
            for key, buf in module._buffers.items():
                if buf is not None and buf.device.type != "meta":
                    module._buffers[key] = buf.to(device)

    def release_outside(self) -> None:
        block_ids = {id(m) for m in self.blocks.modules()}
        for module in self.model.modules():
            if id(module) not in block_ids:
                _to_meta(module)

    def _read_block(self, index: int) -> dict[str, torch.Tensor]:
        """Block `index`'s stored tensors by local name, on the CPU in the source dtype."""
        prefix = f"{self.prefix}.{index}."
        names = [n for n in self.weights.files if n.startswith(prefix)]
        return split_expert_tensors({k[len(prefix):]: v for k, v in self.weights.read(names).items()})

    def load(self, index: int, block: nn.Module, device: torch.device) -> None:
        prefix = f"{self.prefix}.{index}."
        if index < self.done:
            if not self.replay:
                return  # no calibration data: nothing to recompute through a finished block
            replace_linears(block, self.schemes.get(index, {}), device="meta")
            tensors = {k[len(prefix):]: v for k, v in self.partial(index).items()}
        else:
            pending = self._next if self._next is not None and self._next[0] == index else None
            tensors = pending[1].result() if pending else self._read_block(index)
            # The next block is read from disk while this one is on the device (one more block in host memory).
            if index + 1 < len(self.blocks):
                self._next = (index + 1, self._reader.submit(self._read_block, index + 1))
        # Floating parameters compute in compute_dtype; quantized buffers (codes, scales) keep theirs.
        params = {n for n, _ in block.named_parameters()}
        tensors = {k: v.to(device, self.compute_dtype) if k in params and v.is_floating_point() else v.to(device)
                   for k, v in tensors.items()}
        block.load_state_dict(tensors, strict=True, assign=True)
        block.to(device)  # non-persistent buffers

    def release(self, index: int, block: nn.Module) -> None:
        _to_meta(block)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _to_meta(module: nn.Module) -> None:
    """Drop the tensors of `module` (parameters and buffers) by moving them to the meta device, and give
    the freed pages back: glibc serves allocations of tens of MB from its heap once a few were freed,
    and without a trim the resident size of a run grows with every block (measured: +70 MB per block
    of 1024 x 4096 linears)."""
    module.to("meta")
    _trim_heap()


def _trim_heap() -> None:
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()
