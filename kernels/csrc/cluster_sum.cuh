// Split-K's last step inside one launch, for the kernels whose splits of K are the blocks of a (1, splits, 1) thread
// block cluster (wo_planes_tile.cu, wo_split.cu): every block leaves its float32 partial tile in its own shared
// memory, and the cluster sums them through distributed shared memory in rank order, so the output has the same
// bits on every run and no workspace or second kernel is needed.
#pragma once

#include <cooperative_groups.h>

#include "wo_common.cuh"  // WoProblem, store, bias_at, activate

namespace qtool {

constexpr int kClusterMaxSplits = 8;  // the portable cluster size
// A build option for an A/B (session 61, QTOOL_NVCC_EXTRA=-DQTOOL_CLUSTER_RELAXED_EXIT=1): the exit barrier's arrive
// relaxed. Nsight Compute on the narrow split block (4096 x 4096, 16 tokens) put 12-14% of the stall samples on the two
// cluster barriers' release fences (ERRBAR).
#ifndef QTOOL_CLUSTER_RELAXED_EXIT
#define QTOOL_CLUSTER_RELAXED_EXIT 0
#endif

// Floats between a partial tile's rows for `tokens` columns: odd, so that the tile's stores (rows g of a warp's
// quads, 4 tokens each) fall in distinct banks.
constexpr int cluster_tok_stride(int tokens) { return tokens | 1; }

// partial [rows][tok_stride] float32 at the same shared-memory offset in every block of the (1, splits, 1) cluster:
// rank r (blockIdx.y; the cluster spans gridDim.y) sums the r-th share of the (row, token < p.m) elements over every
// rank's tile, in rank order (row-major, so that a warp's reads of another block's tile are contiguous: token-major
// order, whose stores to y coalesce, ran 8192 x 8192 at 16 tokens on 8 splits 1.6x slower in session 59), and
// stores y = sum * (scale ? scale[token] : 1) * unit + bias for the rows of block row blockIdx.x that are < p.w.n. Every thread of every block calls it after writing its tile (it holds the cluster's
// barriers: none reads a tile before it is written, no block leaves while another still reads its tile).
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
    const int n = blockIdx.x * rows + row;
    if (n < p.w.n) {
      const float v = sum * ((scale != nullptr ? scale[tok] : 1.0f) * unit) + bias_at(opaque(p.bias), n);
      store(static_cast<T*>(p.y) + static_cast<size_t>(tok) * p.w.n + n, activate(v, p.act));
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (splits > 1) {
#if QTOOL_CLUSTER_RELAXED_EXIT
    // The exit barrier orders nothing: every remote value was consumed (summed into y's stores) before the arrive,
    // so the relaxed arrive skips the release fence that cluster.sync() puts before it.
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#else
    cluster.sync();
#endif
  }
#endif
}

// The push form (wo_split.cu's build option QTOOL_SPLIT_CLUSTER_PUSH): each block stores its partial values straight
// into the owner rank's receive buffer (recv: floats at the same offset in every block, its own region, at least
// splits * push_share(rows * m, splits)) and the cluster meets once. The pull form above meets twice (its tiles
// overlay memory still in use, and no block may leave while another reads its tile); here the receive buffer is free
// from the start, a remote store does not wait for a reply, and nobody reads another block's memory, so no block waits
// at the exit. Element e = token * rows + row (token-major: the owner's stores to y coalesce; its reads are local),
// owned by rank e / share at slot [sender rank][e - owner * share].
__device__ inline int push_share(int elems, int splits) { return (elems + splits - 1) / splits; }

// Every thread at the kernel's start: the arrive of the barrier that push_ready completes (a block may store into
// another's shared memory only once that block has started: the CUDA guide's rule for distributed shared memory).
__device__ inline void cluster_push_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (gridDim.y > 1) asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#endif
}

// Every thread, before its first cluster_push (long after every block's begin: it seldom waits).
__device__ inline void cluster_push_ready() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (gridDim.y > 1) asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#endif
}

// This block's partial value v of (row < rows, token < m) into its owner's receive buffer.
__device__ inline void cluster_push(float* recv, int rows, int m, int row, int tok, float v) {
  const int splits = gridDim.y, share = push_share(rows * m, splits);
  const int e = tok * rows + row, owner = e / share;
  float* dst = recv;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (splits > 1) dst = cooperative_groups::this_cluster().map_shared_rank(recv, owner);
#endif
  dst[static_cast<int>(blockIdx.y) * share + (e - owner * share)] = v;
}

// After every thread's pushes: the one barrier (release / acquire), then rank r sums its share over the senders in
// rank order (the pull form's order and arithmetic: the same bits) and stores y = sum + bias for the rows of block row
// blockIdx.x that are < p.w.n. No barrier at the exit: nothing reads this block's memory after the one above.
template <typename T>
__device__ inline void cluster_push_sum_store(const WoProblem& p, const float* recv, int rows) {
  const int splits = gridDim.y, rank = blockIdx.y;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (splits > 1) {
    asm volatile("barrier.cluster.arrive.aligned;\n" ::: "memory");  // .release by default
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");    // .acquire by default
  } else {
    __syncthreads();
  }
#else
  __syncthreads();
#endif
  const int elems = rows * p.m, share = push_share(elems, splits);
  const int e_beg = rank * share, e_end = min(elems, e_beg + share);
  for (int e = e_beg + static_cast<int>(threadIdx.x); e < e_end; e += blockDim.x) {
    float parts[kClusterMaxSplits];
#pragma unroll
    for (int src = 0; src < kClusterMaxSplits; ++src) {
      if (src < splits) parts[src] = recv[src * share + (e - e_beg)];
    }
    float sum = 0.0f;
#pragma unroll
    for (int src = 0; src < kClusterMaxSplits; ++src) {
      if (src < splits) sum += parts[src];  // in rank order
    }
    const int tok = e / rows, n = blockIdx.x * rows + e % rows;
    if (n < p.w.n) {
      const float v = sum + bias_at(opaque(p.bias), n);  // the pull form's sum * (1 * 1): the same bits
      store(static_cast<T*>(p.y) + static_cast<size_t>(tok) * p.w.n + n, activate(v, p.act));
    }
  }
}

}  // namespace qtool
