// GEMM for 8-bit weights (int8, FP8 E4M3 / E5M2) stored row-major [n, k] with per-channel or 128 x 128 block scales
// and 16-bit activations, for 17-256 tokens: the sizes between w8_gemv (whose warps each load their own activations,
// so x is read once per 16 weight rows: 32 tokens of a 4096-deep layer are already 8x the weight bytes) and the
// Hopper GEMMs (which need the activations quantized, or for W8A16 convert in a CUTLASS mainloop that issue-bound at
// 0.65-0.86x bf16 at 64-256 tokens, BENCHMARKS.md session 16). Written without a GPU (session 22): unmeasured.
// Tiles, activation stages and the split-k epilogue: tile_gemm.cuh.
//
// Fragments as in w8_gemv: lane (g = lane / 4, t = lane % 4) holds 16 codes of rows g and g + 8 at k0 + 16 t and
// feeds step j (0..3) the codes 4j..4j+3 in the places the PTX ISA gives to logical k {2t, 2t+1, 2t+8, 2t+9}; B
// takes the activations of the same physical k of token g, read from shared memory with one 16-byte load per
// token tile and half tile. A decoded A fragment serves all 8 token tiles.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

#include "tile_gemm.cuh"
#include "w8_decode.cuh"
#include "w8a8.h"
#include "wo_common.cuh"

namespace qtool {
namespace {

using tile::kBlockRows;
using tile::kResidentStages;
using tile::kStageK;
using tile::kTokens;
using tile::kTokenTiles;
using tile::kWarps;
using tile::XStage;
constexpr int kTileK = 64;  // k of one lane load (16 codes) x 4 lanes: two tiles per stage

// This warp's weights for stage s: two tiles x rows (g, g + 8), 16 codes each; zeros past k_end or n.
__device__ inline void load_weights(const W8GemmProblem& p, int row0, int k_stage, int k_end, int lane,
                                    uint4 (&w)[2][2]) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
    const int k = k_stage + u * kTileK + 16 * t;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = row0 + g + 8 * h;
      w[u][h] = k < k_end && row < p.n
                    ? load_streaming(reinterpret_cast<const uint4*>(p.w + static_cast<long long>(row) * p.k + k))
                    : make_uint4(0, 0, 0, 0);
    }
  }
}

template <typename T>
__device__ inline void load_activations(const W8GemmProblem& p, int token0, int k_stage, int k_end, XStage<T>& stage) {
  tile::load_activations(static_cast<const T*>(p.x), p.m, p.k, token0, k_stage, k_end, stage);
}

// The stage's 128 x 128 block scale as a pair of T (Blocked), which multiplies the decoded codes: the block's 64
// rows and the stage's 128 k lie in one scale block. The product rounds once to T per weight, as dequantizing to T
// would; per-channel scales are applied to the float32 sums instead (tile::store_tile).
template <typename T, bool Blocked>
__device__ inline uint32_t stage_scale(const W8GemmProblem& p, int k_stage) {
  if constexpr (!Blocked) {
    return 0u;
  } else {
    const int kblocks = (p.k + 127) / 128;
    return float_to_pair(__ldg(p.scale + static_cast<long long>(blockIdx.x * kBlockRows / 128) * kblocks + k_stage / 128),
                         T{});
  }
}

template <typename T>
__device__ inline uint32_t mul_pair(uint32_t a, uint32_t b) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return as_u32(__hmul2(as_pair<__nv_bfloat162>(a), as_pair<__nv_bfloat162>(b)));
  } else {
    return as_u32(__hmul2(as_pair<__half2>(a), as_pair<__half2>(b)));
  }
}

// acc += this warp's stripe x the stage's activations, for the two tiles of weights w (Blocked: codes times the
// stage's block scale sp).
template <typename T, CodeFormat F, bool Blocked>
__device__ inline void multiply_stage(const XStage<T>& stage, const uint4 (&w)[2][2], uint32_t sp, int lane,
                                      float (&acc)[kTokenTiles][4]) {
  constexpr bool Pairs02 = kPairs02<T, F>;
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int u = 0; u < 2; ++u) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {  // activations k +0..7 (steps 0, 1), then +8..15 (steps 2, 3)
      uint4 xv[kTokenTiles];
#pragma unroll
      for (int tt = 0; tt < kTokenTiles; ++tt)
        xv[tt] = *reinterpret_cast<const uint4*>(&stage.v[tt * 8 + g][u * kTileK + 16 * t + 8 * half]);
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int j = 2 * half + jj;
        uint32_t a[4];
        decode4<T, F>((&w[u][0].x)[j], a[0], a[2]);  // row g: k +0,+1 and +2,+3 of step j
        decode4<T, F>((&w[u][1].x)[j], a[1], a[3]);  // row g + 8
        if constexpr (Blocked) {
#pragma unroll
          for (int r = 0; r < 4; ++r) a[r] = mul_pair<T>(a[r], sp);
        }
#pragma unroll
        for (int tt = 0; tt < kTokenTiles; ++tt) {
          const uint32_t* xw = &xv[tt].x;  // words 2jj, 2jj + 1: k +0,+1 and +2,+3 of step j
          const uint32_t b0 = Pairs02 ? __byte_perm(xw[2 * jj], xw[2 * jj + 1], 0x5410) : xw[2 * jj];
          const uint32_t b1 = Pairs02 ? __byte_perm(xw[2 * jj], xw[2 * jj + 1], 0x7632) : xw[2 * jj + 1];
          mma_16816<T>(acc[tt], a, b0, b1);
        }
      }
    }
  }
}

