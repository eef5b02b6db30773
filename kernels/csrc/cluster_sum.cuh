// Split-K's last step inside one launch, for the kernels whose splits of K are the blocks of a (1, splits, 1) thread
// block cluster (wo_planes_tile.cu, wo_split.cu): every block leaves its float32 partial tile in its own shared
// memory, and the cluster sums them through distributed shared memory in rank order, so the output has the same
// bits on every run and no workspace or second kernel is needed.
#pragma once

#include <cooperative_groups.h>

#include "wo_common.cuh"  // WoProblem, store, bias_at, activate

namespace qtool {

constexpr int kClusterMaxSplits = 8;  // the portable cluster size

// A barrier of the cluster (gridDim.y blocks: release / acquire, so each block's shared-memory writes before it are
// seen by the others after it), or of the block where there is one split.
__device__ inline void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (gridDim.y > 1) {
    cooperative_groups::this_cluster().sync();
    return;
  }
#endif
  __syncthreads();  // one split: the launchers never split without clusters
}

// No barriers: partial [rows][tok_stride] float32 sits at the same shared-memory offset in every block of the
// cluster; rank r (blockIdx.y; the cluster spans gridDim.y) sums the r-th share of the (row, token < p.m) elements
// over every rank's tile, in rank order, and stores y = sum * (scale ? scale[token] : 1) * unit + bias for the rows
// of row block `row_block` that are < p.w.n.
template <typename T>
__device__ inline void cluster_sum_rows(const WoProblem& p, const float* partial, int rows, int tok_stride,
                                        int row_block, const float* scale, float unit) {
  const int splits = gridDim.y, rank = blockIdx.y;
  const int elems = rows * p.m;  // (row of the block, token)
  const int e_beg = elems * rank / splits, e_end = elems * (rank + 1) / splits;
  for (int e = e_beg + static_cast<int>(threadIdx.x); e < e_end; e += blockDim.x) {
    const int row = e / p.m, tok = e % p.m;
    float parts[kClusterMaxSplits];  // every rank's value loaded before the first add: the loads overlap
#pragma unroll
    for (int src = 0; src < kClusterMaxSplits; ++src) {
      if (src < splits) {
        const float* part = partial;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        if (splits > 1) part = cooperative_groups::this_cluster().map_shared_rank(partial, src);
#endif
        parts[src] = part[row * tok_stride + tok];
      }
    }
    float sum = 0.0f;
#pragma unroll
    for (int src = 0; src < kClusterMaxSplits; ++src) {
      if (src < splits) sum += parts[src];  // in rank order
    }
    const int n = row_block * rows + row;
    if (n < p.w.n) {
      const float v = sum * ((scale != nullptr ? scale[tok] : 1.0f) * unit) + bias_at(opaque(p.bias), n);
      store(static_cast<T*>(p.y) + static_cast<size_t>(tok) * p.w.n + n, activate(v, p.act));
    }
  }
}

// The same for row block blockIdx.x between two cluster barriers: every thread of every block calls it after writing
// its partial tile, and no block leaves while another still reads its tile.
template <typename T>
__device__ inline void cluster_sum_store(const WoProblem& p, const float* partial, int rows, int tok_stride,
                                         const float* scale, float unit) {
  cluster_barrier();
  cluster_sum_rows<T>(p, partial, rows, tok_stride, blockIdx.x, scale, unit);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (gridDim.y > 1) cooperative_groups::this_cluster().sync();
#endif
}

}  // namespace qtool
