"""qtool's kernels: a leaf package that takes tensors and ints and imports nothing from `quantize`.

  ops          the `qtool::` torch.library ops, each with its PyTorch reference and a fake
  reference    the pure-PyTorch reference of every op: the CPU path and the kernels' oracle
  layout       the kernels' weight layout, built and read back in PyTorch
  weight_only  dispatch of a weight-only linear over a packed weight to the qtool_cuda kernels
  scaled_mm    the CUDA implementations of the W8A8 ops: w8_gemv, fused activation quantization, the GEMMs
  tuning       the routes of both dispatchers measured on the H200, as data (shape, batch) -> kernel, schedule
  sm90         builds and loads the CUTLASS Hopper libraries (csrc/sm90/): W8A8, W4A16 / W8A16, FP8 block
  mixed_mm     the W4A16 / W8A16 GEMM (libqtool_sm90_mixed*) as torch ops
  block_mm     the FP8 block-scaled GEMM (libqtool_sm90_block) as a torch op
  build        builds and loads the qtool_cuda extension (csrc/) on first use

Installed as `qtool_kernels`; a source checkout reaches the same folder through the `qtool_kernels`
symlink at its root. This file imports nothing: transformers probes for Hugging Face's `kernels`
package, and from a checkout's root it finds (and imports) this folder under the name `kernels`;
an empty package registers nothing twice and reports no version, which transformers reads as
"not installed". Import the submodules you use (`from qtool_kernels import ops`).
"""
