// The decode attention kernel in two passes over shared memory (decode_attention.cu; variant 2, the default since
// session 32, 4-10% faster than the online kernel on the H200). The online kernel (one lane group per position, scores summed with shuffles,
// the running max and sums rescaled per position) measured ~1 us per 32 positions per warp on the H200 (session
// 30, dev/attn_probe.py: a block of 256 positions ~12 us), far above its ~0.3 us of issue: every step is a chain of
// loads, shuffles, exponentials and rescales, and 8 warps per SM cannot hide it. Here no step depends on the one
// before: A) the scores of every position for every query row of the group, on tensor cores where the group has
// <= 8 query rows (a warp per 16 positions, K rows padded by 16 bytes for conflict-free ldmatrix), else a thread per
// position with the query broadcast from shared memory; B) a warp
// per query row takes the max over the positions, the exponentials (base 2) and their total; C) a thread per pair of
// columns and position group sums weight * V over its positions (one V word per lane, the weights broadcast), then
// the position groups are summed. Masked positions get weight 0 and their V is never read.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "attention.h"
#include "pdl.cuh"
#include "wo_common.cuh"  // cp_async_16, ldmatrix_x4, mma_16816, pair conversions, to_float, store

namespace qtool {

// Shared by both decode attention kernels (this one and the online kernel in decode_attention.cu).
constexpr float kLog2e = 1.4426950408889634f;  // scores in base 2: exp(s) = 2^(s log2 e)

// The VEC elements at `src` (shared memory, VEC * sizeof(T) bytes, aligned) as floats.
template <typename T, int VEC>
__device__ inline void load_vec(const T* src, float* out) {
  if constexpr (VEC == 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(src);
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = pair_to_float2(w[i], T{});
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  } else if constexpr (VEC == 4) {
    const uint2 u = *reinterpret_cast<const uint2*>(src);
    const float2 a = pair_to_float2(u.x, T{}), b = pair_to_float2(u.y, T{});
    out[0] = a.x, out[1] = a.y, out[2] = b.x, out[3] = b.y;
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = to_float(src[i]);
  }
}

namespace two_pass {

constexpr int kThreads = kDecodeAttentionMaxChunk;  // pass A: one thread per position

template <typename T, int D, int GMax>
struct Smem {  // the dynamic shared memory of a block staging `chunk` positions, in bytes from its start
  static constexpr int kRowK = D + 16 / static_cast<int>(sizeof(T));  // padded K row, elements
  static constexpr int kPairs = D / 2, kGroups = kThreads / kPairs;    // pass C's column pairs and position groups
  static constexpr int kGP = GMax;                                     // weights per position (floats)
  int chunk;
  __host__ __device__ size_t k_bytes() const {  // K rows, later pass C's partial sums
    const size_t rows = static_cast<size_t>(chunk) * kRowK * sizeof(T), sums = size_t{kGroups} * GMax * D * 4;
    return ((rows > sums ? rows : sums) + 15) / 16 * 16;
  }
  __host__ __device__ size_t v_off() const { return k_bytes(); }
  __host__ __device__ size_t w_off() const { return v_off() + static_cast<size_t>(chunk) * D * sizeof(T); }
  __host__ __device__ size_t q_off() const { return w_off() + static_cast<size_t>(chunk) * kGP * 4; }
  __host__ __device__ size_t stat_off() const { return q_off() + size_t{GMax} * D * 4; }
  __host__ __device__ size_t mask_off() const { return stat_off() + size_t{GMax} * 2 * 4; }
  __host__ __device__ size_t bytes() const { return mask_off() + (chunk + 15) / 16 * 16; }
};

// One block's work: the piece `split` of KV head `head` of sequence `b`, over the shared memory of Smem.
template <typename T, int D, int GMax>
struct Piece {
  using S = Smem<T, D, GMax>;
  const DecodeAttentionProblem& p;
  int split, head, b, group, count;  // count: positions in this piece
  int64_t first;                     // its first position
  T* ks;                             // [count][S::kRowK] keys; pass C's sums [kGroups][GMax][D] afterwards
  T* vs;                             // [count][D] values
  float* w;                          // [count][GMax] scores, then weights
  float* qs;                         // [GMax][D] query rows (zero past `group`)
  float* stats;                      // [GMax][2] max and total of each query row
  bool* attend;                      // [count] the mask

