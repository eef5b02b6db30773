// Split-K's last step inside one launch, for the kernels whose splits of K are the blocks of a (1, splits, 1) thread
// block cluster (wo_planes_tile.cu, wo_split.cu): every block leaves its float32 partial tile in its own shared
// memory, and the cluster sums them through distributed shared memory in rank order, so the output has the same
// bits on every run and no workspace or second kernel is needed.
#pragma once

#include <cooperative_groups.h>

#include "wo_common.cuh"  // WoProblem, store, bias_at, activate

namespace qtool {

constexpr int kClusterMaxSplits = 8;  // the portable cluster size
// Floats between a partial tile's rows for `tokens` columns: odd, so that the tile's stores (rows g of a warp's
// quads, 4 tokens each) fall in distinct banks.
constexpr int cluster_tok_stride(int tokens) { return tokens | 1; }

// partial [rows][tok_stride] float32 at the same shared-memory offset in every block of the (1, splits, 1) cluster:
// rank r (blockIdx.y; the cluster spans gridDim.y) sums the r-th share of the (row, token < p.m) elements over every
// rank's tile, in rank order (row-major, so that a warp's reads of another block's tile are contiguous: token-major
// order, whose stores to y coalesce, ran 8192 x 8192 at 16 tokens on 8 splits 1.6x slower in session 59), and
// stores y = sum * (scale ? scale[token] : 1) * unit + bias for the rows of block row blockIdx.x that are < p.w.n.
// Every thread of every block calls it after writing its tile (it holds the cluster's barriers: none reads a tile
// before it is written, no block leaves while another still reads its tile).
template <typename T>
__device__ inline void cluster_sum_store(const WoProblem& p, const float* partial, int rows, int tok_stride,
                                         const float* scale, float unit) {
  const int splits = gridDim.y, rank = blockIdx.y;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  if (splits > 1)
    cluster.sync();
  else
    __syncthreads();
#else
  __syncthreads();  // one split: the launchers never split without clusters
#endif
  const int elems = rows * p.m;  // (row of the block, token)
  const int e_beg = elems * rank / splits, e_end = elems * (rank + 1) / splits;
  for (int e = e_beg + static_cast<int>(threadIdx.x); e < e_end; e += blockDim.x) {
    const int row = e / p.m, tok = e % p.m;
    const int n = blockIdx.x * rows + row;
    if (n >= p.w.n) continue;  // no load whose value goes unused (the relaxed exit barrier below relies on it)
    float parts[kClusterMaxSplits];  // every rank's value loaded before the first add: the loads overlap
#pragma unroll
    for (int src = 0; src < kClusterMaxSplits; ++src) {
      if (src < splits) {
        const float* part = partial;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if (splits > 1) part = cluster.map_shared_rank(partial, src);
#endif
        parts[src] = part[row * tok_stride + tok];
      }
    }
    float sum = 0.0f;
#pragma unroll
    for (int src = 0; src < kClusterMaxSplits; ++src) {
      if (src < splits) sum += parts[src];  // in rank order
    }
    const float v = sum * ((scale != nullptr ? scale[tok] : 1.0f) * unit) + bias_at(opaque(p.bias), n);
    store(static_cast<T*>(p.y) + static_cast<size_t>(tok) * p.w.n + n, activate(v, p.act));
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (splits > 1) {
    // The exit barrier (no block leaves while another still reads its tile) orders no memory: every remote value
    // this thread loaded was consumed (summed into a store to y) before the arrive issues, so the arrive is relaxed,
    // without the release fence cluster.sync() puts before it. Session 62 (H100, dev/session62.sh clusterab): the
    // split variant 3-9% faster on every shape, most on the narrow block (4096 x 4096 at 9 tokens 8.87 -> 8.12 us).
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
  }
#endif
}

}  // namespace qtool
