// What the int8-planes GEMVs share (wo_planes.cu for 4-bit codes, w8_planes.cu for int8 rows): x as two int8 planes
// (x_planes, wo_kernels.h) on mma.m16n8k32.s8, the mma's 8 columns holding up to 4 tokens' high and low planes.
#pragma once

#include <cstdint>

#include "wo_common.cuh"  // WoProblem, store, bias_at, activate

namespace qtool {

// D += A B on the int8 tensor cores (PTX ISA, "mma.m16n8k32"): lane (g, t) holds A rows g / g + 8 at k 4t..4t+3
// (a0 / a1) and 16+4t..16+4t+3 (a2 / a3), B column g at k 4t..4t+3 (b0) and 16+4t..16+4t+3 (b1), and D rows g /
// g + 8 at columns 2t, 2t + 1 (d0, d1 / d2, d3).
__device__ inline void mma_s8_16832(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A B (no accumulator: C is zero, the register-free form).
__device__ inline void mma_s8_16832_first(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %10, %10, %10};"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(0));
}

// The A registers of one 16 x 32 tile from its two 16-k subtiles as int8 bytes (rows g / g + 8 in each 64-bit half:
// int4_word_s8x16, low_word_s8).
__device__ inline void tile_a(uint64_t first, uint64_t second, uint32_t (&a)[4]) {
  a[0] = static_cast<uint32_t>(first);
  a[1] = static_cast<uint32_t>(first >> 32);
  a[2] = static_cast<uint32_t>(second);
  a[3] = static_cast<uint32_t>(second >> 32);
}

// acc[r] += s_r (hi + lo / 254): the mma sums d of x's two planes (columns 2t, 2t + 1) recombined for rows g (r = 0,
// scale s0) and g + 8 (r = 1, s1).
__device__ inline void fold_planes(const int (&d)[4], float s0, float s1, float (&acc)[2]) {
  acc[0] = fmaf(s0, fmaf(static_cast<float>(d[1]), 1.0f / 254.0f, static_cast<float>(d[0])), acc[0]);
  acc[1] = fmaf(s1, fmaf(static_cast<float>(d[3]), 1.0f / 254.0f, static_cast<float>(d[2])), acc[1]);
}

// acc[r] += s_r (254 hi + lo) with s_r = s / 254 (the tile kernel): one IMAD in place of a conversion and an FFMA.
// Exact in int32 over a pair of chunks: |254 hi + lo| <= 255 x 127 x 128 x 128 < 2^31.
__device__ inline void fold_planes254(const int (&d)[4], float s0, float s1, float (&acc)[2]) {
  acc[0] = fmaf(s0, static_cast<float>(d[0] * 254 + d[1]), acc[0]);
  acc[1] = fmaf(s1, static_cast<float>(d[2] * 254 + d[3]), acc[1]);
}

// 16 x the chunk's sum of x (hi + lo / 254) for the token of this lane's column pair, from the chunk's B fragment:
// two mma with 16 in every byte of A. With zero points (w = s (q - z), A = 16 q) acc[r] -= s_r z_r times it.
__device__ inline float chunk_plane_sum(const uint4& bv) {
  const uint32_t sixteens[4] = {0x10101010u, 0x10101010u, 0x10101010u, 0x10101010u};
  int e[4] = {};  // e[0] / e[1]: the high / low plane's sum (e[2], e[3] alike)
  mma_s8_16832(e, sixteens, bv.x, bv.y);
  mma_s8_16832(e, sixteens, bv.z, bv.w);
  return fmaf(static_cast<float>(e[1]), 1.0f / 254.0f, static_cast<float>(e[0]));
}

// One 64-k chunk's two mma for one n-tile into its int32 sums d (started over where `first`) from A tiles a (k 0..31
// / 32..63) and the n-tile's B fragment bv; with zero points (A = 16 q) acc[r] -= s z times the chunk's sum of x
// (sz0 / sz1: rows g / g + 8). wo_planes_tile.cu and wo_split.cu.
template <bool ASYM>
__device__ inline void chunk_ntile_mma(bool first, const uint32_t (&a)[2][4], const uint4& bv, float sz0, float sz1,
                                       int (&d)[4], float (&acc)[2]) {
  if (first)
    mma_s8_16832_first(d, a[0], bv.x, bv.y);  // a chunk's (or pair's) first sum starts at zero
  else
    mma_s8_16832(d, a[0], bv.x, bv.y);
  mma_s8_16832(d, a[1], bv.z, bv.w);
  if constexpr (ASYM) {
    const float sum = chunk_plane_sum(bv);
    acc[0] = fmaf(-sz0, sum, acc[0]);
    acc[1] = fmaf(-sz1, sum, acc[1]);
  }
}

// The end of a planes GEMV block (wo_planes.cu, wo_planes_low.cu): each lane's sums for token 4 i + t of n-tile i
// (tokens < m) of rows g and g + 8 (acc[i]) summed over the WARPS / STRIPES warps of each stripe, then y = sum *
// scale[token] * unit + bias. With p.gated_out (a gated MLP's gate/up rows interleaved by 8, quantize/mlp.py) each
// stripe's rows r and r + 8 are gate and up of one product: y [m, n / 2] = silu(g) * u, g and u rounded to T first
// (as the GEMV's output would be, then silu_mul: the same bits as the two kernels).
template <typename T, int WARPS, int STRIPES, int NT>
__device__ inline void store_stripes(const WoProblem& p, const float (&acc)[NT][2], const float* scale, float unit) {
  constexpr int SWARPS = WARPS / STRIPES, TOKENS = 4 * NT;
  __shared__ float partial[WARPS][kStripeRows][TOKENS];
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    if (4 * i + t < p.m) {
      partial[threadIdx.x / 32][g][4 * i + t] = acc[i][0];
      partial[threadIdx.x / 32][g + 8][4 * i + t] = acc[i][1];
    }
  }
  __syncthreads();
  auto row_sum = [&](int s, int m, int r, int n) {
    float v = 0.0f;
#pragma unroll
    for (int i = 0; i < SWARPS; ++i) v += partial[s * SWARPS + i][r][m];
    return v * (scale[m] * unit) + bias_at(opaque(p.bias), n);
  };
  if (p.gated_out) {  // (n a multiple of 16: every stripe whole)
    for (int e = threadIdx.x; e < STRIPES * p.m * 8; e += WARPS * 32) {
      const int s = e / (p.m * 8), m = e / 8 % p.m, r = e % 8;
      const int n = (blockIdx.x * STRIPES + s) * kStripeRows + r;
      if (n < p.w.n) {
        const float g = round_to<T>(row_sum(s, m, r, n)), u = round_to<T>(row_sum(s, m, r + 8, n + 8));
        store(static_cast<T*>(p.y) + static_cast<size_t>(m) * (p.w.n / 2) + n / 16 * 8 + r, silu_times(g, u));
      }
    }
    return;
  }
  for (int e = threadIdx.x; e < STRIPES * p.m * kStripeRows; e += WARPS * 32) {
    const int s = e / (p.m * kStripeRows), m = e / kStripeRows % p.m, r = e % kStripeRows;
    const int n = (blockIdx.x * STRIPES + s) * kStripeRows + r;
    if (n < p.w.n) store(static_cast<T*>(p.y) + static_cast<size_t>(m) * p.w.n + n, activate(row_sum(s, m, r, n), p.act));
  }
}

// One n-tile (m <= 4 tokens): acc[0] / acc[1] for rows g / g + 8.
template <typename T, int WARPS, int STRIPES>
__device__ inline void store_stripes(const WoProblem& p, const float (&acc)[2], const float* scale, float unit) {
  const float tiles[1][2] = {{acc[0], acc[1]}};
  store_stripes<T, WARPS, STRIPES, 1>(p, tiles, scale, unit);
}

}  // namespace qtool
