"""qtool's kernels: a leaf package that takes tensors and ints and imports nothing from `quantize`.

  ops          the `qtool::` torch.library ops, each with its PyTorch reference and a fake
  reference    the pure-PyTorch reference of every op: the CPU path and the kernels' oracle
  layout       the kernels' weight layout, built and read back in PyTorch
  weight_only  dispatch of a weight-only linear over a packed weight to the qtool_cuda kernels
  scaled_mm    the CUDA implementations of the W8A8 ops: w8_gemv, fused activation quantization, the GEMMs
  sm90         builds and loads libqtool_sm90, the CUTLASS Hopper W8A8 GEMM (csrc/sm90/)
  build        builds and loads the qtool_cuda extension (csrc/) on first use

Installed as `qtool_kernels`; a source checkout reaches the same folder through the `qtool_kernels`
symlink at its root. This file imports nothing: transformers probes for Hugging Face's `kernels`
package, and from a checkout's root it finds (and imports) this folder under the name `kernels`;
an empty package registers nothing twice and reports no version, which transformers reads as
"not installed". Import the submodules you use (`from qtool_kernels import ops`).
"""
