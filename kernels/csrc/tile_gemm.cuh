// What the weight-streaming GEMMs for 17-256 tokens share (w8_gemm.cu: 8-bit row-major codes; wo_resident.cu: the
// wo layout's 4-bit codes): a block of kWarps warps owns kBlockRows weight rows (a 16-row stripe per warp, the M of
// mma.m16n8k16) x kTokens tokens (grid.z covers more) x one k range (grid.y splits k where the tiles alone would
// leave SMs idle); the block's activations for its tokens sit in shared memory in stages of kStageK columns, rows
// kXRow elements apart (272 bytes: the 16-byte loads and ldmatrix rows of 8 lanes fall in distinct banks); the
// weights stream from global memory straight into registers. Split k: each split writes its float32 partial tile
// to a workspace [splits, m, n]; the block that finishes last for its tile (a counter per tile, zero on entry and
// reset by that block) sums the splits, applies the per-channel scale (if any) and bias, and writes y. Calls on
// one stream at a time (the counters are shared by all calls on a device).
#pragma once

#include <algorithm>

#include "wo_common.cuh"

namespace qtool {
namespace tile {

constexpr int kWarps = 4;                  // 16-row stripes per block
constexpr int kBlockRows = 16 * kWarps;    // 64
constexpr int kTokenTiles = 8;             // mma token tiles (N = 8) per block
constexpr int kTokens = 8 * kTokenTiles;   // 64
constexpr int kStageK = 128;               // k of the activations per shared-memory stage
constexpr int kXRow = kStageK + 8;         // elements between token rows: 16 bytes of padding spread the banks
constexpr int kMinSplitK = 512;            // a split streams at least this much k (four stages)
constexpr int kResidentStages = 6;         // resident variants hold a split's activations whole: <= 768 k (102 KB)

template <typename T>
struct __align__(16) XStage {  // one stage of activations: [tokens][k] (cp.async: 16-byte aligned)
  T v[kTokens][kXRow];
};

// Stage [k_stage, k_stage + kStageK) of x [m, ld] for tokens token0.. into `stage` (zeros for tokens past m and k
// past k_end, a multiple of 8), as one cp.async commit group.
template <typename T>
__device__ inline void load_activations(const T* x, int m, long long ld, int token0, int k_stage, int k_end,
                                        XStage<T>& stage) {
  constexpr int kPieces = kTokens * kStageK / 8;  // 16-byte pieces
  for (int i = threadIdx.x; i < kPieces; i += kWarps * 32) {
    const int token = i / (kStageK / 8), kk = (i % (kStageK / 8)) * 8;
    const bool ok = token0 + token < m && k_stage + kk < k_end;
    const T* src = ok ? x + (token0 + token) * ld + k_stage + kk : x;
    cp_async_16(&stage.v[token][kk], src, ok);
  }
  cp_async_commit();
}

// Asks for the 128-byte line holding `ptr` to be brought into L2 (no register, nothing waits): the resident kernels'
// way to keep more of the weight stream in flight than their registers hold (prefetch_stages).
__device__ inline void prefetch_l2_line(const void* ptr) { asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr)); }

// Where a block's results go.
struct Out {
  void* y;                     // [m, n] in the activations' dtype
  const float* bias;           // [n] or nullptr
  const float* channel_scale;  // [n], or nullptr where the scales were applied to the weights already
  float* workspace;            // [splits, m, n] when split (gridDim.y > 1)
  int* counters;               // one per tile (gridDim.x * gridDim.z), zero on entry, left zero
  int m, n;
};

__device__ inline float finish(const Out& o, int row, float v) {
  return (o.channel_scale == nullptr ? v : v * __ldg(o.channel_scale + row)) + bias_at(o.bias, row);
}

// Fragment element r of token tile tt of lane (g, t): row g + 8 (r / 2), token 2t + r % 2 of the tile.
template <typename T>
__device__ inline void store_direct(const Out& o, int row0, int token0, const float (&acc)[kTokenTiles][4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
  for (int tt = 0; tt < kTokenTiles; ++tt)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = row0 + g + 8 * (r / 2), token = token0 + tt * 8 + 2 * t + (r % 2);
      if (row < o.n && token < o.m)
        store(static_cast<T*>(o.y) + static_cast<long long>(token) * o.n + row, finish(o, row, acc[tt][r]));
    }
}

template <typename T>
__device__ inline void store_split(const Out& o, int row0, int token0, const float (&acc)[kTokenTiles][4]) {
  __shared__ int last;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const long long plane = static_cast<long long>(o.m) * o.n;
  float* mine = o.workspace + blockIdx.y * plane;
#pragma unroll
  for (int tt = 0; tt < kTokenTiles; ++tt)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = row0 + g + 8 * (r / 2), token = token0 + tt * 8 + 2 * t + (r % 2);
      if (row < o.n && token < o.m) __stcg(mine + static_cast<long long>(token) * o.n + row, acc[tt][r]);
    }
  __threadfence();  // the partials are visible device-wide before this block is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = o.counters + blockIdx.z * gridDim.x + blockIdx.x;
    last = atomicAdd(counter, 1) == static_cast<int>(gridDim.y) - 1;
    if (last) *counter = 0;  // every split has arrived: ready for the next call
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int rows0 = blockIdx.x * kBlockRows;
  for (int e = threadIdx.x; e < kTokens * kBlockRows; e += kWarps * 32) {
    const int token = token0 + e / kBlockRows, row = rows0 + e % kBlockRows;
    if (row >= o.n || token >= o.m) continue;
    const long long at = static_cast<long long>(token) * o.n + row;
    float v = 0.0f;
    for (int split = 0; split < static_cast<int>(gridDim.y); ++split) v += __ldcg(o.workspace + split * plane + at);
    store(static_cast<T*>(o.y) + at, finish(o, row, v));
  }
}

template <typename T>
__device__ inline void store_tile(const Out& o, int row0, int token0, const float (&acc)[kTokenTiles][4]) {
  if (gridDim.y == 1)
    store_direct<T>(o, row0, token0, acc);
  else
    store_split<T>(o, row0, token0, acc);
}

// Host side: tiles of a problem, k per split, and the splits to run.
inline int tiles(int m, int n) { return ((n + kBlockRows - 1) / kBlockRows) * ((m + kTokens - 1) / kTokens); }

inline int k_split(int k, int splits) {
  const int per = (k + splits - 1) / splits;
  return (per + kStageK - 1) / kStageK * kStageK;
}

// k per split: three blocks per SM where the tiles alone leave SMs idle (the split's fixed cost is a partial tile
// through L2 and one block's sum), at least kMinSplitK per split; resident variants at most kResidentStages stages
// per split; wanted > 0: about that many splits. A multiple of kStageK; the grid has ceil(k / it) splits.
inline int split_k(int m, int n, int k, int sms, int wanted, bool resident) {
  const int most = std::max(1, k / kMinSplitK);
  int s = std::min(std::max(wanted > 0 ? wanted : (3 * sms + tiles(m, n) - 1) / tiles(m, n), 1), most);
  if (resident) s = std::max(s, (k + kResidentStages * kStageK - 1) / (kResidentStages * kStageK));
  return k_split(k, s);
}

}  // namespace tile
}  // namespace qtool
