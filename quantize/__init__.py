"""qtool: post-training quantization for large language models.

    import quantize
    model, tokenizer = quantize.load_model("models/smollm2")
    result = quantize.quantize_model(model, quantize.Recipe.single(quantize.preset("w4a16"), "rtn"))
    quantize.save_checkpoint(model, result.config, "out/w4a16", source_dir="models/smollm2")
    model, config = quantize.load_checkpoint("out/w4a16")
"""

from . import _kernels  # noqa: F401  (first: makes this tree's kernels/ the qtool_kernels package)
from .checkpoint import load_checkpoint, save_checkpoint
from .linear import QuantLinear
from .quantizer import load_model, quantize_model
from .recipe import Recipe, RecipeEntry
from .scheme import PRESETS, QuantArgs, QuantizationConfig, QuantScheme, Strategy, preset

__version__ = "0.1.0"
__all__ = ["PRESETS", "QuantArgs", "QuantLinear", "QuantScheme", "QuantizationConfig", "Recipe", "RecipeEntry",
           "Strategy", "load_checkpoint", "load_model", "preset", "quantize_model", "save_checkpoint"]