// One stage of the pipeline: the next stage's weights and activations go out, then this one's math.
template <typename T, CodeFormat F, bool Blocked>
__device__ inline void run_stage(const W8GemmProblem& p, int s, int stages, int row0, int token0, int k_begin,
                                 int k_end, XStage<T> (&xs)[2], const uint4 (&w)[2][2], uint4 (&w_next)[2][2],
                                 float (&acc)[kTokenTiles][4]) {
  const int lane = threadIdx.x % 32;
  if (s + 1 < stages) {
    load_weights(p, row0, k_begin + (s + 1) * kStageK, k_end, lane, w_next);
    load_activations(p, token0, k_begin + (s + 1) * kStageK, k_end, xs[(s + 1) % 2]);
  } else {
    cp_async_commit();  // an empty group keeps the count below uniform
  }
  cp_async_wait<1>();  // this thread's copies of stage s have landed
  __syncthreads();     // and every thread's
  multiply_stage<T, F, Blocked>(xs[s % 2], w, stage_scale<T, Blocked>(p, k_begin + s * kStageK), lane, acc);
  __syncthreads();     // buffer s % 2 is refilled by stage s + 2's copies
}

// Where the block's results go: per-channel scales on the float32 sums, block scales already in the codes.
__device__ inline tile::Out outputs(const W8GemmProblem& p) {
  return {p.y, p.bias, p.blocked ? nullptr : p.scale, p.workspace, p.counters, p.m, p.n};
}

// Variant 0 ("staged"): the activations go through two shared-memory stages, one barrier pair per stage.
template <typename T, CodeFormat F, bool Blocked>
__global__ void __launch_bounds__(kWarps * 32, 4) w8_gemm_staged(W8GemmProblem p) {
  __shared__ XStage<T> xs[2];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = blockIdx.x * kBlockRows + 16 * warp;  // this warp's stripe
  const int token0 = blockIdx.z * kTokens;
  const int k_begin = blockIdx.y * p.k_split, k_end = min(p.k, k_begin + p.k_split);
  const int stages = (k_end - k_begin + kStageK - 1) / kStageK;

  float acc[kTokenTiles][4] = {};
  uint4 wa[2][2], wb[2][2];  // two register sets, alternating stages (no copies between them)
  load_weights(p, row0, k_begin, k_end, lane, wa);
  load_activations(p, token0, k_begin, k_end, xs[0]);
  for (int s = 0; s < stages; s += 2) {
    run_stage<T, F, Blocked>(p, s, stages, row0, token0, k_begin, k_end, xs, wa, wb, acc);
    if (s + 1 < stages) run_stage<T, F, Blocked>(p, s + 1, stages, row0, token0, k_begin, k_end, xs, wb, wa, acc);
  }
  tile::store_tile<T>(outputs(p), row0, token0, acc);
}

