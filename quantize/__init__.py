"""qtool: post-training quantization for large language models.

    import quantize
    model, tokenizer = quantize.load_model("models/smollm2")
    result = quantize.quantize_model(model, quantize.Recipe.single(quantize.preset("w4a16"), "rtn"))
    quantize.save_checkpoint(model, result.config, "out/w4a16", source_dir="models/smollm2")
    model, config = quantize.load_checkpoint("out/w4a16")

After `import quantize`, transformers' `AutoModelForCausalLM.from_pretrained` loads qtool checkpoints too
(quantize/hf.py), quantize.export_compressed_tensors writes the compressed-tensors format and
quantize.export_onnx an ONNX model for onnxruntime (needs `pip install 'qtool[onnx]'`).
"""

import importlib

from ._hooks import after_import
from .checkpoint import save_checkpoint
from .compressed import import_compressed_tensors
from .fusion import fuse_projections
from .linear import QuantLinear
from .loading import export_compressed_tensors, load_checkpoint
from .quantizer import load_model, quantize_model
from .recipe import Recipe, RecipeEntry
from .scheme import PRESETS, QuantArgs, QuantizationConfig, QuantScheme, Strategy, preset

__version__ = "0.1.0"
__all__ = ["PRESETS", "QuantArgs", "QuantLinear", "QuantScheme", "QuantizationConfig", "Recipe", "RecipeEntry",
           "Strategy", "export_compressed_tensors", "export_onnx", "fuse_projections", "import_compressed_tensors", "load_checkpoint",
           "load_model", "preset", "quantize_model", "save_checkpoint"]

# Register quant_method "qtool" with transformers (importing quantize.hf does) once transformers imports
# its quantizer registry, not before: that import takes seconds, and `import quantize` need not pay for it.
after_import("transformers.quantizers.auto", lambda: importlib.import_module(f"{__name__}.hf"))


def __getattr__(name: str):
    # Imported on first use: the ONNX export needs the optional onnx packages and registers an op.
    if name == "export_onnx":
        from .onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