  // The piece's keys and values in one burst of cp.async, its mask and the query rows meanwhile. In rotary-and-write
  // mode (p.cos set) the query rows are rotated, and the new token's row (if in this piece) is computed here from the
  // projection and written to the cache and, once every copy has landed, over its stale copy in shared memory (the
  // caller's __syncthreads publishes it). The copies are issued before the slot is read: waiting for that load
  // first put one memory latency in front of them, on the step's critical path at batch 1 (session 50).
  __device__ void stage(int tid) const {
    constexpr int kPieces = D * static_cast<int>(sizeof(T)) / 16, kPer = 16 / static_cast<int>(sizeof(T));
    const T* kg = static_cast<const T*>(p.k) + b * p.kv_batch + head * p.kv_head + first * p.kv_pos;
    const T* vg = static_cast<const T*>(p.v) + b * p.kv_batch + head * p.kv_head + first * p.kv_pos;
    for (int i = tid; i < count * kPieces; i += kThreads) {
      const int row = i / kPieces, col = (i % kPieces) * kPer;
      cp_async_16(ks + row * S::kRowK + col, kg + row * p.kv_pos + col, true);
      cp_async_16(vs + row * D + col, vg + row * p.kv_pos + col, true);
    }
    cp_async_commit();
    const int64_t fresh = p.cos != nullptr ? *p.slot - first : -1;  // the new row, when in [0, count)
    const int64_t fresh_or_all = p.cos != nullptr ? fresh : count;  // the last row to attend
    if (tid < count) {  // (rotary-and-write mode: rows after the new one are a static cache's future, not attended)
      const bool given = p.mask == nullptr || p.mask[b * p.mask_batch + (first + tid) * p.mask_pos];
      attend[tid] = given && tid <= fresh_or_all;
    }
    const T* q = static_cast<const T*>(p.q) + b * p.q_batch;
    const T* cs = p.cos != nullptr ? static_cast<const T*>(p.cos) + b * p.rope_batch : nullptr;
    const T* sn = p.cos != nullptr ? static_cast<const T*>(p.sin) + b * p.rope_batch : nullptr;
    for (int i = tid; i < GMax * D; i += kThreads) {
      const int g = i / D, d = i % D;
      const T* row = q + (head * group + g) * p.q_head;
      qs[i] = g >= group ? 0.f : p.cos == nullptr ? to_float(row[d]) : rounded(rotated(row, cs, sn, d));
    }
    const bool writes = fresh >= 0 && fresh < count && tid < D;
    const T* k_new = q + (p.heads + head) * p.q_head;  // k at q's head (heads + head), v at (heads + kv_heads + head)
    const T* v_new = q + (p.heads + p.kv_heads + head) * p.q_head;
    if (writes) {  // to the cache now: these loads also bring the row into L1 for the copy below
      store(const_cast<T*>(kg) + fresh * p.kv_pos + tid, rotated(k_new, cs, sn, tid));
      const_cast<T*>(vg)[fresh * p.kv_pos + tid] = v_new[tid];
    }
    cp_async_wait<0>();
    if (p.cos != nullptr) {  // (the same for the whole block)
      __syncthreads();  // every thread's copies have landed, the new row's stale one included
      if (writes) {  // recomputed from L1, not held in registers across the barrier (the GMax = 16 instances spilled)
        store(ks + fresh * S::kRowK + tid, rotated(k_new, cs, sn, tid));
        vs[fresh * D + tid] = v_new[tid];
      }
    }
  }

  // Element d of x [D] rotated (transformers' rotate_half pairing: d with d +- D / 2), in float32 as the reference
  // computes it (two products, then the sum, each rounded: no fused multiply-add).
  __device__ __forceinline__ static float rotated(const T* x, const T* cs, const T* sn, int d) {
    const float pair = d < D / 2 ? -to_float(x[d + D / 2]) : to_float(x[d - D / 2]);
    return __fadd_rn(__fmul_rn(to_float(x[d]), to_float(cs[d])), __fmul_rn(pair, to_float(sn[d])));
  }

  // v rounded to T, as a float (the reference rounds the rotated query to the activations' dtype).
  __device__ __forceinline__ static float rounded(float v) {
    return pair_to_float2(float2_to_pair(v, 0.f, T{}), T{}).x;
  }

