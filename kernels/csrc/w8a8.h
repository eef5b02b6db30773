// Interface between ops_w8a8.cpp (PyTorch-facing checks) and the 8-bit kernels (.cu files, no PyTorch
// headers): fused activation quantization (act_quant.cu) and the 8-bit-weight GEMV (w8_gemv.cu).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "wo_kernels.h"  // ScalarKind

namespace qtool {

// 8-bit code formats: the symmetric int8 range [-128, 127] and the two OCP FP8 formats.
enum class CodeFormat { kInt8, kE4M3, kE5M2 };

struct ActQuantProblem {
  const void* x;           // [m, k] fp16/bf16, rows x_stride elements apart, 16-byte aligned when vectorized
  long long x_stride;      // elements between rows of x
  void* q;                 // [m, k] codes out, contiguous (int8 or fp8 bytes)
  float* scale;            // out: [m] per token (static: the given scale, repeated), or [m, groups] at
                           // scale[row * s_row + grp * s_col]
  long long s_row, s_col;  // strides of scale (groups only)
  const float* static_scale;  // [1] given scale (per tensor), or nullptr for dynamic
  int m, k;
  int group_size;  // 0: one scale per token (or the static one); else 1 x group_size groups (8..256, 2^i)
  ScalarKind dtype;
  CodeFormat format;
  // int8 per token only (kMaxSplitK): x = scale[r] * q[r] + scale[m + r] * q[m + r] + e, |e| <= scale[m + r] / 2,
  // codes [2m, k] and scales [2m]: the two planes of 16-bit activations on the int8 GEMM (kernels/split_mm.py)
  bool split = false;
};

constexpr int kMaxSplitK = 32768;  // act_quant.cu's held rows: kMaxHeldVecs x 256 threads x 8 elements

void launch_act_quant(const ActQuantProblem& p, cudaStream_t stream);

// y[m, n] = x[m, k] @ dequant(w[n, k])^T + bias, for m <= kMaxW8Tokens, w int8 or fp8 codes stored
// row-major (the layout W8A8 checkpoints and the W8A8 GEMMs use), scales per output channel or per
// bn x bk block. The activations stay 16-bit: at these m the weight bytes set the time.
constexpr int kMaxW8Tokens = 32;

struct W8GemvProblem {
  const void* x;       // [m, k] fp16/bf16, contiguous, 16-byte aligned
  const uint8_t* w;    // [n, k] codes, contiguous, 16-byte aligned; k % 16 == 0
  const float* scale;  // [n] per channel, or [ceil(n / block_n), ceil(k / block_k)] per block
  const float* bias;   // [n] float32 or nullptr
  void* y;             // [m, n] in x's dtype
  int m, n, k;
  int block_n, block_k;  // 0, 0 for per-channel scales; else block_k a multiple of 64
  ScalarKind dtype;
  CodeFormat format;
  bool pdl = false;  // the Pdl twin (w8_gemv.cu): weights no kernel writes while in use, asked for by the caller
  // bytes of the next layer's weight pulled into L2 once this block's own loads have landed (prefetch_slice in
  // wo_common.cuh), or nullptr / 0
  const void* prefetch = nullptr;
  long long prefetch_bytes = 0;
  // A gated MLP's gate and up projections stacked as w = [gate; up] (n = 2I rows): y [m, I] = silu(gate) * up,
  // each block's two 16-row stripes the gate rows and the up rows I further (m <= 8, per-channel scales only).
  bool swiglu = false;
};

void launch_w8_gemv(const W8GemvProblem& p, cudaStream_t stream);

}  // namespace qtool
