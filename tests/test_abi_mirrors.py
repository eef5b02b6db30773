"""The ctypes mirrors of the Hopper libraries' argument structs (kernels/warpgroup_mm.py, mixed_mm.py, block_mm.py)
match the C structs field by field, in order and in kind (pointer, size_t, int), parsed from the headers: a field
added on one side only would shift every later one and the kernel would read garbage, on the GPU only."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest

from qtool_kernels import block_mm, mixed_mm, warpgroup_mm

SM90 = Path(__file__).resolve().parents[1] / "kernels" / "csrc" / "sm90"
KINDS = {"pointer": ctypes.c_void_p, "size_t": ctypes.c_size_t, "int": ctypes.c_int}


def c_fields(header: Path, struct: str) -> list[tuple[str, str]]:
    """[(name, kind)] of `struct` in `header`, kind "pointer", "size_t" or "int"."""
    text = re.sub(r"//[^\n]*", "", header.read_text())
    body = re.search(rf"struct {struct} {{(.*?)\n}};", text, re.S)
    assert body is not None, f"{struct} not found in {header.name}"
    fields = []
    for declaration in (d.strip() for d in body.group(1).split(";")):
        if not declaration:
            continue
        kind_text, names = re.match(r"((?:const\s+)?\w+\s*\**)\s*(.*)", declaration, re.S).groups()
        kind = "pointer" if "*" in kind_text else kind_text.replace("const", "").strip()
        assert kind in KINDS, f"{struct}: unexpected type in {declaration!r}"
        fields += [(name.strip(), kind) for name in names.split(",")]
    return fields


@pytest.mark.parametrize("mirror,header,struct", [
    (warpgroup_mm._Args, "wgmma_lanes.cuh", "Args"),
    (mixed_mm._Args, "sm90_mixed_mm.h", "MixedMmArgs"),
    (block_mm._Args, "sm90_block_mm.h", "BlockMmArgs"),
])
def test_ctypes_mirror_matches_the_c_struct(mirror, header, struct):
    expected = [(name, KINDS[kind]) for name, kind in c_fields(SM90 / header, struct)]
    assert [(name, kind) for name, kind in mirror._fields_] == expected