  // A) the scores (times scale * log2 e) of every position for every query row, -inf where masked.
  __device__ void scores(int tid) const {
    if constexpr (GMax <= 8)
      scores_mma(tid / 32, tid % 32);
    else
      scores_fma(tid);
  }

  // With tensor cores: a warp per 16 positions, S (16 x 8) = K (16 positions x D) Q^T (D x 8 query rows, those past
  // `group` zero), mma.m16n8k16 over D in 16-column steps; K by ldmatrix from the padded rows, Q^T's fragments from
  // qs once per warp (exact: the query's values are fp16 / bf16 values). Float32 accumulation of exact products.
  __device__ void scores_mma(int warp, int lane) const {
    constexpr int kSteps = D / 16;
    uint32_t bq[kSteps][2];
    const int n = lane / 4, k2 = 2 * (lane % 4);  // this lane's B column (query row) and k pair
#pragma unroll
    for (int st = 0; st < kSteps; ++st) {
      const float* qrow = qs + n * D + 16 * st + k2;
      bq[st][0] = n < GMax ? float2_to_pair(qrow[0], qrow[1], T{}) : 0u;
      bq[st][1] = n < GMax ? float2_to_pair(qrow[8], qrow[9], T{}) : 0u;
    }
    const float qscale = p.scale * kLog2e;
    for (int t = warp; t * 16 < count; t += kThreads / 32) {  // rows past `count` (and past the piece) are ignored
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      const T* row = ks + (t * 16 + lane % 8 + 8 * ((lane / 8) % 2)) * S::kRowK + 8 * (lane / 16);
#pragma unroll
      for (int st = 0; st < kSteps; ++st) {
        uint32_t a[4];
        ldmatrix_x4(a, row + 16 * st);
        mma_16816<T>(d, a, bq[st][0], bq[st][1]);
      }
#pragma unroll
      for (int h = 0; h < 2; ++h) {  // C rows lane / 4 and lane / 4 + 8, columns k2 and k2 + 1
        const int pos = t * 16 + lane / 4 + 8 * h;
        if (pos >= count) continue;
        const bool on = attend[pos];
#pragma unroll
        for (int j = 0; j < 2; ++j)
          if (k2 + j < GMax) w[pos * GMax + k2 + j] = on ? d[2 * h + j] * qscale : -INFINITY;
      }
    }
  }

  // Without: a thread per position, the query broadcast from shared memory (16 query rows: a B fragment of 8 columns
  // would not hold them).
  __device__ void scores_fma(int tid) const {
    if (tid >= count) return;
    float score[GMax];
#pragma unroll
    for (int g = 0; g < GMax; ++g) score[g] = 0.f;
#pragma unroll 4
    for (int d0 = 0; d0 < D; d0 += 8) {
      float kf[8];
      load_vec<T, 8>(ks + tid * S::kRowK + d0, kf);
#pragma unroll
      for (int g = 0; g < GMax; ++g) {
        const float4 a = *reinterpret_cast<const float4*>(qs + g * D + d0);
        const float4 c = *reinterpret_cast<const float4*>(qs + g * D + d0 + 4);
        score[g] = fmaf(a.x, kf[0], fmaf(a.y, kf[1], fmaf(a.z, kf[2], fmaf(a.w, kf[3], score[g]))));
        score[g] = fmaf(c.x, kf[4], fmaf(c.y, kf[5], fmaf(c.z, kf[6], fmaf(c.w, kf[7], score[g]))));
      }
    }
    const bool on = attend[tid];
    const float qscale = p.scale * kLog2e;
#pragma unroll
    for (int g = 0; g < GMax; ++g) w[tid * GMax + g] = on ? score[g] * qscale : -INFINITY;
  }

