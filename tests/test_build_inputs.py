"""What a build's cache key hashes covers everything its source includes: a header left out of the hash lets a
changed kernel load from a stale cache (session 72 found the wgmma library's two newest headers missing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import quantize  # noqa: F401  (registers qtool_kernels)
from qtool_kernels import build, sm90

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def included(source: Path) -> set[Path]:
    """The files of csrc that `source` includes, transitively: a quoted name relative to the including file, else to
    the source's folder (the builds' -I); CUTLASS's and CUDA's own headers aside."""
    csrc, seen, todo = build.CSRC.resolve(), set(), [source.resolve()]
    while todo:
        at = todo.pop()
        for name in INCLUDE.findall(at.read_text()):
            path = next((p.resolve() for p in (at.parent / name, source.parent / name) if p.is_file()), None)
            if path is not None and csrc in path.parents and path not in seen:
                seen.add(path)
                todo.append(path)
    return seen


@pytest.mark.parametrize("lib", sm90.ALL, ids=lambda lib: lib.stem)
def test_hopper_library_hash_covers_its_includes(lib):
    hashed = {h.resolve() for h in lib.headers}
    missing = sorted(str(p.relative_to(build.CSRC.resolve())) for p in included(lib.source) - hashed)
    assert not missing, f"{lib.stem}: included but not hashed into its cache key: {missing}"


def test_extension_stamp_covers_its_includes():
    hashed = {(build.CSRC / name).resolve() for name in build.SOURCES + build.HEADERS}
    found: set[Path] = set()
    for name in build.SOURCES:
        found |= included(build.CSRC / name)
    missing = sorted(str(p.relative_to(build.CSRC.resolve())) for p in found - hashed)
    assert not missing, f"qtool_cuda: included but not in build.HEADERS: {missing}"
