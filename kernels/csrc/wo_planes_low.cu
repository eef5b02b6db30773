// wo_planes_gemv for 2- and 3-bit codes: symmetric weights with groups of >= 64 k (or per channel) at 1-4 tokens on
// the int8 tensor cores, x given as x_planes' planes (plane_slot order, as for 4-bit). Written in session 37 without
// device time, correct on its first GPU run and routed in session 38 by the 4-bit rule (kernels/int8_planes.py,
// LOWBIT_PLANES: W3 g128 at 3-4 tokens 1.86-2.33x -> 2.31-3.29x bf16, BENCHMARKS.md "session 38").
//
// Why (kernels/NOTES.md, "Session 36"): the ring GEMV at one token costs ~22 instructions per 16 x 16 subtile at every
// width, so W3 / W2 stream 25-50% fewer bytes in nearly W4's time. Here subtile j's codes come from the same word as
// the ring GEMV's (low_bit_nibbles) and become int8 A registers in one shift and one LOP3 per row (low_word_s8:
// 2^(8 - bits) q, exact), the 128-k chunk being four m16n8k32 tiles whose B is the planes' two 64-k halves. Groups of
// 64 split the chunk in two: the sums are scaled per half.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "pdl.cuh"
#include "planes.cuh"
#include "wo_common.cuh"
#include "wo_decode.cuh"

namespace qtool {
namespace {

constexpr int kWarps = 8;
constexpr int kBatch = 2;     // chunks per lane in flight: 128 k each
constexpr int kChunkK = 128;  // chunk_k(2), chunk_k(3)

template <typename T, int BITS, int STRIPES>
__global__ void __launch_bounds__(kWarps * 32, 4) wo_planes_low_kernel(const WoProblem p) {
  constexpr int SWARPS = kWarps / STRIPES;
  __shared__ float scale[kPlanesMaxTokens];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32 % SWARPS;
  const int g = lane / 4, t = lane % 4;
  const int stripe = blockIdx.x * STRIPES + threadIdx.x / 32 / SWARPS;
  const bool live = stripe < p.w.n_padded / kStripeRows;
  const int nchunks = live ? p.w.k_padded / kChunkK : 0;
  const bool halves = p.w.group_shift < 7;  // groups of 64: a scale per 64-k half of the chunk

  const float* par = opaque(p.w.scale + stripe * kStripeRows + g + 8 * (t % 2));  // t = 0 / 1: row g / g + 8
  const uint32_t gstride = p.w.n_padded;
  const uint4* codes = reinterpret_cast<const uint4*>(p.w.qweight) + static_cast<size_t>(stripe) * nchunks *
                                                                           chunk_vecs(BITS);
  const int brow = g < 2 * p.m ? g : 0;
  const uint4* gsrc = reinterpret_cast<const uint4*>(p.planes + static_cast<size_t>(brow) * p.w.k_padded + 16 * t);

  uint4 lo[kBatch];
  uint2 hi[BITS == 3 ? kBatch : 1];
  uint4 b0[kBatch], b1[kBatch];  // the planes' 64-k halves of the slot's chunk
  float prm[kBatch][2] = {};
  int next = warp;
  auto load_codes = [&](int u) {
    if (next >= nchunks) return;
    const uint4* base = codes + static_cast<size_t>(next) * chunk_vecs(BITS);
    lo[u] = load_streaming(base + lane);
    if constexpr (BITS == 3) hi[u] = load_streaming(reinterpret_cast<const uint2*>(base + 32) + lane);
    const uint32_t k = static_cast<uint32_t>(next) * kChunkK;
    prm[u][0] = __ldg(par + (k >> p.w.group_shift) * gstride);
    prm[u][1] = halves ? __ldg(par + ((k + 64) >> p.w.group_shift) * gstride) : prm[u][0];
  };
  auto load_planes = [&](int u, int c) {
    if (c < nchunks) b0[u] = __ldg(gsrc + 8 * c), b1[u] = __ldg(gsrc + 8 * c + 4);  // 64-k halves 2c, 2c + 1
  };
  // The first fill's codes and scales before the wait (static weights); the planes, written by x_planes, after it.
#pragma unroll
  for (int u = 0; u < kBatch; ++u, next += SWARPS) load_codes(u);
  pdl_wait_then_release();
#pragma unroll
  for (int u = 0; u < kBatch; ++u) load_planes(u, warp + u * SWARPS);
  if (threadIdx.x < p.m) scale[threadIdx.x] = __ldg(p.xscale + threadIdx.x);

  float acc[2] = {};  // token t: rows g, g + 8, in units of 2^(8 - BITS) s_x
  for (int c0 = warp; c0 < nchunks; c0 += SWARPS * kBatch) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (c0 + u * SWARPS >= nchunks) break;  // warp-uniform
      const uint32_t w[4] = {lo[u].x, lo[u].y, lo[u].z, lo[u].w};
      uint32_t hw[2] = {0u, 0u};
      if constexpr (BITS == 3) hw[0] = hi[u].x, hw[1] = hi[u].y;
      int d[4] = {};
#pragma unroll
      for (int tile = 0; tile < 4; ++tile) {  // subtiles 2 tile, 2 tile + 1
        const uint64_t r0 = low_word_s8<BITS>(low_bit_nibbles<BITS>(w, hw, 2 * tile));
        const uint64_t r1 = low_word_s8<BITS>(low_bit_nibbles<BITS>(w, hw, 2 * tile + 1));
        uint32_t a[4];
        tile_a(r0, r1, a);
        const uint4 bv = tile < 2 ? b0[u] : b1[u];
        mma_s8_16832(d, a, tile % 2 ? bv.z : bv.x, tile % 2 ? bv.w : bv.y);
        if (tile == 1 && halves) {  // the first half's group ends here
          const float s0 = __shfl_sync(0xffffffffu, prm[u][0], 0, 4), s1 = __shfl_sync(0xffffffffu, prm[u][0], 1, 4);
          fold_planes(d, s0, s1, acc);
          d[0] = d[1] = d[2] = d[3] = 0;
        }
      }
      const float s0 = __shfl_sync(0xffffffffu, prm[u][1], 0, 4), s1 = __shfl_sync(0xffffffffu, prm[u][1], 1, 4);
      fold_planes(d, s0, s1, acc);
      load_codes(u);
      load_planes(u, next);
      next += SWARPS;
    }
  }

