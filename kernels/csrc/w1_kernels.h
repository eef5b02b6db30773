// Interface between ops_w1.cpp (PyTorch-facing checks) and the 1-bit kernels (w1_gemv.cu, w1a1.cu),
// which include no PyTorch headers. The layouts are written by kernels/binary.py; a 1-bit code is +1
// where its bit is set and -1 where it is clear (the checkpoint convention, quantize/primitives.py).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "wo_kernels.h"  // ScalarKind

namespace qtool {

// --- W1A16: 16-bit activations, 1-bit weights, m <= kMaxW1GemvTokens (w1_gemv.cu) -----------------
// qweight [n_padded / 16, k_padded / 256, 32, 4] int32: lane l of a warp reads element [stripe, chunk, l]
// (16 bytes) and finds there its mma.m16n8k16 A fragments of the chunk's 16 steps of 16 k, one sign bit
// per code (binary.py, `gemv_bit_map`, says which bit is which row and k).
constexpr int kMaxW1GemvTokens = 8;
constexpr int kW1ChunkK = 256;   // k per 16-byte lane load
constexpr int kW1GemvRows = 32;  // rows per block (two 16-row stripes); n_padded is a multiple of it

struct W1GemvProblem {
  const void* x;             // [m, k_padded] fp16/bf16, zero past k, 16-byte aligned
  const uint32_t* qweight;   // see above
  const float* scale;        // gpc > 0: [n_padded / 16, k_padded / 256, 8, 2, gpc]; gpc == 0: [n_padded]
  const float* bias;         // [n] float32, or nullptr
  void* y;                   // [m, n] in x's dtype
  int m, n, n_padded, k_padded;
  int gpc;                   // scale groups per chunk: 1, 2, 4 or 8; 0 for one scale per row
  ScalarKind dtype;
};

void launch_w1_gemv(const W1GemvProblem& p, cudaStream_t stream);

// --- W1A1: binarized activations x 1-bit weights on the b1 tensor cores (w1a1.cu) --------------------
constexpr int kW1A1PadM = 128;   // m_padded, n_padded and k_padded are multiples of these
constexpr int kW1A1PadN = 256;
constexpr int kW1A1PadK = 512;

enum class OutKind { kHalf, kBFloat16, kFloat };

// bits[row] = sign bits of x[row] (bit set where x >= 0; zero past k and in rows >= m), scale[row] =
// mean |x[row]| (1 where 0; 1 in rows >= m), popc[grp * m_padded + row] = set bits of x[row] in group grp.
struct BinarizeProblem {
  const void* x;        // [m, k] fp16/bf16, rows x_stride elements apart
  long long x_stride;
  uint32_t* bits;       // [m_padded, k_padded / 32]
  float* scale;         // [m_padded]
  int32_t* popc;        // [groups, m_padded]
  int m, m_padded, k, k_padded;
  int group_size;       // 32, 64, 128 or a multiple of 256; <= 0: one group (per channel)
  int groups;
  ScalarKind dtype;
};

// y[m, n] = x_scale[m] * (sum_g w_scale[g, n] * (4 P_g - 2 A_g[m]) + cterm[n]) + bias[n], where P_g is the
// AND-popcount of the bits of x row m and weight row n over group g, A_g the popc of binarize and
// cterm[n] = sum_g w_scale[g, n] * (K_g - 2 B_g[n]) (binary.py): the +-1 dot product of each group.
struct W1A1Problem {
  const uint32_t* xbits;   // [m_padded, k_padded / 32]
  const float* xscale;     // [m_padded]
  const int32_t* xpopc;    // [groups, m_padded]
  const uint32_t* wbits;   // [n_padded, k_padded / 32]
  const float* wscale;     // [groups, n_padded]
  const float* cterm;      // [n_padded]
  const float* bias;       // [n] float32, or nullptr
  void* y;                 // [m, n]
  int m, m_padded, n, n_padded, k_padded;
  int group_size;          // as BinarizeProblem
  int groups;
  OutKind out;
};

void launch_binarize(const BinarizeProblem& p, cudaStream_t stream);
void launch_w1a1_gemm(const W1A1Problem& p, cudaStream_t stream);

}  // namespace qtool
