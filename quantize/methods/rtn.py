"""Round-to-nearest: MinMax scales per tensor/channel/group/block, no calibration data needed."""

from __future__ import annotations

from ..pipeline import BlockContext
from ..primitives import QTensor, quantize_weight
from ..scheme import QuantScheme


def quantize_block(ctx: BlockContext, schemes: dict[str, QuantScheme]) -> dict[str, QTensor]:
    """Quantize each named linear of the block from its float weight [N, K] alone."""
    return {name: quantize_weight(ctx.block.get_submodule(name).weight.detach().float(), scheme.weights)
            for name, scheme in schemes.items()}