  prefetch_next_layer(p, kWarps * 32);

  store_stripes<T, kWarps, STRIPES>(p, acc, scale, 1.0f / (1 << (8 - BITS)));
}

template <typename T, int BITS, int STRIPES>
void launch_typed(const WoProblem& p, cudaStream_t stream) {
  const int blocks = (p.w.n_padded / kStripeRows + STRIPES - 1) / STRIPES;
  launch_maybe_pdl(wo_planes_low_kernel<T, BITS, STRIPES>, p.pdl, dim3(blocks), dim3(kWarps * 32), 0, stream, p);
}

template <typename T, int BITS>
void launch_stripes(const WoProblem& p, int stripes, cudaStream_t stream) {
  stripes == 4   ? launch_typed<T, BITS, 4>(p, stream)
  : stripes == 2 ? launch_typed<T, BITS, 2>(p, stream)
                 : launch_typed<T, BITS, 1>(p, stream);
}

template <typename T>
void launch_bits(const WoProblem& p, int stripes, cudaStream_t stream) {
  p.w.num_bits == 2 ? launch_stripes<T, 2>(p, stripes, stream) : launch_stripes<T, 3>(p, stripes, stream);
}

}  // namespace

void launch_wo_planes_low(const WoProblem& p, int stripes, cudaStream_t stream) {
  p.dtype == ScalarKind::kBFloat16 ? launch_bits<__nv_bfloat16>(p, stripes, stream)
                                   : launch_bits<__half>(p, stripes, stream);
}

}  // namespace qtool
