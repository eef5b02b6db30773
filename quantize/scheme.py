"""Quantization settings as typed, frozen data.

`QuantArgs` says how one tensor is quantized (format, bits, symmetry, granularity);
`QuantScheme` says how a group of linear layers is quantized (weights, optionally input
activations, which modules, which to leave alone). Both serialize to plain JSON and are
written into every checkpoint, so a checkpoint never has to be understood from its name.

Field names follow compressed-tensors' `QuantizationArgs` where the concept is the same
(num_bits, type, symmetric, strategy, group_size, block_structure, dynamic), which keeps
export to that format a renaming exercise.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any


class Strategy(StrEnum):
    """Which elements share one scale."""

    TENSOR = "tensor"  # one scale for the whole tensor
    CHANNEL = "channel"  # one per output row of a weight [out, in]
    GROUP = "group"  # one per `group_size` consecutive inputs of each row (weights) or token (activations)
    BLOCK = "block"  # one per 2-D tile `block_structure` of a weight, e.g. 128x128
    TOKEN = "token"  # one per row of an activation [tokens, features]


class QuantType(StrEnum):
    INT = "int"
    FLOAT = "float"


# FP8 formats by bit budget of exponent/mantissa; E4M3 is the "fn" variant (no inf, max 448).
FP8_FORMATS = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


class SchemeError(ValueError):
    """A quantization setting that cannot be honoured; the message names the value."""


@dataclass(frozen=True)
class QuantArgs:
    """How one tensor is quantized.

    num_bits: 1..8 for integers (1: binary, sign(w) * scale; see primitives.py), 8 for floats.
    type: "int" or "float".
    fp_format: "e4m3" or "e5m2" when type is "float".
    symmetric: integers only; False stores a zero point per scale.
    strategy: see `Strategy`.
    group_size: inputs per scale for GROUP (the last group of a row may be shorter).
    block_structure: (rows, cols) of a weight tile for BLOCK.
    dynamic: activations only; scales computed at run time rather than from calibration.
    observer: how static ranges are chosen ("minmax", "mse", "percentile", "kl").
    actorder: GPTQ act-order with non-contiguous groups; the layer then stores g_idx [K].
    """

    num_bits: int = 4
    type: QuantType = QuantType.INT
    fp_format: str | None = None
    symmetric: bool = True
    strategy: Strategy = Strategy.GROUP
    group_size: int | None = 128
    block_structure: tuple[int, int] | None = None
    dynamic: bool = False
    observer: str = "minmax"
    actorder: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", QuantType(self.type))
        object.__setattr__(self, "strategy", Strategy(self.strategy))
        if self.block_structure is not None:
            object.__setattr__(self, "block_structure", tuple(int(b) for b in self.block_structure))
        if self.type is QuantType.INT:
            if not 1 <= self.num_bits <= 8:
                raise SchemeError(f"integer bits must be 1..8, got {self.num_bits}")
            if self.binary and not self.symmetric:
                # Codes are +-1 and zero points are integers: (q - z) * s with z != 0 is no longer binary.
                raise SchemeError("1-bit weights are sign(w) * scale and take no zero point; use symmetric")
            if self.fp_format is not None:
                raise SchemeError(f"fp_format={self.fp_format!r} given for an integer type")
        else:
            if self.fp_format is None:
                object.__setattr__(self, "fp_format", "e4m3")
            if self.fp_format not in FP8_FORMATS:
                raise SchemeError(f"unknown FP8 format {self.fp_format!r}; choose from {sorted(FP8_FORMATS)}")
            if self.num_bits != 8:
                raise SchemeError(f"float formats are 8-bit, got num_bits={self.num_bits}")
            if not self.symmetric:
                raise SchemeError("float formats are symmetric (no zero point)")
        if self.strategy is Strategy.GROUP and (self.group_size is None or self.group_size < 1):
            raise SchemeError(f"group strategy needs a positive group_size, got {self.group_size}")
        if self.strategy is Strategy.BLOCK:
            if self.block_structure is None or len(self.block_structure) != 2 or min(self.block_structure) < 1:
                raise SchemeError(f"block strategy needs block_structure=(rows, cols), got {self.block_structure}")
        if self.strategy is not Strategy.GROUP:
            object.__setattr__(self, "group_size", None)

    @property
    def is_float(self) -> bool:
        return self.type is QuantType.FLOAT

    @property
    def binary(self) -> bool:
        """1-bit integer codes: +-1 (never 0), scale = mean |x| per group (XNOR-Net)."""
        return not self.is_float and self.num_bits == 1

    @property
    def packed(self) -> bool:
        """Integer codes below 8 bits are packed into int32 words (primitives.pack_int); 8-bit codes are stored as they are."""
        return not self.is_float and self.num_bits < 8

    @property
    def kernel_group_size(self) -> int | None:
        """The group size the weight-only ops take: group_size, -1 for one scale per output channel,
        None for strategies they do not take (tensor, block) and for float weights."""
        if self.is_float or self.strategy not in (Strategy.GROUP, Strategy.CHANNEL):
            return None
        return self.group_size if self.strategy is Strategy.GROUP else -1

    def with_group_size(self, group_size: int | None) -> QuantArgs:
        """These arguments with `group_size` inputs per scale; None or -1 means one scale per output channel.
        The one place where the CLI's and recipes' -1 becomes a strategy."""
        if group_size is None or group_size == -1:
            return replace(self, strategy=Strategy.CHANNEL, group_size=None)
        if group_size < 1:
            raise SchemeError(f"group size must be a positive number of inputs, or -1 for per channel; got {group_size}")
        return replace(self, strategy=Strategy.GROUP, group_size=group_size)

    @property
    def torch_dtype_name(self) -> str:
        """Name of the torch dtype the quantized values are stored in."""
        return FP8_FORMATS[self.fp_format] if self.is_float else "int8"

    def describe(self) -> str:
        fmt = f"fp8-{self.fp_format}" if self.is_float else f"int{self.num_bits}"
        if not self.is_float:
            fmt += "" if self.symmetric else "-asym"
        gran = {
            Strategy.GROUP: f"g{self.group_size}",
            Strategy.BLOCK: "block{}x{}".format(*(self.block_structure or (0, 0))),
        }.get(self.strategy, self.strategy.value)
        return f"{fmt} {gran}" + (" dynamic" if self.dynamic else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["type"] = self.type.value
        d["strategy"] = self.strategy.value
        d["block_structure"] = list(self.block_structure) if self.block_structure else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantArgs:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise SchemeError(f"unknown quantization argument(s) {sorted(unknown)}")
        return cls(**d)


# The output projection is left in the original precision by default (llm-compressor's recipes do the same): it is
# one layer, but every logit goes through it. `qtool quantize --quantize-lm-head` drops this pattern.
LM_HEAD = r"(^|\.)lm_head$"


@dataclass(frozen=True)
class QuantScheme:
    """How a set of linear layers is quantized.

    weights: the weight format.
    input_activations: None for weight-only schemes (W4A16, W8A16).
    targets: regexes on module names that this scheme applies to (all nn.Linear by default).
    ignore: regexes on module names left in the original precision.
    """

    weights: QuantArgs
    input_activations: QuantArgs | None = None
    targets: tuple[str, ...] = (r".*",)
    ignore: tuple[str, ...] = (LM_HEAD,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        act = self.input_activations
        if act is not None and act.strategy in (Strategy.CHANNEL, Strategy.BLOCK):
            raise SchemeError(f"activations cannot use the {act.strategy.value} strategy; use token, group or tensor")
        if act is not None and act.binary:
            if not (act.dynamic and act.strategy is Strategy.TOKEN and self.weights.binary):
                raise SchemeError("binary (1-bit) activations are dynamic per token, with 1-bit weights (w1a1)")
        elif act is not None and (not act.symmetric or act.num_bits != 8):
            raise SchemeError(f"input activations must be symmetric 8-bit (or 1-bit in w1a1), got {act.describe()}")
        if act is not None and not act.dynamic and act.strategy is not Strategy.TENSOR:
            raise SchemeError("static input activations use one scale per tensor (strategy tensor)")
        if self.weights.strategy is Strategy.TOKEN:
            raise SchemeError("weights cannot use the token strategy; use channel")

    @property
    def weight_only(self) -> bool:
        return self.input_activations is None

    def describe(self) -> str:
        act = self.input_activations.describe() if self.input_activations else "16-bit"
        return f"W {self.weights.describe()} / A {act}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights.to_dict(),
            "input_activations": self.input_activations.to_dict() if self.input_activations else None,
            "targets": list(self.targets),
            "ignore": list(self.ignore),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantScheme:
        act = d.get("input_activations")
        return cls(
            weights=QuantArgs.from_dict(d["weights"]),
            input_activations=QuantArgs.from_dict(act) if act else None,
            targets=tuple(d.get("targets", (r".*",))),
            ignore=tuple(d.get("ignore", ())),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> QuantScheme:
        return cls.from_dict(json.loads(text))

    def with_weights(self, **changes: Any) -> QuantScheme:
        return replace(self, weights=replace(self.weights, **changes))


def _int_weights(bits: int, group_size: int | None = 128, symmetric: bool = True) -> QuantArgs:
    return QuantArgs(num_bits=bits, symmetric=symmetric).with_group_size(group_size)


_FP8 = dict(num_bits=8, type=QuantType.FLOAT, fp_format="e4m3")

PRESETS: dict[str, QuantScheme] = {
    "w4a16": QuantScheme(weights=_int_weights(4)),
    "w4a16-asym": QuantScheme(weights=_int_weights(4, symmetric=False)),
    "w3a16": QuantScheme(weights=_int_weights(3)),
    "w2a16": QuantScheme(weights=_int_weights(2, group_size=64)),
    # Binary weights: sign(w) times a per-group scale mean|w| (XNOR-Net), 32 codes per int32.
    "w1a16": QuantScheme(weights=_int_weights(1, group_size=64)),
    # Binary weights and activations (XNOR-Net): activations sign(x) * mean|x| per token, at run time.
    "w1a1": QuantScheme(weights=_int_weights(1, group_size=None),
                        input_activations=QuantArgs(num_bits=1, strategy=Strategy.TOKEN, dynamic=True)),
    "w8a16": QuantScheme(weights=_int_weights(8, group_size=None)),
    "w8a8-int8": QuantScheme(
        weights=QuantArgs(num_bits=8, strategy=Strategy.CHANNEL),
        input_activations=QuantArgs(num_bits=8, strategy=Strategy.TOKEN, dynamic=True),
    ),
    "w8a8-int8-static": QuantScheme(
        weights=QuantArgs(num_bits=8, strategy=Strategy.CHANNEL),
        input_activations=QuantArgs(num_bits=8, strategy=Strategy.TENSOR, dynamic=False),
    ),
    # FP8 W8A8: per-channel weights, dynamic per-token activations (--method fp8's default).
    "fp8": QuantScheme(
        weights=QuantArgs(**_FP8, strategy=Strategy.CHANNEL),
        input_activations=QuantArgs(**_FP8, strategy=Strategy.TOKEN, dynamic=True),
    ),
    "fp8-dynamic": QuantScheme(
        weights=QuantArgs(**_FP8, strategy=Strategy.CHANNEL),
        input_activations=QuantArgs(**_FP8, strategy=Strategy.TOKEN, dynamic=True),
    ),
    "fp8-static": QuantScheme(
        weights=QuantArgs(**_FP8, strategy=Strategy.TENSOR),
        input_activations=QuantArgs(**_FP8, strategy=Strategy.TENSOR, dynamic=False),
    ),
    # DeepSeek-V3 / DeepGEMM fine-grained scaling: 128x128 weight tiles, 1x128 activation groups.
    "fp8-block": QuantScheme(
        weights=QuantArgs(**_FP8, strategy=Strategy.BLOCK, block_structure=(128, 128)),
        input_activations=QuantArgs(**_FP8, strategy=Strategy.GROUP, group_size=128, dynamic=True),
    ),
    "fp8-weight-only": QuantScheme(weights=QuantArgs(**_FP8, strategy=Strategy.CHANNEL)),
}

# Aliases users of other tools type.
PRESETS["w8a8"] = PRESETS["w8a8-int8"]
PRESETS["fp8-w8a16"] = PRESETS["fp8-weight-only"]


def preset(name: str) -> QuantScheme:
    """Look up a named preset; the error lists the names that exist."""
    key = name.lower()
    if key not in PRESETS:
        raise SchemeError(f"unknown scheme preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
    return PRESETS[key]


@dataclass(frozen=True)
class Assignment:
    """One scheme and the exact module names it was applied to; part of a checkpoint's config."""

    scheme: QuantScheme
    modules: tuple[str, ...] = field(default_factory=tuple)


