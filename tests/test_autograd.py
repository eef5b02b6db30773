"""Gradients through quantized layers (kernels/ops.py register_autograd): dx = dy @ dequant(W), none for
the packed weight; checked by opcheck and gradcheck, and by training LoRA adapters on a quantized model."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import tiny_llama
from qtool_kernels import ops
from quantize.linear import QuantLinear, set_submodule
from quantize.primitives import quantize_weight
from quantize.quantizer import quantize_model
from quantize.recipe import Recipe
from quantize.scheme import QuantArgs, QuantScheme, preset

SCHEMES = {
    "w4-g32-asym": QuantScheme(weights=QuantArgs(num_bits=4, group_size=32, symmetric=False)),
    "w3-g64": QuantScheme(weights=QuantArgs(num_bits=3, group_size=64)),  # 96 inputs: the last group is short
    "w8-channel": preset("w8a16"),
    "int8-w8a8": preset("w8a8-int8"),
    "fp8-w8a8": preset("fp8"),
}


def quant_layer(scheme: QuantScheme, n: int = 24, k: int = 96) -> QuantLinear:
    torch.manual_seed(0)
    return QuantLinear.from_qtensor(quantize_weight(torch.randn(n, k), scheme.weights), scheme, bias=torch.randn(n))


def op_args(layer: QuantLinear, x: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """The qtool op `layer` calls and its arguments, with `x` and `bias` in place of the layer's."""
    if layer.scheme.input_activations is not None:
        return ops.w8a8_linear, (x, layer.weight, layer.weight_scale, bias, None, "int8" if not
                                 layer.scheme.input_activations.is_float else "e4m3", 0, 0, 0)
    w = layer.scheme.weights
    qweight = layer.weight_packed if w.packed else layer.weight
    return ops.weight_only_linear, (x, qweight, layer.weight_scale, getattr(layer, "weight_zero_point", None),
                                    None, bias, w.num_bits, w.kernel_group_size, layer.in_features)


@pytest.mark.parametrize("case", [c for c in SCHEMES if not c.startswith("fp8")])  # opcheck multiplies inputs: no FP8
def test_opcheck(case):
    layer = quant_layer(SCHEMES[case])
    x = torch.randn(5, 96, requires_grad=True)
    bias = torch.randn(24, requires_grad=True)
    op, args = op_args(layer, x, bias)
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("case", ["w4-g32-asym", "w3-g64", "w8-channel"])
def test_gradcheck_weight_only_float64(case):
    layer = quant_layer(SCHEMES[case])
    x = torch.randn(3, 96, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(24, dtype=torch.float64, requires_grad=True)
    op, args = op_args(layer, x, bias)
    assert torch.autograd.gradcheck(lambda x, b: op(x, *args[1:5], b, *args[6:]), (x, bias))


def test_w8a8_gradient_is_straight_through():
    """Activation rounding is not differentiable; its backward is the dequantized weight's (STE)."""
    layer = quant_layer(SCHEMES["int8-w8a8"])
    x = torch.randn(4, 96, requires_grad=True)
    grad_out = torch.randn(4, 24)
    layer(x).backward(grad_out)
    torch.testing.assert_close(x.grad, grad_out @ layer.dequantize_weight())


@pytest.mark.parametrize("case", list(SCHEMES))
def test_quantlinear_input_gradient_is_dequantized_weight(case):
    layer = quant_layer(SCHEMES[case])
    x = torch.randn(2, 3, 96, requires_grad=True)
    grad_out = torch.randn(2, 3, 24)
    layer(x).backward(grad_out)
    torch.testing.assert_close(x.grad, grad_out @ layer.dequantize_weight(), rtol=1e-5, atol=1e-5)
    assert all(not t.requires_grad for t in layer.buffers())  # codes and scales stay frozen


class LoRA(nn.Module):
    """base(x) + up(down(x)) * alpha / rank around a frozen (here: quantized) layer; up starts at 0."""

    def __init__(self, base: nn.Module, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale


def test_lora_on_a_quantized_model_trains():
    model = tiny_llama()
    quantize_model(model, Recipe.single(preset("w4a16").with_weights(group_size=32), "rtn"), progress=False)
    for p in model.parameters():
        p.requires_grad_(False)
    targets = [n for n, m in model.named_modules() if isinstance(m, QuantLinear) and n.endswith(("q_proj", "v_proj"))]
    for name in targets:
        set_submodule(model, name, LoRA(model.get_submodule(name)))
    adapters = [p for n, p in model.named_parameters() if ".down." in n or ".up." in n]
    assert adapters and all(p.requires_grad for p in adapters)
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(adapters, lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # block 0's adapters get gradients only through every quantized layer above them
    first = model.get_submodule(targets[0])
    assert first.down.weight.grad is not None and first.down.weight.grad.abs().sum() > 0
    assert losses[-1] < losses[0] - 0.1, losses