// Variant 1 ("resident"): the block's whole k range of activations is loaded once (at most kResidentStages stages,
// dynamic shared memory), then each warp streams its weights with no barrier at all, as w8_gemv's warps do. wo_gemm
// v3, whose warps met at a barrier per 128-k piece, streamed 0.5-1.1 TB/s (kernels/NOTES.md): this is the A/B.
// Two blocks per SM (the activations' shared memory) keep ~16 KB of weights in flight per SM in registers, about
// half of what 4.3 TB/s needs; variant 2 adds L2 prefetches p.prefetch_stages stages ahead of the loads.
template <typename T, CodeFormat F, bool Blocked>
__global__ void __launch_bounds__(kWarps * 32, 2) w8_gemm_resident(W8GemmProblem p) {
  extern __shared__ uint4 smem[];
  XStage<T>* xs = reinterpret_cast<XStage<T>*>(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = blockIdx.x * kBlockRows + 16 * warp;
  const int token0 = blockIdx.z * kTokens;
  const int k_begin = blockIdx.y * p.k_split, k_end = min(p.k, k_begin + p.k_split);
  const int stages = (k_end - k_begin + kStageK - 1) / kStageK;

  // Stage s's weight rows into L2 ahead of their loads (p.prefetch_stages ahead): lanes 0..15, one row each, its
  // 128 codes of the stage on at most two lines.
  auto prefetch = [&](int s) {
    const int row = row0 + lane;
    if (p.prefetch_stages > 0 && lane < 16 && s < stages && row < p.n) {
      const uint8_t* at = p.w + static_cast<long long>(row) * p.k + k_begin + s * kStageK;
      tile::prefetch_l2_line(at);
      tile::prefetch_l2_line(at + kStageK - 1);
    }
  };
  float acc[kTokenTiles][4] = {};
  uint4 wa[2][2], wb[2][2];
  load_weights(p, row0, k_begin, k_end, lane, wa);  // in flight while the activations land
  for (int s = 1; s <= p.prefetch_stages; ++s) prefetch(s);
  for (int s = 0; s < stages; ++s) load_activations(p, token0, k_begin + s * kStageK, k_end, xs[s]);
  cp_async_wait<0>();
  __syncthreads();
  for (int s = 0; s < stages; s += 2) {
    prefetch(s + 1 + p.prefetch_stages);
    prefetch(s + 2 + p.prefetch_stages);
    if (s + 1 < stages) load_weights(p, row0, k_begin + (s + 1) * kStageK, k_end, lane, wb);
    multiply_stage<T, F, Blocked>(xs[s], wa, stage_scale<T, Blocked>(p, k_begin + s * kStageK), lane, acc);
    if (s + 1 < stages) {
      if (s + 2 < stages) load_weights(p, row0, k_begin + (s + 2) * kStageK, k_end, lane, wa);
      multiply_stage<T, F, Blocked>(xs[s + 1], wb, stage_scale<T, Blocked>(p, k_begin + (s + 1) * kStageK), lane,
                                    acc);
    }
  }
  tile::store_tile<T>(outputs(p), row0, token0, acc);
}

template <typename T, CodeFormat F, bool Blocked>
void launch_scales(const W8GemmProblem& p, dim3 grid, cudaStream_t stream) {
  if (p.variant == 0) {
    w8_gemm_staged<T, F, Blocked><<<grid, kWarps * 32, 0, stream>>>(p);
    return;
  }  // 1, 2: resident (2: with L2 prefetches, p.prefetch_stages)
  static const bool sized = [] {  // above the default 48 KB of dynamic shared memory, once per kernel
    cudaFuncSetAttribute(w8_gemm_resident<T, F, Blocked>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         kResidentStages * static_cast<int>(sizeof(XStage<T>)));
    return true;
  }();
  (void)sized;
  const int stages = p.k_split / kStageK;
  w8_gemm_resident<T, F, Blocked><<<grid, kWarps * 32, stages * sizeof(XStage<T>), stream>>>(p);
}

template <typename T, CodeFormat F>
void launch_format(const W8GemmProblem& p, dim3 grid, cudaStream_t stream) {
  if (p.blocked)
    launch_scales<T, F, true>(p, grid, stream);
  else
    launch_scales<T, F, false>(p, grid, stream);
}

template <typename T>
void launch_typed(const W8GemmProblem& p, dim3 grid, cudaStream_t stream) {
  switch (p.format) {
    case CodeFormat::kInt8: launch_format<T, CodeFormat::kInt8>(p, grid, stream); break;
    case CodeFormat::kE4M3: launch_format<T, CodeFormat::kE4M3>(p, grid, stream); break;
    default: launch_format<T, CodeFormat::kE5M2>(p, grid, stream); break;
  }
}

}  // namespace

int w8_gemm_k_split(int m, int n, int k, int sms, int wanted, int variant) {
  return tile::split_k(m, n, k, sms, wanted, variant >= 1);
}

int w8_gemm_tiles(int m, int n) { return tile::tiles(m, n); }

void launch_w8_gemm(const W8GemmProblem& p, cudaStream_t stream) {
  if (p.m == 0 || p.n == 0) return;  // (variant 1: k_split <= kResidentStages * kStageK, w8_gemm_k_split)
  const dim3 grid((p.n + kBlockRows - 1) / kBlockRows, (p.k + p.k_split - 1) / p.k_split, (p.m + kTokens - 1) / kTokens);
  if (p.dtype == ScalarKind::kBFloat16)
    launch_typed<__nv_bfloat16>(p, grid, stream);
  else
    launch_typed<__half>(p, grid, stream);
}

}  // namespace qtool
