"""qtool's kernels: torch.library ops (`ops`), their PyTorch reference (`reference`), CUDA sources (`csrc/`).

Installed as `qtool_kernels`. From a source checkout this folder is also reachable as `kernels`
(transformers probes that name for Hugging Face's package): it then resolves to the same module,
so the qtool:: ops are never registered twice.
"""

import importlib
import sys

if __name__ != "qtool_kernels":
    sys.modules[__name__] = importlib.import_module("qtool_kernels")
else:
    from . import ops  # noqa: F401  (registers the qtool:: ops)
