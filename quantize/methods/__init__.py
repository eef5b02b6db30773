"""Quantization methods, each a function over one decoder block (see `pipeline.BlockMethod`)."""

from __future__ import annotations

from ..pipeline import BlockMethod
from . import awq, gptq, rtn, smoothquant

METHODS: dict[str, BlockMethod] = {
    "rtn": rtn.quantize_block,
    "awq": awq.quantize_block,
    "gptq": gptq.quantize_block,
    "smoothquant": smoothquant.quantize_block,
}

# Methods that only pick a default scheme; their weights are rounded to nearest.
SCHEME_METHODS = {"int8": "w8a8-int8", "fp8": "fp8"}
for _name in SCHEME_METHODS:
    METHODS[_name] = rtn.quantize_block

NEEDS_DATA = {"gptq", "awq", "smoothquant"}


def get_method(name: str) -> BlockMethod:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