  // B) per query row, a warp each: the max over the positions, the weights 2^(score - max) and their total.
  __device__ void weights(int warp, int lane) const {
    for (int g = warp; g < group; g += kThreads / 32) {
      float mx = -INFINITY;
      for (int l = lane; l < count; l += 32) mx = fmaxf(mx, w[l * GMax + g]);
#pragma unroll
      for (int off = 16; off >= 1; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      float total = 0.f;
      for (int l = lane; l < count; l += 32) {
        const float e = mx == -INFINITY ? 0.f : exp2f(w[l * GMax + g] - mx);  // masked: exp2(-inf) = 0
        w[l * GMax + g] = e;
        total += e;
      }
#pragma unroll
      for (int off = 16; off >= 1; off /= 2) total += __shfl_xor_sync(0xffffffffu, total, off);
      if (lane == 0) stats[2 * g] = mx, stats[2 * g + 1] = total;
    }
  }

  // C) the sums of weight * V of thread (position group pg, column pair cp) over positions pg, pg + kGroups, ...,
  // into [kGroups][GMax][D] floats over the keys (read in pass A). A warp shares pg: its branch and weight loads are
  // uniform. Masked positions are skipped (weight 0, and their values may be anything).
  __device__ void sums(int tid) const {
    const int cp = tid % S::kPairs, pg = tid / S::kPairs;
    float acc[GMax][2];
#pragma unroll
    for (int g = 0; g < GMax; ++g) acc[g][0] = acc[g][1] = 0.f;
#pragma unroll 4
    for (int l = pg; l < count; l += S::kGroups) {
      if (!attend[l]) continue;
      const float2 v = pair_to_float2(*reinterpret_cast<const uint32_t*>(vs + l * D + 2 * cp), T{});
#pragma unroll
      for (int g4 = 0; g4 < GMax; g4 += 4) {
        const float4 e = *reinterpret_cast<const float4*>(w + l * GMax + g4);
        const float ev[4] = {e.x, e.y, e.z, e.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          acc[g4 + j][0] = fmaf(ev[j], v.x, acc[g4 + j][0]);
          acc[g4 + j][1] = fmaf(ev[j], v.y, acc[g4 + j][1]);
        }
      }
    }
    __syncthreads();  // every thread is past pass A's reads of the keys
    float* out = reinterpret_cast<float*>(ks);
#pragma unroll
    for (int g = 0; g < GMax; ++g) {
      out[(pg * GMax + g) * D + 2 * cp] = acc[g][0];
      out[(pg * GMax + g) * D + 2 * cp + 1] = acc[g][1];
    }
  }

  // The position groups' sums added: the output (one piece) or the piece's partial sums, max and total.
  __device__ void finish(int tid) const {
    const float* part = reinterpret_cast<const float*>(ks);
    for (int i = tid; i < group * D; i += kThreads) {
      const int g = i / D, d = i % D;
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < S::kGroups; ++j) sum += part[(j * GMax + g) * D + d];
      const float mx = stats[2 * g], tot = stats[2 * g + 1];
      if (p.splits == 1) {
        store(static_cast<T*>(p.out) + (b * p.heads + head * group + g) * D + d, tot > 0.f ? sum / tot : 0.f);
      } else {
        float* out = p.partial + (((b * p.kv_heads + head) * p.splits + split) * group + g) * (D + 2);
        out[d] = sum;
        if (d == 0) out[D] = mx, out[D + 1] = tot;
      }
    }
  }
};

// grid (splits, kv_heads, batch), kThreads threads, Smem<T, D, GMax>{chunk}.bytes() of dynamic shared memory.
template <typename T, int D, int GMax>
__global__ void __launch_bounds__(kThreads) kernel(DecodeAttentionProblem p, int chunk) {
  extern __shared__ __align__(16) unsigned char smem[];
  const Smem<T, D, GMax> layout{chunk};
  pdl_wait_then_release();  // a no-op unless launched with PDL: every input below is another kernel's output
  const int split = blockIdx.x, group = static_cast<int>(p.heads / p.kv_heads);
  const int64_t first = static_cast<int64_t>(split) * chunk;
  const Piece<T, D, GMax> piece{p, split, static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z), group,
                                static_cast<int>(p.length - first < chunk ? p.length - first : chunk), first,
                                reinterpret_cast<T*>(smem), reinterpret_cast<T*>(smem + layout.v_off()),
                                reinterpret_cast<float*>(smem + layout.w_off()),
                                reinterpret_cast<float*>(smem + layout.q_off()),
                                reinterpret_cast<float*>(smem + layout.stat_off()),
                                reinterpret_cast<bool*>(smem + layout.mask_off())};
  const int tid = threadIdx.x;
  piece.stage(tid);
  __syncthreads();
  piece.scores(tid);
  __syncthreads();
  piece.weights(tid / 32, tid % 32);
  __syncthreads();
  piece.sums(tid);  // (synchronizes inside, before overwriting the keys)
  __syncthreads();
  piece.finish(tid);
}

}  // namespace two_pass
}  // namespace qtool