QUANT_METHOD = "qtool"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class QuantizationConfig:
    """What a checkpoint's `quantization_config` holds: per-layer schemes, the method and its settings."""

    groups: dict[str, Assignment]
    method: str = "rtn"
    method_args: dict[str, Any] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()

    def scheme_for(self, module_name: str) -> QuantScheme | None:
        for assignment in self.groups.values():
            if module_name in assignment.modules:
                return assignment.scheme
        return None

    def module_schemes(self) -> dict[str, QuantScheme]:
        return {m: a.scheme for a in self.groups.values() for m in a.modules}

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_method": QUANT_METHOD,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "method_args": self.method_args,
            "ignore": list(self.ignore),
            "config_groups": {
                name: {"scheme": a.scheme.to_dict(), "modules": list(a.modules)} for name, a in self.groups.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantizationConfig:
        if d.get("quant_method") != QUANT_METHOD:
            raise SchemeError(f"not a qtool quantization_config (quant_method={d.get('quant_method')!r})")
        if d.get("format_version", 0) > FORMAT_VERSION:
            raise SchemeError(
                f"checkpoint format_version {d['format_version']} is newer than this qtool ({FORMAT_VERSION}); upgrade qtool"
            )
        groups = {
            name: Assignment(QuantScheme.from_dict(g["scheme"]), tuple(g["modules"]))
            for name, g in d["config_groups"].items()
        }
        return cls(groups=groups, method=d.get("method", "unknown"), method_args=d.get("method_args", {}),
                   ignore=tuple(d.get("ignore", ())))
