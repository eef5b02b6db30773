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
    # Importing compiles nothing: the CUDA extension is built on first use with a CUDA tensor (`build`).
    from . import ops, scaled_mm, weight_only  # noqa: F401  (the qtool:: ops, then their CUDA implementations)
    from .build import available_ops, info, load_extension  # noqa: F401
    from .weight_only import cuda_linear, prepare_for_cuda  # noqa: F401
