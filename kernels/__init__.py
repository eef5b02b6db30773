"""qtool's kernels: torch.library ops (`ops`), their PyTorch reference (`reference`), CUDA sources (`csrc/`).

Importing compiles nothing: the CUDA extension is built on first use with a CUDA tensor (`build`).
`weight_only` and `scaled_mm` register the CUDA implementations of the qtool ops; `layout` is the
kernel weight layout.
"""

from . import ops, scaled_mm, weight_only  # noqa: F401  (the qtool:: ops, then their CUDA implementations)
from .build import available_ops, info, load_extension  # noqa: F401
from .weight_only import cuda_linear, prepare_for_cuda  # noqa: F401
