"""`qtool export --format onnx`: a qtool checkpoint as an ONNX model that onnxruntime runs.

The model is `input_ids [batch, seq] int64 -> logits [batch, seq, vocab] float32`: one full forward
pass, no KV cache and no attention mask (every position attends to the ones before it).

How: torch.onnx's exporter (torch.export + onnxscript, opset 21) traces the Hugging Face model with
every QuantLinear swapped for a placeholder op, `qtool_export::quant_linear`, which it writes as one
`qtool.export.QuantLinear` node naming the layer; each of those nodes is then replaced, with the onnx
helper API, by the layer's own nodes and initializers (onnx_layers.py: MatMulNBits or QDQ). Why this
way: the exporter handles everything architecture-specific (rotary embeddings, GQA, masks, norms)
for any model transformers can trace, and the quantized weights never pass through it, so their
layout is exactly what the ONNX ops specify, built with numpy. Exporting the float model and
replacing its MatMul initializers would have to find each linear's weight among constant-folded,
transposed, anonymous initializers.

Output directory (written atomically, quantize/destination.py): model.onnx (weights over 1.5 GiB in
model.onnx.data beside it), onnx_export.json (per-layer forms, inputs and outputs) and the checkpoint's
tokenizer files.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import COPIED_FILES, quantized_layers
from .destination import atomic_directory, check_output
from .linear import set_submodule
from .loading import load_checkpoint
from .onnx_layers import MS_DOMAIN, OnnxExportError, linear_nodes

OPSET = 21  # blocked DequantizeLinear and int4 initializers
PLACEHOLDER_DOMAIN = "qtool.export"
EXTERNAL_DATA_BYTES = 1536 << 20  # a protobuf file holds at most 2 GiB


@torch.library.custom_op("qtool_export::quant_linear", mutates_args=())
def _quant_linear(x: torch.Tensor, layer: int, out_features: int) -> torch.Tensor:
    """Stands for QuantLinear number `layer` while the exporter traces; its values are never used."""
    return x.new_zeros(*x.shape[:-1], out_features)


@_quant_linear.register_fake
def _(x, layer, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


class _Placeholder(nn.Module):
    def __init__(self, index: int, out_features: int) -> None:
        super().__init__()
        self.index, self.out_features = index, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.qtool_export.quant_linear(x, self.index, self.out_features)


class _Logits(nn.Module):
    """input_ids -> logits, without the cache objects the exporter would have to return."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _translation():
    """The exporter's translation of the placeholder op: one node of our own domain (its schema is
    registered with onnx so onnxscript accepts it; the node never reaches the written file)."""
    import onnx
    import onnxscript
    from onnx.defs import OpSchema

    if not onnx.defs.has("QuantLinear", PLACEHOLDER_DOMAIN):
        onnx.defs.register_schema(OpSchema(
            "QuantLinear", PLACEHOLDER_DOMAIN, 1, inputs=[OpSchema.FormalParameter("x", "T")],
            outputs=[OpSchema.FormalParameter("y", "T")],
            type_constraints=[("T", ["tensor(float)"], "activations")],
            attributes=[OpSchema.Attribute("layer", OpSchema.AttrType.INT, "index of the layer"),
                        OpSchema.Attribute("out_features", OpSchema.AttrType.INT, "N")]))
    domain = onnxscript.values.Opset(PLACEHOLDER_DOMAIN, 1)

    def quant_linear(x, layer: int, out_features: int):
        return domain.QuantLinear(x, layer=layer, out_features=out_features)

    return {torch.ops.qtool_export.quant_linear.default: quant_linear}


def trace(model: nn.Module, named_layers: list[tuple[str, nn.Module]]):
    """The ONNX model of `model` with layer i of `named_layers` as a placeholder node (attribute
    layer=i); `model` is changed in place (its QuantLinear modules replaced)."""
    for index, (name, layer) in enumerate(named_layers):
        set_submodule(model, name, _Placeholder(index, layer.out_features))
    ids = torch.zeros(2, 8, dtype=torch.int64)  # not 1: torch.export would fix a size-1 dim
    dims = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}}
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # notes about torchvision ops that no language model uses
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notes
            program = torch.onnx.export(_Logits(model).eval(), (ids,), dynamo=True, opset_version=OPSET,
                                        input_names=["input_ids"], output_names=["logits"], dynamic_shapes=dims,
                                        custom_translation_table=_translation(), verbose=False, report=False)
    except Exception as err:  # the exporter's errors are pages long: keep the first line, say what failed
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OnnxExportError(f"torch.onnx could not export {type(model).__name__}: {first}") from err
    finally:
        exporter_log.setLevel(level)
    return program.model_proto


def replace_placeholders(proto, named_layers: list[tuple[str, nn.Module]]) -> dict[str, str]:
    """Swap each placeholder node of `proto` for its layer's nodes (in place, keeping the graph's
    order); returns layer name -> the form it was written in."""
    graph = proto.graph
    nodes, kinds = [], {}
    for node in graph.node:
        if node.domain != PLACEHOLDER_DOMAIN:
            nodes.append(node)
            continue
        index = next(a.i for a in node.attribute if a.name == "layer")
        name, layer = named_layers[index]
        built = linear_nodes(name, layer, node.input[0], node.output[0])
        nodes.extend(built.nodes)
        graph.initializer.extend(built.initializers)
        kinds[name] = built.kind
    if len(kinds) != len(named_layers):
        raise OnnxExportError(f"the traced graph calls {len(kinds)} of the {len(named_layers)} quantized layers; "
                              "the model's forward skips some, which the export cannot place")
    del graph.node[:]
    graph.node.extend(nodes)
    imports = [o for o in proto.opset_import if o.domain != PLACEHOLDER_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(imports)
    if any(n.domain == MS_DOMAIN for n in nodes):
        proto.opset_import.add(domain=MS_DOMAIN, version=1)
    return kinds


def export_onnx(checkpoint_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the ONNX model of a qtool (or compressed-tensors) checkpoint into `out_dir`; returns it."""
    import onnx

    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    check_output(out_dir, overwrite=overwrite, reads=(checkpoint_dir,))
    model, _ = load_checkpoint(checkpoint_dir, dtype=torch.float32)
    named = list(quantized_layers(model).items())
    for name, layer in named:  # refuse what cannot be written before the slow trace
        linear_nodes(name, layer, "x", "y")
    proto = trace(model, named)
    kinds = replace_placeholders(proto, named)
    size = sum(len(t.raw_data) for t in proto.graph.initializer)
    with atomic_directory(out_dir, overwrite) as tmp:
        onnx.save_model(proto, tmp / "model.onnx", save_as_external_data=size > EXTERNAL_DATA_BYTES,
                        all_tensors_to_one_file=True, location="model.onnx.data")
        summary = {"inputs": {"input_ids": "int64 [batch, sequence]"},
                   "outputs": {"logits": "float32 [batch, sequence, vocab]"},
                   "kv_cache": False, "opset": OPSET, "source": str(checkpoint_dir),
                   "forms": dict(Counter(kinds.values())), "layers": kinds}
        (tmp / "onnx_export.json").write_text(json.dumps(summary, indent=2))
        for fname in COPIED_FILES:
            if (checkpoint_dir / fname).is_file():
                shutil.copy2(checkpoint_dir / fname, tmp / fname)
    return out_dir
