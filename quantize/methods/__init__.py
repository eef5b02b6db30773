"""Quantization methods: one record each (`Method`), used alike by the CLI, the Python API and recipes.

A record says what a method is to everyone who asks: the function over one decoder block that does
the work (see `pipeline.BlockMethod`), the preset it quantizes to when no scheme is given, the typed
settings it accepts (a frozen dataclass; `method_args` in recipes and checkpoints are its fields),
whether it needs calibration data, and how its settings change the scheme (GPTQ's act-order rule).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..pipeline import BlockMethod
from ..scheme import QuantScheme, SchemeError
from . import awq, gptq, gptq_block, rtn, smoothquant


@dataclass(frozen=True)
class NoSettings:
    """Methods without settings (rtn, int8, fp8)."""


@dataclass(frozen=True)
class Method:
    name: str
    quantize_block: BlockMethod
    default_scheme: str  # a preset name (scheme.PRESETS)
    settings: type = NoSettings  # frozen dataclass of the accepted settings, each with its default
    needs_data: bool = False
    fixed_bits: int | None = None  # the only weight width the method produces (8-bit W8A8 methods)
    binary: bool = False  # takes 1-bit weights (sign times mean|w|); AWQ's clipping search assumes a range
    description: str = ""

    def parse_settings(self, args: dict[str, Any] | None) -> Any:
        """Typed settings from `method_args`; an unknown name or a bad value raises SchemeError naming it."""
        args = dict(args or {})
        known = [f.name for f in dataclasses.fields(self.settings)]
        if unknown := sorted(set(args) - set(known)):
            accepted = ", ".join(known) or "none"
            raise SchemeError(f"method {self.name} has no setting(s) {unknown}; it accepts: {accepted}")
        try:
            return self.settings(**args)
        except (TypeError, ValueError) as err:
            raise SchemeError(f"method {self.name}: {err}") from None

    def resolve(self, scheme: QuantScheme, settings: Any) -> QuantScheme:
        """`scheme` as this method with `settings` writes it: GPTQ's act-order with groups chosen in the
        loop stores g_idx (actorder=True); any other combination stores none."""
        if scheme.weights.binary and not self.binary:
            raise SchemeError(f"method {self.name} does not take 1-bit weights; use rtn, gptq or qtool finetune")
        if self.fixed_bits is not None and not scheme.weights.is_float and scheme.weights.num_bits != self.fixed_bits:
            raise SchemeError(f"method {self.name} quantizes weights to {self.fixed_bits} bits, not "
                              f"{scheme.weights.num_bits} ({scheme.weights.describe()})")
        # Settings that can store g_idx say when (gptq.GPTQSettings, smoothquant.SmoothQuantSettings).
        stores = hasattr(settings, "stores_g_idx") and settings.stores_g_idx(scheme.weights)
        return scheme.with_weights(actorder=stores) if stores != scheme.weights.actorder else scheme


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("rtn", rtn.quantize_block, "w4a16", binary=True, description="round to nearest, no data"),
    Method("gptq", gptq_block.quantize_block, "w4a16", gptq.GPTQSettings, needs_data=True, binary=True,
           description="GPTQ: error feedback through the inputs' Hessian"),
    Method("awq", awq.quantize_block, "w4a16-asym", awq.AWQSettings, needs_data=True,
           description="AWQ: activation-aware scales folded into the previous layer"),
    Method("smoothquant", smoothquant.quantize_block, "w8a8-int8", smoothquant.SmoothQuantSettings,
           needs_data=True, fixed_bits=8, description="SmoothQuant: outliers migrated into the weights, W8A8"),
    Method("int8", rtn.quantize_block, "w8a8-int8", fixed_bits=8, description="INT8 W8A8, round to nearest"),
    Method("fp8", rtn.quantize_block, "fp8", fixed_bits=8, description="FP8 W8A8, round to nearest"),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise SchemeError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
