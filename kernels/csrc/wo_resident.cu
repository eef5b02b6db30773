// 4-bit weights in the wo layout (kernels/layout.py) x 16-bit activations for 17-256 tokens, groups of >= 64 or one
// per row, symmetric or with zero points: w8_gemm's resident form (tile_gemm.cuh) for issue 19's weakest cells, W4
// at 32-256 tokens on the 4096-wide layers (0.72-0.97x bf16 on CUTLASS's mixed-input GEMM, which Nsight found
// issue-bound). A block's activations for its k range are loaded into shared memory once; then each warp streams
// its 16-row stripe's chunks (one 16-byte load per lane covers 16 rows x 64 k: exactly its A fragments for four
// 16 x 16 subtiles) with no barrier, one 128-k stage ahead of the math, as w8_gemv's warps do. wo_gemm v3, the same
// tile with a barrier per 128-k piece and a cluster reduction, streamed 0.5-1.1 TB/s (kernels/NOTES.md); w8_gemm's
// two variants measure whether the barrier was the cause. A stage is 1 KB of weights per warp and two blocks per
// SM fit, so registers alone keep ~8 KB per SM in flight, a quarter of what 4.3 TB/s needs: prefetch_stages > 0 asks
// for the chunks that many stages ahead to be brought into L2. Written without a GPU (session 22): unmeasured.
//
// Per chunk: (q - z) as exact pairs of T (a_fragment), mma into a float32 group sum d per token tile, then the
// group's scale on d (fp32, as wo_gemv and wo_stream do); B through ldmatrix.x4 from the resident activations (rows
// of 8 tokens, 8 k per matrix: two subtiles' b0 / b1 per instruction).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "tile_gemm.cuh"
#include "wo_common.cuh"
#include "wo_decode.cuh"
#include "wo_kernels.h"

