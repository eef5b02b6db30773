"""compressed-tensors checkpoints: export to the format llm-compressor writes (and vLLM, SGLang and
transformers read), and import such checkpoints into QuantLinear.

Follows compressed-tensors 0.20.0, the `version` written into exported configs. Per quantized linear
(N outputs, K inputs; `format` chosen by compressed-tensors' own rule in compressors/format.py):

  pack-quantized   integer weights, 16-bit activations   weight_packed int32 [N, ceil(K*b/32)], weight_shape
                                                         int64 [2], weight_scale, weight_zero_point if asymmetric
  int-quantized    integer weights, quantized activations weight int8 [N, K], weight_scale, input_scale if static
  float-quantized  FP8 weights, quantized activations     weight float8_e4m3fn [N, K], weight_scale, input_scale
  naive-quantized  FP8 weights, 16-bit activations        weight float8_e4m3fn [N, K], weight_scale

Packing (compressors/pack_quantized/helpers.py since 0.18): codes are offset by 2^(b-1) to unsigned
and laid out densely, code i of a row at bits [i*b, (i+1)*b) of the row's bit string, so an odd-width
code may straddle two int32 words. For b in 1, 2, 4, 8 this equals the layout before 0.18 and
qtool's own (32 // b codes per word); for 3, 5, 6 and 7 bits older versions left each word's top bits
unused, which `import` honours by the config's `version`. Asymmetric group and channel zero points
are packed the same way along dim 0 (output channels); other zero points stay int8.
Scales are written in float32; compressed-tensors casts them to the model dtype on load.

compressed-tensors needs K % group_size == 0 and (since 0.20) has no act-order `weight_g_idx`. A qtool
layer whose last group is shorter, or whose g_idx only relabels contiguous groups, is written with the
finer group size gcd(group_size, K) and its scales repeated, which is exact; GPTQ act-order layers
with scattered columns cannot be written. Import also reads older act-order checkpoints
(`actorder: "group"` with `weight_g_idx`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import (
    TRANSFORMERS_GUARD_KEY,
    CheckpointError,
    empty_model,
    quantized_layers,
    raw_quantization_config,
    read_tensors,
    unique_state_dict,
    write_checkpoint,
)
from .linear import QuantLinear
from .primitives import pack_int, scale_shape, unpack_int
from .scheme import Assignment, QuantArgs, QuantizationConfig, QuantScheme, SchemeError, Strategy

CT_METHOD = "compressed-tensors"
CT_VERSION = "0.20.0"  # the compressed-tensors release whose format this module writes
DENSE_PACKING_SINCE = (0, 18)
OBSERVERS = ("minmax", "mse", "percentile", "kl")


class CompressedTensorsError(CheckpointError):
    """A layer or config that the compressed-tensors format (or qtool's reading of it) cannot express."""


# --- packing ---------------------------------------------------------------------------------

def pack_dense(codes: torch.Tensor, num_bits: int) -> torch.Tensor:
    """[R, C] signed codes -> [R, ceil(C*b/32)] int32 words, code i at bits [i*b, (i+1)*b) of its row."""
    rows, cols = codes.shape
    u = codes.to(torch.int64) + (1 << (num_bits - 1))
    start = torch.arange(cols, device=codes.device) * num_bits
    word, shift = start // 32, start % 32
    words = torch.zeros(rows, math.ceil(cols * num_bits / 32), dtype=torch.int64, device=codes.device)
    words.index_add_(1, word, (u << shift) & 0xFFFFFFFF)  # fields never overlap, so adding is OR-ing
    spill = shift + num_bits > 32  # the high bits of a code that straddles a word boundary
    words.index_add_(1, word[spill] + 1, u[:, spill] >> (32 - shift[spill]))
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def unpack_dense(packed: torch.Tensor, num_bits: int, cols: int) -> torch.Tensor:
    """Inverse of `pack_dense`: [R, W] int32 -> [R, cols] int8 signed codes."""
    w = packed.to(torch.int64) & 0xFFFFFFFF
    start = torch.arange(cols, device=packed.device) * num_bits
    word, shift = start // 32, start % 32
    u = w[:, word] >> shift
    spill = shift + num_bits > 32
    u[:, spill] |= w[:, word[spill] + 1] << (32 - shift[spill])
    return ((u & ((1 << num_bits) - 1)) - (1 << (num_bits - 1))).to(torch.int8)


def _unpack(packed: torch.Tensor, num_bits: int, cols: int, dense: bool) -> torch.Tensor:
    if dense or 32 % num_bits == 0:
        return unpack_dense(packed, num_bits, cols)
    return unpack_int(packed, num_bits, cols)  # before 0.18: 32 // b codes per word, as qtool stores them


# --- export ----------------------------------------------------------------------------------

def ct_format(scheme: QuantScheme) -> str:
    """compressed-tensors' format for a scheme, by the priority order of its compressors/format.py."""
    if scheme.input_activations is not None:
        return "float-quantized" if scheme.weights.is_float else "int-quantized"
    return "naive-quantized" if scheme.weights.is_float else "pack-quantized"


def ct_args(args: QuantArgs, group_size: int | None = None) -> dict[str, Any]:
    """compressed-tensors QuantizationArgs (as its model_dump writes them) for qtool's QuantArgs.

    group_size: overrides args.group_size (see `_contiguous_groups`).
    """
    if args.strategy is Strategy.GROUP:
        group_size = group_size or args.group_size
    d: dict[str, Any] = {"num_bits": args.num_bits, "type": args.type.value, "symmetric": args.symmetric,
                         "group_size": group_size,
                         "strategy": args.strategy.value, "dynamic": args.dynamic}
    if args.strategy is Strategy.BLOCK:
        d["block_structure"] = list(args.block_structure)
    if not args.dynamic:
        d["observer"] = args.observer
    return d


def check_exportable(name: str, scheme: QuantScheme, in_features: int) -> None:
    """Raise CompressedTensorsError when compressed-tensors cannot express `scheme` on layer `name`."""
    if scheme.weights.binary:
        raise CompressedTensorsError(f"{name}: compressed-tensors has no 1-bit (sign times scale) format; "
                                     "keep the qtool format")
    for args in (scheme.weights, scheme.input_activations):
        if args is not None and args.is_float and args.fp_format != "e4m3":
            raise CompressedTensorsError(f"{name}: compressed-tensors stores FP8 as E4M3 only, "
                                         f"not {args.fp_format}")
    act = scheme.input_activations
    if act is not None and act.strategy is Strategy.GROUP and in_features % act.group_size:
        raise CompressedTensorsError(f"{name}: compressed-tensors needs the {in_features} inputs to be a multiple "
                                     f"of the activation group size {act.group_size}")


def _contiguous_groups(name: str, layer: QuantLinear) -> tuple[int, torch.Tensor, torch.Tensor | None]:
    """(group size, scale, zero point) with K % group size == 0 and no g_idx, describing the same weight."""
    w, k = layer.scheme.weights, layer.in_features
    g_idx = getattr(layer, "weight_g_idx", None)
    gi = g_idx.long() if g_idx is not None else torch.arange(k, device=layer.weight_scale.device) // w.group_size
    g = math.gcd(w.group_size, k)
    chunks = gi.reshape(-1, g)
    if not bool((chunks == chunks[:, :1]).all()):
        raise CompressedTensorsError(
            f"{name}: act-order groups are not contiguous runs of {g} columns; compressed-tensors {CT_VERSION} "
            "has no g_idx (actorder 'group' was removed), so this layer cannot be exported")
    first = chunks[:, 0]
    zp = getattr(layer, "weight_zero_point", None)
    return g, layer.weight_scale[:, first], None if zp is None else zp[:, first]


def export_layer(name: str, layer: QuantLinear) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One QuantLinear as (compressed-tensors scheme without targets, tensors by local name)."""
    scheme, n, k = layer.scheme, layer.out_features, layer.in_features
    w, act = scheme.weights, scheme.input_activations
    check_exportable(name, scheme, k)
    group_size, zp = None, getattr(layer, "weight_zero_point", None)
    scale = layer.weight_scale
    if w.strategy is Strategy.GROUP:
        group_size, scale, zp = _contiguous_groups(name, layer)
    fmt = ct_format(scheme)
    codes = layer.codes()
    if fmt == "pack-quantized":
        out = {"weight_packed": pack_dense(codes, w.num_bits),
               "weight_shape": torch.tensor([n, k], dtype=torch.int64)}
        if zp is not None and w.strategy in (Strategy.GROUP, Strategy.CHANNEL):
            zp = pack_dense(zp.T, w.num_bits).T
    else:
        out = {"weight": codes}
    out["weight_scale"] = scale.float()
    if zp is not None:
        out["weight_zero_point"] = zp
    if hasattr(layer, "input_scale"):
        out["input_scale"] = layer.input_scale.float()
    ct_scheme = {"weights": ct_args(w, group_size), "input_activations": ct_args(act) if act else None,
                 "output_activations": None, "format": fmt}
    return ct_scheme, {key: t.contiguous() for key, t in out.items()}


def write_compressed_tensors(model: nn.Module, out_dir: str | Path, *, source_dir: str | Path | None = None,
                             overwrite: bool = False, extra_json: dict[str, Any] | None = None) -> Path:
    """Write `model` (with QuantLinear modules) as a compressed-tensors checkpoint."""
    layers = quantized_layers(model)
    if not layers:
        raise CompressedTensorsError("the model has no quantized layers to export")
    tensors = {key: t for key, t in unique_state_dict(model).items()
               if key.rpartition(".")[0] not in layers or key.endswith(".bias")}
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for name, layer in layers.items():
        ct_scheme, local = export_layer(name, layer)
        tensors.update({f"{name}.{key}": t.cpu() for key, t in local.items()})
        groups.setdefault(json.dumps(ct_scheme, sort_keys=True), (ct_scheme, []))[1].append(name)
    config_groups = {}
    for i, (ct_scheme, names) in enumerate(groups.values()):
        # One scheme for every quantized linear is written the way llm-compressor writes it;
        # otherwise each group names its modules exactly (an exact string is a name match).
        config_groups[f"group_{i}"] = {"targets": ["Linear"] if len(groups) == 1 else sorted(names), **ct_scheme}
    formats = {s["format"] for s, _ in groups.values()}
    config = {k: v for k, v in model.config.to_dict().items()
              if k not in ("quantization_config", TRANSFORMERS_GUARD_KEY)}
    config["quantization_config"] = {
        "config_groups": config_groups,
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "global_compression_ratio": None,
        "ignore": sorted(n for n, m in model.named_modules() if isinstance(m, nn.Linear)),
        "kv_cache_scheme": None,
        "moe_sparsity_config": None,
        "quant_method": CT_METHOD,
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": CT_VERSION,
    }
    return write_checkpoint(tensors, config, out_dir, source_dir=source_dir, overwrite=overwrite,
                            extra_json=extra_json, producer="qtool")


# --- import ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CtLayer:
    """How one compressed-tensors layer is stored: its format, qtool scheme and packing generation."""

    format: str
    scheme: QuantScheme
    dense: bool  # 0.18+ packing (matters for 3, 5, 6 and 7 bits only)


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text or "0")[:3])


def qtool_args(d: dict[str, Any], where: str) -> QuantArgs:
    """qtool QuantArgs for compressed-tensors QuantizationArgs (strategy inferred as compressed-tensors does)."""
    group_size, strategy = d.get("group_size"), d.get("strategy")
    if strategy is None:
        strategy = "tensor" if group_size is None else ("channel" if group_size == -1 else "group")
    if strategy in ("tensor_group", "attn_head") or d.get("dynamic") == "local":
        raise CompressedTensorsError(
            f"{where}: strategy {strategy!r} (dynamic={d.get('dynamic')!r}) is not supported")
    is_float = d.get("type", "int") == "float"
    if is_float and d.get("num_bits", 8) != 8:
        raise CompressedTensorsError(f"{where}: {d['num_bits']}-bit float formats (NVFP4, MXFP4) are not supported")
    try:
        return QuantArgs(num_bits=d.get("num_bits", 8), type=d.get("type", "int"),
                         fp_format="e4m3" if is_float else None, symmetric=d.get("symmetric", True),
                         strategy=strategy, group_size=group_size if strategy == "group" else None,
                         block_structure=d.get("block_structure"), dynamic=bool(d.get("dynamic", False)),
                         observer=d["observer"] if d.get("observer") in OBSERVERS else "minmax",
                         actorder=d.get("actorder") in (True, "group", "dynamic"))
    except SchemeError as err:
        raise CompressedTensorsError(f"{where}: {err}") from None


def _match_order(name: str, module: nn.Module, targets: list[str]) -> list[str]:
    """Targets matching a module, most specific first: exact names, regexes ("re:"), class names."""
    ordered = sorted(targets, key=lambda t: (t.startswith("re:"), t))
    hits = [t for t in ordered if (re.match(t[3:], name) if t.startswith("re:") else t == name)]
    classes = {c.__name__ for c in type(module).__mro__}
    return hits + [t for t in ordered if t in classes and t not in hits]


def plan_import(model: nn.Module, ct: dict[str, Any]) -> tuple[QuantizationConfig, dict[str, CtLayer]]:
    """qtool's config for a compressed-tensors `quantization_config`, with modules resolved on `model`."""
    status = ct.get("quantization_status", "compressed")
    if status != "compressed":
        raise CompressedTensorsError(
            f"quantization_status {status!r}: only compressed checkpoints hold quantized weights")
    for key in ("kv_cache_scheme", "sparsity_config", "transform_config"):
        if ct.get(key):
            raise CompressedTensorsError(f"{key} is not supported: qtool would run this checkpoint differently")
    dense = _version(ct.get("version")) >= DENSE_PACKING_SINCE
    target_group: dict[str, str] = {}
    for group_name, group in ct.get("config_groups", {}).items():
        if not isinstance(group, dict):
            raise CompressedTensorsError(f"config group {group_name}: preset names are not supported")
        target_group.update(dict.fromkeys(group["targets"], group_name))
    ignore = ct.get("ignore") or []
    members: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not _match_order(name, module, ignore):
            matched = _match_order(name, module, list(target_group))
            if matched:
                members.setdefault(target_group[matched[0]], []).append(name)
    if not members:
        raise CompressedTensorsError("no linear layer matches the targets of the quantization_config")
    groups, layers = {}, {}
    for group_name, names in members.items():
        group = ct["config_groups"][group_name]
        if group.get("output_activations") or not group.get("weights"):
            raise CompressedTensorsError(
                f"config group {group_name}: only weight and input quantization is supported")
        act = group.get("input_activations")
        try:
            weights = qtool_args(group["weights"], f"{group_name}.weights")
            inputs = qtool_args(act, f"{group_name}.input_activations") if act else None
            scheme = QuantScheme(weights=weights, input_activations=inputs, targets=(), ignore=())
        except SchemeError as err:
            raise CompressedTensorsError(f"config group {group_name}: {err}") from None
        fmt = group.get("format") or ct.get("format")
        fmt = ct_format(scheme) if fmt in (None, "mixed-precision") else fmt
        if fmt not in ("pack-quantized", "int-quantized", "float-quantized", "naive-quantized"):
            raise CompressedTensorsError(f"config group {group_name}: format {fmt!r} is not supported")
        groups[group_name] = Assignment(scheme, tuple(names))
        layers.update(dict.fromkeys(names, CtLayer(fmt, scheme, dense)))
    qconfig = QuantizationConfig(groups=groups, method=CT_METHOD,
                                 method_args={"format": ct.get("format"), "version": ct.get("version")})
    return qconfig, layers


def layer_to_qtool(local: dict[str, torch.Tensor], layer: CtLayer, n: int, k: int) -> dict[str, torch.Tensor]:
    """A compressed-tensors layer's tensors (local names) in QuantLinear's layout."""
    w = layer.scheme.weights
    if layer.format == "pack-quantized":
        codes = _unpack(local["weight_packed"], w.num_bits, k, layer.dense)
    else:
        codes = local["weight"]
    out: dict[str, torch.Tensor] = {}
    if w.packed:
        out["weight_packed"] = pack_int(codes.to(torch.int8), w.num_bits)
        out["weight_shape"] = torch.tensor([n, k], dtype=torch.int64, device=codes.device)
    else:
        out["weight"] = codes.to(getattr(torch, w.torch_dtype_name))
    sshape = scale_shape((n, k), w)
    out["weight_scale"] = local["weight_scale"].float().reshape(sshape)
    if not w.symmetric:
        zp = local["weight_zero_point"]
        if zp.dtype == torch.int32:  # packed along the output channels
            zp = _unpack(zp.T, w.num_bits, n, layer.dense).T
        out["weight_zero_point"] = zp.to(torch.int8).reshape(sshape).contiguous()
    if w.actorder:
        out["weight_g_idx"] = local["weight_g_idx"].to(torch.int32)
    act = layer.scheme.input_activations
    if act is not None and not act.dynamic:
        out["input_scale"] = local["input_scale"].float().reshape(1)
    if "bias" in local:
        out["bias"] = local["bias"]
    return out


def import_compressed_tensors(path: str | Path) -> tuple[QuantizationConfig, dict[str, torch.Tensor]]:
    """A compressed-tensors checkpoint as qtool's config and a state dict for QuantLinear modules."""
    path = Path(path)
    ct = raw_quantization_config(path)
    model = empty_model(path)
    qconfig, layers = plan_import(model, ct)
    tensors = read_tensors(path)
    for name, layer in layers.items():
        prefix = f"{name}."
        local = {key[len(prefix):]: tensors.pop(key) for key in [k for k in tensors if k.startswith(prefix)]}
        lin = model.get_submodule(name)
        try:
            converted = layer_to_qtool(local, layer, lin.out_features, lin.in_features)
        except (KeyError, RuntimeError) as err:
            raise CompressedTensorsError(f"{path}: layer {name} does not match its {layer.format} scheme: "
                                         f"{type(err).__name__} {err}") from None
        tensors.update({prefix + key: t for key, t in converted.items()})
    return qconfig, tensors
