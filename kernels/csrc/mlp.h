// Interface between ops.cpp (PyTorch-facing checks) and silu_mul.cu (no PyTorch headers): the gated MLP's
// SiLU-and-multiply, y [rows, inner] = silu(x[:, :inner]) * x[:, inner:] for x [rows, 2 inner] (or for x's gate
// and up interleaved by 8).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "wo_kernels.h"  // ScalarKind

namespace qtool {

struct SiluMulProblem {
  const void* x;         // [rows, 2 inner] fp16/bf16, rows x_row_stride elements apart, unit column stride
  void* y;               // [rows, inner] same dtype, contiguous
  int64_t rows, inner, x_row_stride;
  ScalarKind dtype;
  bool pdl = false;  // the Pdl twin (silu_mul.cu), asked for by the caller (qtool_kernels/mlp.py, PDL)
  // x's columns are gate / up interleaved by 8 ([g 8 | u 8] per 16, quantize/mlp.py), not [gate | up]
  bool interleaved = false;
};

void launch_silu_mul(const SiluMulProblem& p, cudaStream_t stream);

}  // namespace qtool