namespace qtool {
namespace {

using tile::kBlockRows;
using tile::kResidentStages;
using tile::kStageK;
using tile::kTokens;
using tile::kTokenTiles;
using tile::kWarps;
using tile::XStage;
constexpr int kChunkK = 64;                      // int4: k per lane load
constexpr int kChunksPerStage = kStageK / kChunkK;  // 2

struct ChunkParams {  // scale and zero point of the chunk's group for rows g, g + 8 of the stripe
  float s[2], z[2];
};

// The stage's chunks c, c + 1 of this lane (zeros past c_end) and their group parameters.
__device__ inline void load_stage(const WoProblem& p, const uint4* stripe_chunks, int row0, bool stripe_ok, int c,
                                  int c_end, int lane, uint4 (&w)[kChunksPerStage],
                                  ChunkParams (&prm)[kChunksPerStage]) {
  const int g = lane / 4;
#pragma unroll
  for (int u = 0; u < kChunksPerStage; ++u) {
    const bool ok = stripe_ok && c + u < c_end;
    w[u] = ok ? load_streaming(stripe_chunks + static_cast<long long>(c + u) * 32 + lane) : make_uint4(0, 0, 0, 0);
    const int grp = ((c + u) * kChunkK) >> p.w.group_shift;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float2 sz = ok ? group_params(p.w, grp, row0 + g + 8 * h) : make_float2(0.0f, 0.0f);
      prm[u].s[h] = sz.x;
      prm[u].z[h] = sz.y;
    }
  }
}

// acc += this warp's stripe x the stage's activations: per chunk, the (q - z) products summed in d, then scaled.
template <typename T>
__device__ inline void multiply_stage(const XStage<T>& stage, const uint4 (&w)[kChunksPerStage],
                                      const ChunkParams (&prm)[kChunksPerStage], int lane,
                                      float (&acc)[kTokenTiles][4]) {
#pragma unroll
  for (int u = 0; u < kChunksPerStage; ++u) {
    const float zf[2] = {kCodeOffset<T, 4> + prm[u].z[0], kCodeOffset<T, 4> + prm[u].z[1]};
    const uint32_t zp[2] = {float_to_pair(zf[0], T{}), float_to_pair(zf[1], T{})};
    uint32_t wd[4];
    words_of(w[u], wd);
    float d[kTokenTiles][4] = {};
#pragma unroll
    for (int jp = 0; jp < 2; ++jp) {  // subtiles 2 jp and 2 jp + 1: their A fragments, then each token tile's B
      uint32_t a0[4], a1[4];
      a_fragment<T, 4>(wd, 2 * jp, zf, zp, a0);
      a_fragment<T, 4>(wd, 2 * jp + 1, zf, zp, a1);
#pragma unroll
      for (int tt = 0; tt < kTokenTiles; ++tt) {
        uint32_t b[4];  // b0, b1 of subtile 2 jp, then of 2 jp + 1
        ldmatrix_x4(b, &stage.v[tt * 8 + lane % 8][u * kChunkK + 32 * jp + 8 * (lane / 8)]);
        mma_16816<T>(d[tt], a0, b[0], b[1]);
        mma_16816<T>(d[tt], a1, b[2], b[3]);
      }
    }
#pragma unroll
    for (int tt = 0; tt < kTokenTiles; ++tt) {  // fragment elements 0, 1: row g; 2, 3: row g + 8
      acc[tt][0] = fmaf(prm[u].s[0], d[tt][0], acc[tt][0]);
      acc[tt][1] = fmaf(prm[u].s[0], d[tt][1], acc[tt][1]);
      acc[tt][2] = fmaf(prm[u].s[1], d[tt][2], acc[tt][2]);
      acc[tt][3] = fmaf(prm[u].s[1], d[tt][3], acc[tt][3]);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32, 2) wo_resident_kernel(WoProblem p, int k_split, int* counters,
                                                                     int prefetch_stages) {
  extern __shared__ uint4 smem[];
  XStage<T>* xs = reinterpret_cast<XStage<T>*>(smem);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int stripe = blockIdx.x * kWarps + warp, row0 = stripe * kStripeRows;
  const bool stripe_ok = row0 < p.w.n_padded;
  const int token0 = blockIdx.z * kTokens;
  const int k_begin = blockIdx.y * k_split, k_end = min(p.w.k_padded, k_begin + k_split);
  const int stages = (k_end - k_begin + kStageK - 1) / kStageK;
  const int c_begin = k_begin / kChunkK, c_end = k_end / kChunkK;  // k_padded % 64 == 0, k_split % 128 == 0
  const int nchunks = p.w.k_padded / kChunkK;
  const uint4* stripe_chunks = reinterpret_cast<const uint4*>(p.w.qweight) +
                               static_cast<long long>(stripe_ok ? stripe : 0) * nchunks * 32;

  // Stage s's chunks into L2 ahead of their loads (prefetch_stages ahead): lanes 0..7, one 128-byte line each of the
  // stage's 1 KB (two 512-byte chunks).
  auto prefetch = [&](int s) {
    const int c = c_begin + s * kChunksPerStage + lane / 4;
    if (prefetch_stages > 0 && lane < 8 && stripe_ok && s < stages && c < c_end)
      tile::prefetch_l2_line(reinterpret_cast<const char*>(stripe_chunks + static_cast<long long>(c) * 32) +
                             128 * (lane % 4));
  };
  float acc[kTokenTiles][4] = {};
  uint4 wa[kChunksPerStage], wb[kChunksPerStage];
  ChunkParams pa[kChunksPerStage], pb[kChunksPerStage];
  load_stage(p, stripe_chunks, row0, stripe_ok, c_begin, c_end, lane, wa, pa);  // in flight while x lands
  for (int s = 1; s <= prefetch_stages; ++s) prefetch(s);
  const T* x = static_cast<const T*>(p.x);
  for (int s = 0; s < stages; ++s) tile::load_activations(x, p.m, p.w.k_padded, token0, k_begin + s * kStageK, k_end, xs[s]);
  cp_async_wait<0>();
  __syncthreads();
  for (int s = 0; s < stages; s += 2) {
    prefetch(s + 1 + prefetch_stages);
    prefetch(s + 2 + prefetch_stages);
    const int c = c_begin + s * kChunksPerStage;
    if (s + 1 < stages) load_stage(p, stripe_chunks, row0, stripe_ok, c + kChunksPerStage, c_end, lane, wb, pb);
    multiply_stage<T>(xs[s], wa, pa, lane, acc);
    if (s + 1 < stages) {
      if (s + 2 < stages)
        load_stage(p, stripe_chunks, row0, stripe_ok, c + 2 * kChunksPerStage, c_end, lane, wa, pa);
      multiply_stage<T>(xs[s + 1], wb, pb, lane, acc);
    }
  }
  const tile::Out out{p.y, p.bias, nullptr, p.workspace, counters, p.m, p.w.n};
  tile::store_tile<T>(out, row0, token0, acc);
}

template <typename T>
void launch_typed(const WoProblem& p, int k_split, int* counters, int prefetch_stages, dim3 grid,
                  cudaStream_t stream) {
  static const bool sized = [] {  // above the default 48 KB of dynamic shared memory, once per kernel
    cudaFuncSetAttribute(wo_resident_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         kResidentStages * static_cast<int>(sizeof(XStage<T>)));
    return true;
  }();
  (void)sized;
  const size_t smem = static_cast<size_t>(k_split / kStageK) * sizeof(XStage<T>);
  wo_resident_kernel<T><<<grid, kWarps * 32, smem, stream>>>(p, k_split, counters, prefetch_stages);
}

}  // namespace

int wo_resident_k_split(const WoProblem& p, int sms, int wanted) {
  return tile::split_k(p.m, p.w.n_padded, p.w.k_padded, sms, wanted, true);
}

int wo_resident_tiles(const WoProblem& p) { return tile::tiles(p.m, p.w.n_padded); }

void launch_wo_resident(const WoProblem& p, int k_split, int* counters, int prefetch_stages, cudaStream_t stream) {
  if (p.m == 0) return;
  const dim3 grid((p.w.n_padded + kBlockRows - 1) / kBlockRows, (p.w.k_padded + k_split - 1) / k_split,
                  (p.m + kTokens - 1) / kTokens);
  if (p.dtype == ScalarKind::kBFloat16)
    launch_typed<__nv_bfloat16>(p, k_split, counters, prefetch_stages, grid, stream);
  else
    launch_typed<__half>(p, k_split, counters, prefetch_stages, grid, stream);
}

}  // namespace qtool
