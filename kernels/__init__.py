"""qtool's kernels: torch.library ops (`ops`), their PyTorch reference (`reference`), CUDA sources (`csrc/`).

Installed as `qtool_kernels`. In a source checkout this folder is also importable as `kernels`
when the checkout's root is on sys.path, and transformers imports that name while probing for
Hugging Face's `kernels` package. Under any name but `qtool_kernels` the module therefore stays
empty and versionless, which transformers reads as "not installed", and registers nothing.
Importing compiles nothing: the CUDA extension is built on first use with a CUDA tensor (`build`).
"""

if __name__ == "qtool_kernels":
    from . import ops, scaled_mm, weight_only  # noqa: F401  (the qtool:: ops, then their CUDA implementations)
    from .build import available_ops, info, load_extension  # noqa: F401
    from .weight_only import cuda_linear, link_prefetch, prepare_for_cuda  # noqa: F401
