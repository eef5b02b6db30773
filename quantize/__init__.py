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
import importlib.util

from ._hooks import after_import

# kernels/ (installed as qtool_kernels) has no __init__.py (kernels/README.md says why); an editable install made
# while it had one maps the name to a regular package and finds nothing, which would surface as a bare
# ModuleNotFoundError deep inside the first layer that runs.
if importlib.util.find_spec("qtool_kernels") is None:
    raise ImportError("qtool_kernels (the checkout's kernels/ folder) cannot be imported: reinstall qtool "
                      "(`pip install -e .` in the checkout, or `pip install .`)")

__version__ = "0.1.0"
# The public API, imported on first use: `import quantize` costs no torch import, so `qtool quantize
# --gpus N` relaunches itself under torchrun before paying for one (and `qtool --help` is quick).
_API = {"save_checkpoint": "checkpoint", "import_compressed_tensors": "compressed", "fuse_projections": "fusion",
        "fuse_norms": "norms", "fuse_mlps": "mlp", "use_decode_attention": "attention",
        "QuantLinear": "linear", "export_compressed_tensors": "loading", "load_checkpoint": "loading",
        "load_model": "quantizer", "quantize_model": "quantizer", "Recipe": "recipe", "RecipeEntry": "recipe",
        "PRESETS": "scheme", "QuantArgs": "scheme", "QuantizationConfig": "scheme", "QuantScheme": "scheme",
        "Strategy": "scheme", "preset": "scheme",
        "export_onnx": "onnx_export"}  # needs the optional onnx packages, and registers an op
__all__ = sorted(_API)

# Register quant_method "qtool" with transformers (importing quantize.hf does) once transformers imports
# its quantizer registry, not before: that import takes seconds, and `import quantize` need not pay for it.
after_import("transformers.quantizers.auto", lambda: importlib.import_module(f"{__name__}.hf"))


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
