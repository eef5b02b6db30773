// Weight-only GEMV on CUDA cores for 1 <= m <= 8 tokens: y = act(x @ dequant(W)^T + bias).
//
// At small m the GEMM is a stream over the weights, so the kernel is organized around reading
// them at full bandwidth: one block per 16-row stripe, its 8 warps taking interleaved chunks
// (512 contiguous bytes per warp and load, 4 loads in flight per lane). Each lane holds two rows
// (the mma fragment layout of wo_kernels.h, shared with the tensor-core kernel), decodes its codes
// with the bit tricks of wo_decode.cuh, dequantizes in float32 exactly as the reference does
// ((q - zero_point) * scale, scale kept float32) and accumulates in float32. Activations are read
// as bf16/fp16 pairs through L1, where all warps of the SM share them. The 4 lanes of a row group
// are reduced with shuffles, the 8 warps through shared memory, then bias and activation are fused.
#include <cstdint>

#include "wo_common.cuh"

namespace qtool {
namespace {

constexpr int kWarps = 8;   // warps per block, all on the same stripe, splitting its chunks
constexpr int kUnroll = 4;  // 16-byte weight loads each lane keeps in flight

template <typename T,    // activation and output type: __half or __nv_bfloat16
          int BITS,      // weight code width: 4 or 8
          int M>         // tokens, 1..8: each lane keeps 2 * M float32 partial sums
__device__ inline void gemv_chunk(const uint4& packed,            // this lane's 16 bytes of the chunk
                                  int k_base,                     // first k of the chunk
                                  int row0,                       // first row of this lane (second: row0 + 8)
                                  const PackedWeightView& w,      // scales, zero points, sizes
                                  const uint32_t* __restrict__ x, // [M, k_padded / 2] activation pairs
                                  float (&acc)[M][2]) {           // partial sums of (token, row0 / row0 + 8)
  constexpr int SUB = 16 / BITS;  // 16x16 subtiles per chunk
  constexpr float kBias = BITS == 4 ? kInt4Bias : kInt8Bias;
  uint32_t words[4];
  words_of(packed, words);
  float v[SUB][4][2];
  decode_chunk<BITS>(words, v);
  const int t = threadIdx.x % 4;
  const int x_row = w.k_padded / 2;
#pragma unroll
  for (int j = 0; j < SUB; ++j) {
    const int k0 = k_base + 16 * j;
    const int grp = k0 >> w.group_shift;
    const float2 sz0 = group_params(w, grp, row0), sz1 = group_params(w, grp, row0 + 8);
    // (v - (bias + z)) * s as one FMA: v * s + c with c = -(bias + z) * s. Rounding c costs at most
    // 2^-24 * 151 * s, far below the bf16 step of any nonzero weight (>= s).
    const float c0 = -(kBias + sz0.y) * sz0.x, c1 = -(kBias + sz1.y) * sz1.x;
    float wt[4][2];
#pragma unroll
    for (int p = 0; p < 4; ++p)
#pragma unroll
      for (int h = 0; h < 2; ++h) wt[p][h] = fmaf(v[j][p][h], p % 2 ? sz1.x : sz0.x, p % 2 ? c1 : c0);
#pragma unroll
    for (int m = 0; m < M; ++m) {
      // Registers 0, 1 cover k0 + 2t + {0, 1}; registers 2, 3 the same 8 columns to the right.
      const float2 xa = pair_to_float2(__ldg(x + m * x_row + k0 / 2 + t), T{});
      const float2 xb = pair_to_float2(__ldg(x + m * x_row + k0 / 2 + t + 4), T{});
      acc[m][0] += wt[0][0] * xa.x + wt[0][1] * xa.y + wt[2][0] * xb.x + wt[2][1] * xb.y;
      acc[m][1] += wt[1][0] * xa.x + wt[1][1] * xa.y + wt[3][0] * xb.x + wt[3][1] * xb.y;
    }
  }
}

template <typename T,    // activation and output type: __half or __nv_bfloat16
          int BITS,      // weight code width: 4 or 8
          int M>         // tokens, 1..8
__global__ void __launch_bounds__(kWarps * 32) wo_gemv_kernel(const WoProblem p) {  // grid: one block per stripe
  constexpr int KC = chunk_k(BITS);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int stripe = blockIdx.x;
  const int row0 = stripe * kStripeRows + lane / 4;
  const int nchunks = p.w.k_padded / KC;
  const uint4* wq = reinterpret_cast<const uint4*>(p.w.qweight) + static_cast<size_t>(stripe) * nchunks * 32 + lane;
  const uint32_t* x = static_cast<const uint32_t*>(p.x);

  float acc[M][2] = {};
  for (int c0 = warp; c0 < nchunks; c0 += kWarps * kUnroll) {
    uint4 packed[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // issue all loads first so they overlap
      const int c = c0 + u * kWarps;
      packed[u] = c < nchunks ? load_streaming(wq + static_cast<size_t>(c) * 32) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * kWarps;
      if (c < nchunks) gemv_chunk<T, BITS, M>(packed[u], c * KC, row0, p.w, x, acc);
    }
  }

  // Sum the 4 lanes (k columns) of each row group, then the warps.
  __shared__ float partial[kWarps][M][kStripeRows];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      acc[m][r] += __shfl_xor_sync(0xffffffffu, acc[m][r], 1);
      acc[m][r] += __shfl_xor_sync(0xffffffffu, acc[m][r], 2);
      if (lane % 4 == 0) partial[warp][m][lane / 4 + 8 * r] = acc[m][r];
    }
  __syncthreads();
  if (threadIdx.x < M * kStripeRows) {
    const int m = threadIdx.x / kStripeRows, r = threadIdx.x % kStripeRows;
    const int n = stripe * kStripeRows + r;
    if (n < p.w.n) {
      float v = bias_at(p.bias, n);
#pragma unroll
      for (int i = 0; i < kWarps; ++i) v += partial[i][m][r];
      store(static_cast<T*>(p.y) + static_cast<size_t>(m) * p.w.n + n, activate(v, p.act));
    }
  }
}

// Instantiates the kernel for M = p.m by recursion over M (the kernel needs M at compile time).
template <typename T,    // activation and output type
          int BITS,      // weight code width
          int M>         // candidate token count, 1..kMaxGemvTokens
void launch_m(const WoProblem& p,         // the problem, 1 <= p.m <= kMaxGemvTokens
              cudaStream_t stream) {      // the caller's stream
  if constexpr (M <= kMaxGemvTokens) {
    if (p.m == M) {
      wo_gemv_kernel<T, BITS, M><<<p.w.n_padded / kStripeRows, kWarps * 32, 0, stream>>>(p);
      return;
    }
    launch_m<T, BITS, M + 1>(p, stream);
  }
}

}  // namespace

void launch_wo_gemv(const WoProblem& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  if (p.w.num_bits == 4) {
    bf16 ? launch_m<__nv_bfloat16, 4, 1>(p, stream) : launch_m<__half, 4, 1>(p, stream);
  } else {
    bf16 ? launch_m<__nv_bfloat16, 8, 1>(p, stream) : launch_m<__half, 8, 1>(p, stream);
  }
}

}  // namespace qtool
