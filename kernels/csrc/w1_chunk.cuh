// The math of the W1A16 GEMV's 256-k chunks, shared by its two kernels (w1_gemv.cu: per-warp cp.async rings;
// w1_gemv_bulk.cu: block-wide stages filled by Hopper's bulk copies). The encoding is w1_gemv.cu's header.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "w1_kernels.h"
#include "wo_common.cuh"

namespace qtool {
namespace w1 {

constexpr int kStripes = 2;        // 16-row stripes per block
constexpr int kSteps = 16;         // 16-k mma steps per chunk

template <typename T>
constexpr uint32_t kMinusOnes = std::is_same_v<T, __half> ? 0xBC00BC00u : 0xBF80BF80u;  // (-1, -1)

// The A register holding the codes at bits 15 - s and 31 - s of `word`, as a pair of T (+-1).
template <typename T>
// One shift and one LOP3: written as C++, nvcc emits the AND and the XOR as two LOP3 (each takes one immediate),
// 3 instructions per register and 12 per mma, which made the kernel issue-bound (Nsight, session 17). With both
// constants as operands of one lop3 the two fold into one instruction.
__device__ inline uint32_t sign_pair(uint32_t word, int s) {
  uint32_t pair;
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;"  // (a & b) ^ c
      : "=r"(pair)
      : "r"(word << s), "r"(0x80008000u), "r"(kMinusOnes<T>));
  return pair;
}

// This lane's words of one chunk (both stripes) and its rows' scales of the chunk's groups, from a ring slot.
template <int GPC>
struct ChunkRegs {
  static constexpr int NS = GPC == 0 ? 1 : GPC;
  uint32_t w[kStripes][4];
  float sc[kStripes][2 * NS];  // [stripe][row g: groups 0..NS-1, row g + 8: groups]

  // codes: the chunk's 32 lane words of stripe 0 (stripe s at codes + s * code_stride); scales: its [8, 2, NS]
  // floats of stripe 0 (stripe s at scales + s * scale_stride).
  __device__ void read(const uint4* codes, int code_stride, const float* scales, int scale_stride, int lane) {
#pragma unroll
    for (int s = 0; s < kStripes; ++s) words_of(codes[s * code_stride + lane], w[s]);
    if constexpr (GPC > 0) {
      const float* f = scales + (lane / 4) * 2 * NS;
#pragma unroll
      for (int s = 0; s < kStripes; ++s) {
        if constexpr (NS == 1) {
          const float2 v = *reinterpret_cast<const float2*>(f + s * scale_stride);
          sc[s][0] = v.x;
          sc[s][1] = v.y;
        } else {
#pragma unroll
          for (int i = 0; i < NS / 2; ++i) {
            const float4 v = *reinterpret_cast<const float4*>(f + s * scale_stride + 4 * i);
            sc[s][4 * i] = v.x;
            sc[s][4 * i + 1] = v.y;
            sc[s][4 * i + 2] = v.z;
            sc[s][4 * i + 3] = v.w;
          }
        }
      }
    }
  }
};

// One chunk's 16 mma steps for both stripes, scaled per group into acc. xc: this lane's B words of the chunk.
template <typename T, int GPC, bool XS>
__device__ inline void chunk_math(const ChunkRegs<GPC>& cr, const uint32_t* xc, float (&acc)[kStripes][4]) {
  constexpr int NS = ChunkRegs<GPC>::NS, SPG = kSteps / NS;
#pragma unroll
  for (int q = 0; q < NS; ++q) {
    float d[kStripes][4] = {};
#pragma unroll
    for (int jj = 0; jj < SPG; ++jj) {
      const int j = q * SPG + jj;
      uint2 b;
      if constexpr (XS) {
        b = *reinterpret_cast<const uint2*>(xc + 8 * j);
      } else {
        b = __ldg(reinterpret_cast<const uint2*>(xc + 8 * j));
      }
#pragma unroll
      for (int s = 0; s < kStripes; ++s) {
        uint32_t a[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = sign_pair<T>(cr.w[s][j / 4], 4 * (j % 4) + r);
        mma_16816<T>(d[s], a, b.x, b.y);
      }
    }
#pragma unroll
    for (int s = 0; s < kStripes; ++s) {
      if constexpr (GPC > 0) {
        acc[s][0] = fmaf(cr.sc[s][q], d[s][0], acc[s][0]);
        acc[s][1] = fmaf(cr.sc[s][q], d[s][1], acc[s][1]);
        acc[s][2] = fmaf(cr.sc[s][NS + q], d[s][2], acc[s][2]);
        acc[s][3] = fmaf(cr.sc[s][NS + q], d[s][3], acc[s][3]);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[s][i] += d[s][i];
      }
    }
  }
}

}  // namespace w1
}  // namespace qtool
