"""Checks that turn silently wrong results into one clear error naming the offending value.

  check_device          --device names a device this machine has (CUDA without CUDA is one line)
  check_range           numeric options: 0 and negatives are values to check, not "unset"
  check_seq_len         windows no longer than the model's positions
  check_scores          an evaluation that computed NaN is an error, not a perplexity of nan
  check_finite          weights with NaN or Inf are refused by every method, not rounded into codes
  check_tensor_layouts  every stored tensor has the dtype and shape the checkpoint's config implies,
                        and finite floats; a checkpoint edited by hand or damaged on disk fails to
                        load (and to inspect) instead of evaluating to nonsense
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn

_PLAIN_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_device(device: str, option: str = "--device") -> torch.device:
    """The torch.device named by `device`, refused unless this machine has it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown {option} {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this PyTorch build has no CUDA support" if torch.version.cuda is None else "no CUDA device found"
            raise ValueError(f"{option} {device}: CUDA is not available ({why}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported {option} {device!r}; use cpu, cuda or cuda:N")
    return dev


def check_range(option: str, value: float | None, *, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
    """Refuse `value` outside [low, high] ((low, high] with low_open); None means not given."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{option} must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"<= {high:g}"
        raise ValueError(f"{option} must be {' and '.join(p for p in (lo, hi) if p)}, got {value:g}")


def check_positive(**options: int | float | None) -> None:
    """Each keyword is an option name without dashes (num_samples -> --num-samples)."""
    for name, value in options.items():
        check_range("--" + name.replace("_", "-"), value, low=0, low_open=True)


def check_seq_len(model: nn.Module, seq_len: int, option: str = "--seq-len") -> None:
    """Refuse windows longer than the model's positions (a long wait, then garbage or a crash)."""
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len is not None and seq_len > max_len:
        raise ValueError(f"{option} {seq_len} is above the model's maximum of {max_len} positions")


def check_scores(figures: dict[str, float | None]) -> None:
    """Refuse evaluation figures that are NaN or Inf: a broken model, not a result to report."""
    bad = {k: v for k, v in figures.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        name, value = next(iter(bad.items()))
        raise ValueError(f"{name} is {value}: the model computes NaN or Inf logits, so it is broken "
                         "(`qtool inspect` checks a checkpoint's tensors)")


def check_finite(module: nn.Module, prefix: str = "", names: Iterable[str] | None = None) -> None:
    """Refuse parameters of `module` (or only those under `names`) holding NaN or Inf (those on the meta
    device, not read yet, are checked when they are)."""
    roots = [module] if names is None else [module.get_submodule(n) for n in names]
    labels = [""] if names is None else [f"{n}." for n in names]
    for root, label in zip(roots, labels, strict=True):
        check_finite_tensors(dict(root.named_parameters()), f"{prefix}{label}")


def count_nonfinite(tensor: torch.Tensor) -> int:
    """How many NaN or Inf values a tensor holds (0 for integer tensors and the meta device).

    One float32 sum first: NaN and Inf reach it (Inf - Inf is NaN), so a finite sum proves every value finite,
    and it is what every tensor of a sound model takes. A sum of a bool mask, the obvious count, ran ~30x slower
    on the CPU (29 s for a 128256 x 4096 bf16 embedding on 2 cores against 1.1 s), which made this check half
    of a CPU run's time. Only a non-finite sum (bad values, or finite ones overflowing float32) counts exactly."""
    if not tensor.is_floating_point() or tensor.is_meta:
        return 0
    try:
        if torch.isfinite(tensor.sum(dtype=torch.float32)):
            return 0
    except (RuntimeError, NotImplementedError):  # a dtype without a sum kernel here (FP8 on some builds)
        tensor = tensor.float()
    return int(torch.count_nonzero(~torch.isfinite(tensor)))


def check_finite_tensors(tensors: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Refuse floating tensors (by name) holding NaN or Inf; names in the error are `prefix` + name."""
    for name, tensor in tensors.items():
        bad = count_nonfinite(tensor)
        if bad:
            raise ValueError(f"{prefix}{name} has {bad} NaN or Inf value(s); a model with broken "
                             "weights cannot be quantized (nothing was written)")


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}"


def check_tensor_layouts(slots: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], where: str,
                         values: bool = True) -> None:
    """Each stored tensor against its slot in the model the config describes.

    slots: the model's state dict on the meta device (QuantLinear buffers in their stored dtypes).
    Integer and FP8 tensors must match the slot's dtype exactly (their bits are codes); plain float
    tensors may be any plain float dtype (they are cast on load) but must be finite (`values`:
    tensors read from a file, not placeholders on the meta device made from its header).
    """
    for name, tensor in tensors.items():
        slot = slots.get(name)
        if slot is None:
            continue  # the caller reports unexpected names
        exact = slot.dtype not in _PLAIN_FLOATS
        if tuple(tensor.shape) != tuple(slot.shape) or (exact and tensor.dtype != slot.dtype) \
                or (not exact and tensor.dtype not in _PLAIN_FLOATS):
            raise ValueError(f"{where}: tensor {name} is {_describe(tensor)}, but the config implies "
                             f"{_describe(slot)}; the checkpoint is damaged or does not match its config.json")
        if values and not exact and count_nonfinite(tensor):
            raise ValueError(f"{where}: tensor {name} contains NaN or Inf; the checkpoint is broken")


def check_layer_sizes(model: nn.Module, tensors: dict[str, torch.Tensor], where: str) -> None:
    """The values of stored `weight_shape` (N, K) and `weight_g_idx` against each quantized layer."""
    from .linear import QuantLinear

    for name, module in model.named_modules():
        if not isinstance(module, QuantLinear):
            continue
        shape = tensors.get(f"{name}.weight_shape")
        if shape is not None and shape.tolist() != [module.out_features, module.in_features]:
            raise ValueError(f"{where}: {name}.weight_shape is {shape.tolist()}, but the layer is "
                             f"[{module.out_features}, {module.in_features}]")
        g_idx = tensors.get(f"{name}.weight_g_idx")
        groups = module.weight_scale.shape[-1] if module.weight_scale.dim() == 2 else 1
        if g_idx is not None and g_idx.numel() and (g_idx.min() < 0 or g_idx.max() >= groups):
            raise ValueError(f"{where}: {name}.weight_g_idx holds group numbers outside 0..{groups - 1}")
