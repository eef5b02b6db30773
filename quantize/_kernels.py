"""Import `qtool_kernels` from this source tree when there is one.

The kernels live in `kernels/` at the repository root and install as `qtool_kernels`. In a source
checkout (editable install, PYTHONPATH=., git worktrees) the sibling directory must win over
whatever copy an editable install points at, or tests would exercise another tree's kernels.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_kernels_package() -> None:
    if "qtool_kernels" in sys.modules:
        return
    root = Path(__file__).resolve().parents[1] / "kernels"
    if not (root / "__init__.py").is_file():
        return  # an installed wheel: the regular import finds qtool_kernels
    spec = importlib.util.spec_from_file_location("qtool_kernels", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["qtool_kernels"] = module
    spec.loader.exec_module(module)


load_kernels_package()
