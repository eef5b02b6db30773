"""CPU tests of kernels/tuning.py's cells per card: which card applies (QTOOL_TUNING_CARD, the GPU's name), a card's
cells over the H200's tables, the sweeps writing a card's cells into a copy of tuning.py, and the replay order the
protocol benchmarks and sweeps time their variants in."""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest
import torch

from qtool_kernels import tuning

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_card(monkeypatch):
    """tuning.card() chooses again (it keeps its choice per process); the memos start empty and end so."""
    monkeypatch.setattr(tuning, "_card", [])
    tuning.clear_cache()
    yield
    tuning.clear_cache()


def test_card_follows_the_switch_then_the_gpu_name(fresh_card, monkeypatch):
    monkeypatch.setenv("QTOOL_TUNING_CARD", "H100")
    assert tuning.card() == "H100"
    monkeypatch.setenv("QTOOL_TUNING_CARD", "H200")
    assert tuning.card() == "H100"  # chosen once per process
    monkeypatch.setattr(tuning, "_card", [])
    assert tuning.card() == "H200"
    monkeypatch.delenv("QTOOL_TUNING_CARD")
    for name, want in (("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "H200")):
        monkeypatch.setattr(tuning, "_card", [])
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda name=name: name)
        assert tuning.card() == want, name


def test_an_unknown_card_is_named(fresh_card, monkeypatch):
    monkeypatch.setenv("QTOOL_TUNING_CARD", "B200")
    with pytest.raises(ValueError, match="'B200'"):
        tuning.card()


def test_a_cards_cells_replace_the_h200s_at_their_batches_only(fresh_card, monkeypatch):
    monkeypatch.setattr(tuning, "W8A8", {("fp8-block", 28672, 8192): {64: "block-narrow-overlap",
                                                                       8192: "block-large-overlap-n8"},
                                         ("fp8", 4096, 4096): {16: "gemv", 4096: "pingpong"}})
    monkeypatch.setattr(tuning, "W8A8_H100", {("fp8-block", 28672, 8192): {8192: "cublas"},
                                              ("int8", 8192, 8192): {256: "skinny"}})
    monkeypatch.setenv("QTOOL_TUNING_CARD", "H200")
    assert tuning.lookup("w8a8", "fp8-block", 28672, 8192, 8192) == "block-large-overlap-n8"
    assert tuning.lookup("w8a8", "int8", 8192, 8192, 256) is None  # no int8 row on the H200
    monkeypatch.setattr(tuning, "_card", ["H100"])
    tuning.clear_cache()
    assert tuning.lookup("w8a8", "fp8-block", 28672, 8192, 8192) == "cublas"
    assert tuning.lookup("w8a8", "fp8-block", 28672, 8192, 64) == "block-narrow-overlap"  # the H200's cell
    assert tuning.lookup("w8a8", "fp8", 4096, 4096, 4096) == "pingpong"  # a shape the card has no row for
    assert tuning.lookup("w8a8", "int8", 8192, 8192, 256) == "skinny"  # a shape only the card measured
    assert tuning.lookup("w8a8", "int8", 8192, 8192, 512, within=True) is None


def test_a_cards_mixed_cells_reach_the_schedule(fresh_card, monkeypatch):
    monkeypatch.setattr(tuning, "_card", ["H100"])
    monkeypatch.setattr(tuning, "MIXED_H100", {(4, 28672, 8192): {256: "k64 t128 v2 s-1"}})
    tuning.clear_cache()
    assert tuning.mixed_schedule(4, 28672, 8192, 256, 128) == {"ktile": 64, "token_tile": 128, "variant": 2,
                                                                "split": -1}
    assert tuning.mixed_schedule(4, 28672, 8192, 128, 128) == tuning.parse(tuning.MIXED[(4, 28672, 8192)][128])


def test_card_lookup_traces_under_compile(fresh_card, monkeypatch):
    """The merged row is a constant to torch.compile, as the nearest shape is: one graph, eager's answer."""
    monkeypatch.setattr(tuning, "_card", ["H100"])
    monkeypatch.setattr(tuning, "MIXED_H100", {(4, 4096, 4096): {64: "k64 t64 v0 s0"}})
    tuning.clear_cache()

    def scaled(x):
        route = tuning.lookup("mixed", 4, 4096, x.shape[1], x.shape[0])
        return x * (2 if route == "k64 t64 v0 s0" else 3)

    x = torch.ones(64, 4096)
    assert torch.equal(torch.compile(scaled, fullgraph=True)(x), scaled(x))
    assert scaled(x)[0, 0] == 2


def test_kernels_info_says_whose_routes_apply(fresh_card, monkeypatch):
    from qtool_kernels import build

    monkeypatch.setattr(tuning, "_card", ["H200"])
    assert build._routes_card().startswith("H200")
    monkeypatch.setattr(tuning, "_card", ["H100"])
    monkeypatch.setattr(tuning, "W8A8_H100", {("fp8-block", 28672, 8192): {4096: "cublas", 8192: "cublas"}})
    monkeypatch.setattr(tuning, "MIXED_H100", {(4, 4096, 4096): {64: "k64 t64 v0 s0"}})
    assert build._routes_card() == "H100: the H200's tables with 3 cells measured on the H100 over them"


def sweeps():
    """dev/mixed_sweep.py and dev/w8a8_sweep.py as modules (dev/ and benchmarks/ on the path while importing)."""
    sys.path.insert(0, str(ROOT / "dev"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import mixed_sweep
        import w8a8_sweep
    finally:
        sys.path[:2] = []
    return mixed_sweep, w8a8_sweep


def test_sweeps_merge_into_the_card_swept(tmp_path, monkeypatch):
    """dev/mixed_sweep.py's merge writes an H100 sweep into MIXED_H100 and an H200 one into MIXED, cell by cell,
    and the file still holds valid tables; an unknown --card is named."""
    mixed_sweep, _ = sweeps()
    copy = tmp_path / "tuning.py"
    shutil.copy(ROOT / "kernels" / "tuning.py", copy)
    h100 = mixed_sweep.card_table("mixed", "H100")
    assert h100 == "MIXED_H100" and mixed_sweep.card_table("w8a8", "H200") == "W8A8"
    mixed_sweep.merge_entries({(4, 28672, 8192): {256: "k64 t128 v2 s-1"}}, h100, copy)
    mixed_sweep.merge_entries({(4, 28672, 8192): {512: "k64 t128 v2 s-1"}}, h100, copy)
    mixed_sweep.merge_entries({(4, 4096, 4096): {64: "k64 t64 v0 s0"}}, "MIXED", copy)
    # a card's cell measured back to the H200's route goes, and its row with it when that was its last cell
    first, cells = next(iter(tuning.MIXED_H100.items()))
    mixed_sweep.merge_entries({first: {m: tuning.MIXED[first][m] for m in cells}}, h100, copy)
    tables = {node.target.id: ast.literal_eval(node.value) for node in ast.parse(copy.read_text()).body
              if isinstance(node, ast.AnnAssign) and node.target.id in ("MIXED", "MIXED_H100", "W8A8_H100")}
    expected = {key: row for key, row in tuning.MIXED_H100.items() if key != first}
    assert tables["MIXED_H100"] == {**expected, (4, 28672, 8192): {256: "k64 t128 v2 s-1", 512: "k64 t128 v2 s-1"}}
    assert tables["MIXED"][(4, 4096, 4096)][64] == "k64 t64 v0 s0"
    assert tables["MIXED"][(4, 28672, 8192)] == tuning.MIXED[(4, 28672, 8192)]  # the H200's row untouched
    assert tables["W8A8_H100"] == tuning.W8A8_H100
    with pytest.raises(SystemExit, match="'B200'"):
        mixed_sweep.card_table("mixed", "B200")


def test_interleaved_replays_give_every_variant_every_place():
    """The protocol benchmarks' replay order (benchmarks/replay.py): over 2 x len(names) replays each variant
    runs in each place equally often, so none always follows the bf16 GEMM."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from replay import replay_order
    finally:
        sys.path.pop(0)
    assert [replay_order(["bf16", "qtool"], i) for i in range(4)] == [
        ["bf16", "qtool"], ["qtool", "bf16"], ["qtool", "bf16"], ["bf16", "qtool"]]
    for count in (3, 4, 5):
        names = [f"v{j}" for j in range(count)]
        orders = [replay_order(names, i) for i in range(2 * count)]
        assert all(sorted(order) == names for order in orders)
        for place in range(count):
            assert sorted(order[place] for order in orders) == sorted(names * 2)
    assert replay_order([], 3) == []



def test_sweeps_keep_a_route_unless_another_beats_it_by_the_margin():
    """A sweep writes a cell only where some route beat the layer as dispatched by the margin in the same run: the
    H100 sweep of session 56 swapped ties for plain schedules that the protocol then timed 9-16% slower."""
    mixed_sweep, w8a8_sweep = sweeps()
    plain, tuned = "k64/tm/v0/s0", "k64/t128/v2/s2"
    row = {"M": 256, "pre": 0.0, "auto": 1.00, "kernels": {plain: 0.99, tuned: 0.98}}
    assert mixed_sweep.best_route(row) is None  # 2% faster than the dispatcher: below the 5% margin at 256 tokens
    row["kernels"][tuned] = 0.90
    assert mixed_sweep.best_route(row) == "k64 t128 v2 s2"
    row["auto"] = 0.91  # a route 1% off the dispatcher's time is no reason to change it
    assert mixed_sweep.best_route(row) is None
    cell = {"act_quant": 0.1, "layer": 1.0, "gemm": {"large": 0.88, "w8_gemv (bf16 x)": 1.5}}
    assert w8a8_sweep.best_route(cell) is None  # 0.98 with the quantization: within 3% of the layer
    cell["gemm"]["large"] = 0.8
    assert w8a8_sweep.best_route(cell) == "large"
    del cell["layer"]  # fp8-block's rows time no layer: the fastest GEMM wins
    cell["gemm"]["large"] = 0.95
    assert w8a8_sweep.best_route(cell) == "large"


def test_wgmma_cells_from_an_ab_run(capsys):
    """dev/wgmma_cells.py keeps a schedule (the plan's, the tall tile's and the post-scale form's included) only where
    it leads the route by the margin, and never over a GEMV route (those run before any table); the split GEMV, which
    a wgmma cell displaces (session 70), and a cell of the kernel's own count."""
    sys.path.insert(0, str(ROOT / "dev"))
    try:
        import wgmma_cells
    finally:
        sys.path[:1] = []
    hopper = "hopper {'ktile': 64}"
    rows = [
        {"K": 4096, "N": 4096, "M": 32, "route": hopper, "plan": {"tile": 32, "warpgroups": 2, "split": 7},
         "speedup": {"route": 1.44, "wgmma": 1.52, "w1s6": 1.49, "w1s8*": 1.60}},
        {"K": 4096, "N": 4096, "M": 128, "route": hopper, "speedup": {"route": 1.08, "w1s2": 1.15, "w2s2k2": 1.10}},
        {"K": 8192, "N": 8192, "M": 64, "route": hopper, "speedup": {"route": 2.04, "w2s2": 2.08}},
        {"K": 4096, "N": 4096, "M": 16, "route": "wo_split", "speedup": {"route": 1.85, "w1s6": 1.90, "w1s8t": 1.95}},
        {"K": 4096, "N": 4096, "M": 8, "route": "wo_gemv", "speedup": {"route": 1.85, "w1s6": 2.95}},
        {"K": 8192, "N": 8192, "M": 16, "route": hopper, "speedup": {"route": 2.20, "w2s2": 2.02, "w2s2p": 2.38}},
        {"K": 4096, "N": 4096, "M": 64, "route": "wgmma w1 s2", "speedup": {"route": 1.30, "w1s6": 1.33}},
        {"K": 4096, "N": 6144, "M": 32, "route": "wgmma w2 s4", "speedup": {"route": 1.80, "w2s4": 1.80, "w1s3p": 1.90}},
    ]
    assert wgmma_cells.cells(rows, 0.04) == {(4, 4096, 4096): {16: "wgmma w1 s8 tall", 32: "wgmma w2 s7",
                                                               128: "wgmma w1 s2"},
                                             (4, 8192, 8192): {16: "wgmma w2 s2 post"},
                                             (4, 4096, 6144): {32: "wgmma w1 s3 post"}}
    assert wgmma_cells.cells(rows, 0.10) == {}
    assert "1.52x against the route's 1.44x" in capsys.readouterr().out


def test_a_cell_can_route_weights_with_zero_points_apart(fresh_card, monkeypatch):
    """A cell "A | B" gives symmetric weights A and weights with zero points B (tuning.ZERO_ROUTE); a cell without
    the mark serves both; the memo keeps the two apart."""
    monkeypatch.setattr(tuning, "_card", ["H100"])
    monkeypatch.setattr(tuning, "MIXED_H100", {(4, 8192, 8192): {16: "wgmma w2 s2 post | k128 t16 v1 s4",
                                                                  32: "wgmma w2 s2"}})
    tuning.clear_cache()
    assert tuning.mixed_schedule(4, 8192, 8192, 16, 128) == "wgmma w2 s2 post"
    assert tuning.mixed_schedule(4, 8192, 8192, 16, 128, zero=True) == {"ktile": 128, "token_tile": 16,
                                                                         "variant": 1, "split": 4}
    assert tuning.mixed_schedule(4, 8192, 8192, 16, 128) == "wgmma w2 s2 post"  # not the memo's other answer
    assert tuning.measured_route(4, 8192, 8192, 32, zero=True) == tuning.measured_route(4, 8192, 8192, 32)


def test_wgmma_cells_add_routes_for_zero_points(fresh_card, monkeypatch, capsys):
    """Rows with zero points add a route for such weights where their best schedule (this kernel's, or CUTLASS's:
    the default "mixed", the H200 table's "table"; never the tall tile, which such weights do not take) leads their
    route by the margin; the symmetric half is the run's own cell, else the card's table's route."""
    sys.path.insert(0, str(ROOT / "dev"))
    try:
        import wgmma_cells
    finally:
        sys.path[:1] = []
    monkeypatch.setattr(tuning, "MIXED_H100", {(4, 8192, 8192): {9: "wgmma w2 s2 post"}})
    post = "wgmma w2 s2 post"
    rows = [
        {"K": 8192, "N": 8192, "M": 9, "asym": True, "route": post, "table": "k128 t16 v1 s4",
         "speedup": {"route": 1.90, "mixed": 2.06, "table": 2.20, "w2s2p": 1.90, "w1s8t": 2.50}},
        {"K": 8192, "N": 8192, "M": 16, "asym": True, "route": post, "speedup": {"route": 1.90, "mixed": 2.06}},
        {"K": 8192, "N": 8192, "M": 16, "asym": False, "route": "hopper {}", "speedup": {"route": 2.1, "w2s2p": 2.3}},
        {"K": 4096, "N": 4096, "M": 32, "asym": True, "route": "wgmma w2 s7", "speedup": {"route": 1.47, "mixed": 1.43}},
        {"K": 4096, "N": 4096, "M": 4, "asym": True, "route": "wo_gemv", "speedup": {"route": 1.5, "mixed": 2.0}},
    ]
    zero = wgmma_cells.cells(rows, 0.04, zero=True)
    assert zero == {(4, 8192, 8192): {9: "k128 t16 v1 s4", 16: "k64 t0 v0 s0"}}
    assert wgmma_cells.cells(rows, 0.04) == {(4, 8192, 8192): {16: post}}
    merged = wgmma_cells.with_zero_routes(wgmma_cells.cells(rows, 0.04), zero, "H100")
    assert merged == {(4, 8192, 8192): {9: f"{post} | k128 t16 v1 s4", 16: f"{post} | k64 t0 v0 s0"}}
    assert "zero points: k128 t16 v1 s4 2.20x against the route's 1.90x" in capsys.readouterr().out
    # the half a run did not measure stays the table's; a B measured equal to A drops it
    key = (4, 8192, 8192)
    monkeypatch.setattr(tuning, "MIXED_H100", {key: {16: f"{post} | k128 t16 v1 s0"}})
    assert wgmma_cells.with_zero_routes({key: {16: "wgmma w1 s8"}}, {}, "H100") == {
        key: {16: "wgmma w1 s8 | k128 t16 v1 s0"}}
    assert wgmma_cells.with_zero_routes({}, {key: {16: "k64 t0 v0 s0"}}, "H100") == {key: {16: f"{post} | k64 t0 v0 s0"}}
    assert wgmma_cells.with_zero_routes({}, {key: {16: post}}, "H100") == {key: {16: post}}
    assert wgmma_cells.with_zero_routes({key: {16: post}}, {}, "H100") == {}  # nothing new


def test_parse_refuses_a_cell_of_two_routes():
    with pytest.raises(ValueError, match="zero points"):
        tuning.parse("wgmma w2 s2 post | k64 t0 v0 s0")


def test_hopper_route_passes_the_weights_zero_points(fresh_card, monkeypatch):
    """weight_only.hopper_route reads a two-route cell's second route for a weight with zero points."""
    from types import SimpleNamespace

    from qtool_kernels import weight_only

    monkeypatch.setattr(tuning, "_card", ["H100"])
    monkeypatch.setattr(tuning, "MIXED_H100", {(4, 8192, 8192): {16: "wgmma w2 s2 post | k128 t16 v1 s0"}})
    tuning.clear_cache()
    mixed = SimpleNamespace(bits=4, group=128)
    symmetric = SimpleNamespace(mixed=mixed, k_padded=8192, out_features=8192, zero=None)
    asymmetric = SimpleNamespace(mixed=mixed, k_padded=8192, out_features=8192, zero=torch.zeros(64, 8192))
    assert weight_only.hopper_route(symmetric, 16, torch.bfloat16) == "wgmma w2 s2 post"
    assert weight_only.hopper_route(asymmetric, 16, torch.bfloat16) == {"ktile": 128, "token_tile": 16, "variant": 1,
                                                                         "split": 0}
