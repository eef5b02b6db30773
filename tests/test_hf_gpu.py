"""transformers on the GPU: a qtool checkpoint loaded with device_map="cuda" runs QuantLinear on our kernels."""

from __future__ import annotations

import pytest
import torch

from conftest import quantized_checkpoint
from quantize.scheme import preset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("scheme", ["w4a16", "w4a16-asym", "w8a16"])
def test_from_pretrained_device_map_cuda_matches_cpu(tmp_path, scheme):
    from transformers import AutoModelForCausalLM

    import quantize  # noqa: F401  (registers quant_method "qtool")
    from qtool_kernels import build
    from quantize.linear import QuantLinear

    # 256 wide: whole groups of 128, the kernels' shapes.
    path = quantized_checkpoint(tmp_path / scheme, preset(scheme), hidden_size=256, intermediate_size=512)
    ids = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(0))
    on_gpu = AutoModelForCausalLM.from_pretrained(path, device_map="cuda", dtype=torch.bfloat16)
    on_cpu = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    layers = [m for m in on_gpu.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 14  # 7 linears x 2 blocks; lm_head stays a Linear
    assert all(t.is_cuda for m in layers for t in m.buffers())
    assert build.info()["available"], build.info()["reason"]
    with torch.no_grad():
        got = on_gpu(ids.cuda()).logits.float().cpu()
        want = on_cpu(ids).logits
    assert ((got - want).norm() / want.norm()).item() < 2e-2  # bf16 activations vs float32
