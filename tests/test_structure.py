"""The package structure the issue-15 boundaries promise: imports inside quantize/ form no cycle, and
kernels/ (installed as qtool_kernels) is a leaf that imports nothing from quantize."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (function-level imports count too), as
    absolute names. `from . import x` names the submodule x only: a package's modules importing their
    siblings that way is not an arrow back to the package's __init__."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if node.module is not None:
                found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (a package counts as its __init__)."""
    files = {module_name(p): p for p in (ROOT / package).rglob("*.py")}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_quantize_imports_form_no_cycle():
    edges = graph("quantize")
    assert edges["quantize.cli"] >= {"quantize.cli_tools", "quantize.cli_options"}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_kernels_import_nothing_from_quantize():
    for path in (ROOT / "kernels").rglob("*.py"):
        bad = sorted(m for m in imports(path) if m == "quantize" or m.startswith("quantize."))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_kernels_folder_is_a_namespace_package():
    """kernels/ has no __init__.py, so from a checkout's root it never shadows Hugging Face's `kernels`
    (which transformers >= 5.25 depends on and imports while loading)."""
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert (ROOT / "qtool_kernels").resolve() == (ROOT / "kernels").resolve()


def test_transformers_from_a_checkout_root_is_harmless():
    """From the repository root (first on sys.path under `python -m pytest`) transformers imports
    `kernels`: it must get Hugging Face's package where that is installed, and read "not installed"
    where not; quantize then registers the ops once, under qtool_kernels only."""
    import subprocess
    import sys

    code = ("import importlib.metadata, pathlib, sys, torch\n"
            "from transformers.utils.import_utils import is_kernels_available\n"
            "try:\n"
            "    installed = importlib.metadata.version('kernels')\n"
            "except importlib.metadata.PackageNotFoundError:\n"
            "    installed = None\n"
            "import quantize.linear  # QuantLinear's module registers the ops\n"
            "from transformers import AutoModelForCausalLM\n"
            "if installed:\n"
            "    import kernels\n"
            "    assert pathlib.Path(kernels.__file__).parent != pathlib.Path('kernels').resolve()\n"
            "    assert hasattr(kernels, 'get_kernel')  # Hugging Face's\n"
            "else:\n"
            "    from packaging.version import InvalidVersion\n"
            "    try:\n"
            "        assert not is_kernels_available()\n"
            "    except InvalidVersion:  # transformers 5.0 parses the folder's missing version ('N/A')\n"
            "        pass\n"
            "assert 'kernels.ops' not in sys.modules and 'qtool_kernels.ops' in sys.modules\n"
            "assert torch.ops.qtool.weight_only_linear is not None\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_an_install_that_cannot_find_the_kernels_says_how_to_fix_it():
    """A stale editable install (one made while kernels/ had an __init__.py) finds no qtool_kernels: `import
    quantize` says to reinstall instead of failing later inside a layer."""
    import subprocess
    import sys

    code = ("import importlib.util\n"
            "find = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'qtool_kernels' else find(name, *a)\n"
            "try:\n"
            "    import quantize\n"
            "except ImportError as e:\n"
            "    assert 'pip install -e .' in str(e), e\n"
            "else:\n"
            "    raise SystemExit('imported')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
