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
};

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

// The same product for 17-256 tokens (w8_gemm.cu), per-channel scales: blocks of 64 weight rows x 64 tokens with
// the activations shared through shared memory, k split over grid.y where the tiles alone leave SMs idle.
struct W8GemmProblem {
  const void* x;       // [m, k] fp16/bf16, contiguous, 16-byte aligned
  const uint8_t* w;    // [n, k] codes, contiguous, 16-byte aligned; k % 16 == 0
  const float* scale;  // [n], or [ceil(n / 128), ceil(k / 128)] for 128 x 128 blocks (blocked)
  const float* bias;   // [n] float32 or nullptr
  void* y;             // [m, n] in x's dtype
  int m, n, k;
  int k_split;         // k per split, a multiple of 128 (w8_gemm_k_split); splits = ceil(k / k_split)
  float* workspace;    // [splits, m, n] float32 partial sums when splits > 1 (no initial value needed)
  int* counters;       // [w8_gemm_tiles(m, n)] int32, zero on entry and left zero: one call on them at a time
  ScalarKind dtype;
  CodeFormat format;
  int variant = 0;     // 0: activations staged in two buffers; 1: a split's activations resident (k_split <= 768);
                       // 2: resident, the weights prefetched into L2 prefetch_stages stages ahead
                       // (kW8GemmPrefetchStages)
  bool blocked = false;  // 128 x 128 block scales (fp8-block), applied to the decoded codes
  int prefetch_stages = 0;
};

// Variant 2's prefetch distance: 4 stages of 2 KB per warp, with the 2 KB in registers ~40 KB per SM in flight at
// two blocks per SM (4.3 TB/s x ~1 us over 132 SMs wants ~33 KB).
constexpr int kW8GemmPrefetchStages = 4;

void launch_w8_gemm(const W8GemmProblem& p, cudaStream_t stream);
int w8_gemm_tiles(int m, int n);  // output tiles (blocks per split)
// k per split (a multiple of 128; the grid runs ceil(k / it) splits): by the kernel's rule, or about `wanted`
// splits where wanted > 0, as k and the variant allow.
int w8_gemm_k_split(int m, int n, int k, int sms, int wanted, int variant);

}  // namespace qtool
