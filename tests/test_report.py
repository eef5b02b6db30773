"""report: loading layer_errors.json, ranking layers, and drawing the heatmap."""

from __future__ import annotations

import io
import json
import math

import pytest
from rich.console import Console

from quantize.report import LayerError, _to_grid, load_errors, plot_errors, print_worst, worst

KINDS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(blocks: int) -> list[LayerError]:
    return [
        LayerError(f"model.layers.{b}.{k}", b, k, 0.001 * (1 + b) * (1 + i), {"gptq_loss": float(b + i)})
        for b in range(blocks)
        for i, k in enumerate(KINDS)
    ]


def write(tmp_path, payload) -> str:
    path = tmp_path / "layer_errors.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def test_load_errors_reads_the_documented_format(tmp_path):
    payload = {"layers": [
        {"name": "model.layers.0.self_attn.q_proj", "block": 0, "kind": "self_attn.q_proj",
         "rel_error": 0.012, "method_stats": {"gptq_loss": 1.2}},
        {"name": "model.layers.0.mlp.up_proj", "block": 0, "kind": "mlp.up_proj",
         "rel_error": 0.02, "method_stats": {"awq_ratio": 0.5}},
        {"name": "model.layers.1.mlp.down_proj", "block": 1, "kind": "mlp.down_proj", "rel_error": 0,
         "method_stats": {}},
        {"name": "lm_head", "block": None, "kind": "lm_head", "rel_error": 0.003},
    ]}
    path = write(tmp_path, payload)
    records = load_errors(path)
    assert records[0] == LayerError("model.layers.0.self_attn.q_proj", 0, "self_attn.q_proj", 0.012,
                                    {"gptq_loss": 1.2})
    assert records[2].rel_error == 0.0 and records[2].method_stats == {}
    assert records[3].block is None and records[3].method_stats == {}
    assert load_errors(tmp_path) == records  # the checkpoint directory works too


@pytest.mark.parametrize(
    "payload, message",
    [
        ('{"layers": [', "not valid JSON"),
        ("[]", '"layers" list'),
        ({"layers": [3]}, r"layers\[0\]: expected an object"),
        ({"layers": [{"name": "a", "block": 0}]}, r"missing \['kind', 'rel_error'\]"),
        ({"layers": [{"name": "a", "block": "0", "kind": "q", "rel_error": 0.1}]}, "block"),
        ({"layers": [{"name": "a", "block": 0, "kind": "q", "rel_error": "big"}]}, "rel_error"),
        ({"layers": [{"name": "a", "block": 0, "kind": "q", "rel_error": 0.1,
                      "method_stats": {"gptq_loss": "x"}}]}, "method_stats"),
    ],
)
def test_malformed_files_raise_value_error_naming_the_file(tmp_path, payload, message):
    path = write(tmp_path, payload)
    with pytest.raises(ValueError, match=message) as error:
        load_errors(path)
    assert str(path) in str(error.value)


def test_worst_orders_by_error_and_ranks_nan_first():
    records = synthetic(3)
    top = worst(records, 3)
    assert [r.rel_error for r in top] == sorted((r.rel_error for r in records), reverse=True)[:3]
    assert top[0].name == "model.layers.2.mlp.down_proj"
    broken = LayerError("model.layers.9.mlp.up_proj", 9, "mlp.up_proj", math.nan)
    assert worst([*records, broken], 1) == [broken]
    assert len(worst(records, 100)) == len(records)


def test_print_worst_lists_layers_and_stats():
    out = io.StringIO()
    print_worst(synthetic(3), 2, console=Console(file=out, width=120))
    text = out.getvalue()
    assert "model.layers.2.mlp.down_proj" in text and "gptq_loss" in text
    assert "2 worst of 21 layers" in text


@pytest.mark.parametrize("blocks", [2, 30])  # annotated, and too many cells to annotate
def test_plot_errors_writes_a_png(tmp_path, blocks):
    out = plot_errors(synthetic(blocks), tmp_path / "errors.png", title="synthetic")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_errors_handles_gaps_zeros_broken_and_unblocked_layers(tmp_path):
    records = synthetic(2)[1:]  # block 0's q_proj missing
    records += [
        LayerError("model.layers.2.mlp.up_proj", 2, "mlp.up_proj", 0.0),
        LayerError("model.layers.3.mlp.up_proj", 3, "mlp.up_proj", math.nan),
        LayerError("lm_head", None, "lm_head", 0.5),
    ]
    out = plot_errors(records, tmp_path / "errors.png")
    assert out.read_bytes()[:8] == PNG_MAGIC
    grid, missing, blocks, kinds = _to_grid(records)
    assert kinds == KINDS  # module order survives q_proj missing from block 0
    assert blocks == [0, 1, 2, 3] and grid.shape == missing.shape == (7, 4)
    assert missing[0, 0] and not missing[5, 3] and math.isnan(grid[5, 3])


def test_plot_errors_rejects_duplicates_and_empty_grids(tmp_path):
    records = synthetic(1)
    with pytest.raises(ValueError, match="two records"):
        plot_errors([*records, records[0]], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no records"):
        plot_errors([LayerError("lm_head", None, "lm_head", 0.1)], tmp_path / "x.png")
