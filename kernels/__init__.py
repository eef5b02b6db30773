"""qtool's kernels: torch.library ops (`ops`), their PyTorch reference (`reference`), CUDA sources (`csrc/`)."""

from . import ops  # noqa: F401  (registers the qtool:: ops)
