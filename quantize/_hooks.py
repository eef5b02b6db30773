"""Run a callback right after a module is imported, without importing it ourselves.

`import quantize` registers qtool with transformers' quantizer registry, which costs a second or
more to import; deferring the registration until transformers loads that registry keeps
`import quantize` (and the `qtool` command) as fast as before.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # let the regular finders locate the module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module, callback = spec.loader.exec_module, self.callback

        def exec_then_callback(module):
            exec_module(module)
            try:
                callback()
            except Exception as err:  # a failing hook must not break the import it follows
                warnings.warn(f"after importing {fullname}: {type(err).__name__}: {err}", stacklevel=2)

        spec.loader.exec_module = exec_then_callback
        return spec


def after_import(name: str, callback: Callable[[], None]) -> None:
    """Call `callback()` once `name` is imported: now if it already is, else right after its import."""
    if name in sys.modules:
        callback()
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))
