// Decode attention: one query token per sequence over a static KV cache, the query heads of a KV head together.
//
//   torch.ops.qtool_cuda.decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, int splits=0,
//                                         int pdl=0, int variant=0) -> Tensor                   (ops_attention.cpp)
//
// Why our own: in a compiled 8B decode step (session 30's profile, batch 1, 161-position cache) SDPA ran cuDNN's
// flash kernel at ~8.8 us per layer plus a memset, for ~80 KB of keys and values per KV head: ~12% of a W8A8 step.
// Here one block per (sequence, KV head, piece of the cache) copies its piece of K and V into shared memory in one
// burst of cp.async (every byte in flight at once: the latency is paid once, not once per position), then its warps
// walk the positions: R positions per warp step, PL = 32 / R lanes per position, each lane holding E = dim / PL
// elements of every query row of the group (GMax * E = 64 floats) and of their running sums (another 64). Scores
// are summed over a position's lanes with shuffles, softmax is online (running max and total per lane group, in
// base 2: the query is pre-scaled by scale * log2 e), then the lane groups, the warps and (splits > 1) the blocks
// are merged, each merge rescaling by 2^(max - new max). A masked position contributes nothing, also when its
// cached values are not finite (they are never multiplied by a zero weight, they are skipped). Variant 2, the
// two-pass kernel, is in attention_two_pass.cuh; both share the pieces, the combine kernel and the launch.
//
// The arithmetic is the reference's (qtool_kernels/reference.py decode_attention): float32 scores, softmax and
// sums, one rounding.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "attention.h"
#include "attention_two_pass.cuh"
#include "pdl.cuh"
#include "wo_common.cuh"  // cp_async_16, to_float, store

namespace qtool {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;

template <int D, int GMax>
struct Layout {
  static constexpr int R = std::min(8, std::max(1, 2048 / (GMax * D)));  // positions per warp step
  static constexpr int PL = 32 / R;                                         // lanes per position
  static constexpr int E = D / PL;                                          // elements per lane
  static constexpr int VEC = E < 8 ? E : 8;                                 // elements per shared-memory access
  static constexpr int NV = E / VEC;                                        // accesses per lane and row
  // element e of lane s: chunk c = e / VEC at column (c * PL + s) * VEC + e % VEC (consecutive lanes read
  // consecutive 16-byte pieces: no bank conflicts)
  __device__ static int column(int s, int e) { return ((e / VEC) * PL + s) * VEC + e % VEC; }
};

// Merge a second running (max, total, sums) into the first; an empty one has max -inf and zero total and sums.
__device__ inline void merge_scales(float m, float m_other, float& keep, float& take, float& merged) {
  merged = fmaxf(m, m_other);
  keep = m == -INFINITY ? 0.f : exp2f(m - merged);
  take = m_other == -INFINITY ? 0.f : exp2f(m_other - merged);
}

// grid (splits, kv_heads, batch), kThreads threads; dynamic shared memory: smem_bytes<T, D, GMax>(chunk).
template <typename T, int D, int GMax>
__global__ void __launch_bounds__(kThreads, 1) decode_attention_kernel(DecodeAttentionProblem p, int chunk) {
  using L = Layout<D, GMax>;
  extern __shared__ __align__(16) unsigned char smem[];
  pdl_wait_then_release();  // a no-op unless launched with PDL: every input below is another kernel's output
  const int split = blockIdx.x, head = blockIdx.y, b = blockIdx.z;
  const int group = static_cast<int>(p.heads / p.kv_heads);
  const int64_t first = static_cast<int64_t>(split) * chunk;
  const int count = static_cast<int>(std::min<int64_t>(chunk, p.length - first));
  T* ks = reinterpret_cast<T*>(smem);  // [chunk][D]
  T* vs = ks + chunk * D;
  bool* attend = reinterpret_cast<bool*>(vs + chunk * D);  // [chunk]

  // 1. the piece's keys and values, all in flight at once; its mask in plain loads meanwhile
  constexpr int kPieces = D * static_cast<int>(sizeof(T)) / 16;
  const T* kg = static_cast<const T*>(p.k) + b * p.kv_batch + head * p.kv_head + first * p.kv_pos;
  const T* vg = static_cast<const T*>(p.v) + b * p.kv_batch + head * p.kv_head + first * p.kv_pos;
  for (int i = threadIdx.x; i < count * kPieces; i += kThreads) {
    const int row = i / kPieces, col = (i % kPieces) * (16 / static_cast<int>(sizeof(T)));
    cp_async_16(ks + row * D + col, kg + row * p.kv_pos + col, true);
    cp_async_16(vs + row * D + col, vg + row * p.kv_pos + col, true);
  }
  cp_async_commit();
  for (int i = threadIdx.x; i < count; i += kThreads)
    attend[i] = p.mask == nullptr || p.mask[b * p.mask_batch + (first + i) * p.mask_pos];

  // 2. this lane's elements of the group's query rows, scaled for base-2 exponentials
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, sub = lane / L::PL, s = lane % L::PL;
  float q[GMax][L::E];
  const float qscale = p.scale * kLog2e;
#pragma unroll
  for (int g = 0; g < GMax; ++g) {
    const T* qg = static_cast<const T*>(p.q) + b * p.q_batch + (head * group + g) * p.q_head;
#pragma unroll
    for (int e = 0; e < L::E; ++e) q[g][e] = g < group ? to_float(qg[L::column(s, e)]) * qscale : 0.f;
  }
  float m[GMax], total[GMax], acc[GMax][L::E];
#pragma unroll
  for (int g = 0; g < GMax; ++g) {
    m[g] = -INFINITY, total[g] = 0.f;
#pragma unroll
    for (int e = 0; e < L::E; ++e) acc[g][e] = 0.f;
  }
  cp_async_wait<0>();
  __syncthreads();

  // 3. the positions, R per warp step, online softmax per lane group
  for (int base = warp * L::R; base < count; base += kWarps * L::R) {
    const int row = base + sub;
    const bool inside = row < count;
    float kv[L::E];
#pragma unroll
    for (int c = 0; c < L::NV; ++c) {
      if (inside) load_vec<T, L::VEC>(ks + row * D + L::column(s, c * L::VEC), kv + c * L::VEC);
      else
#pragma unroll
        for (int i = 0; i < L::VEC; ++i) kv[c * L::VEC + i] = 0.f;
    }
    float score[GMax];
#pragma unroll
    for (int g = 0; g < GMax; ++g) {
      score[g] = 0.f;
#pragma unroll
      for (int e = 0; e < L::E; ++e) score[g] = fmaf(q[g][e], kv[e], score[g]);
    }
#pragma unroll
    for (int off = L::PL / 2; off >= 1; off /= 2)
#pragma unroll
      for (int g = 0; g < GMax; ++g) score[g] += __shfl_xor_sync(0xffffffffu, score[g], off);
    if (inside && attend[row]) {
#pragma unroll
      for (int c = 0; c < L::NV; ++c) load_vec<T, L::VEC>(vs + row * D + L::column(s, c * L::VEC), kv + c * L::VEC);
#pragma unroll
      for (int g = 0; g < GMax; ++g) {
        const float merged = fmaxf(m[g], score[g]);
        const float keep = exp2f(m[g] - merged), weight = exp2f(score[g] - merged);  // exp2(-inf) = 0 at the start
        total[g] = fmaf(total[g], keep, weight);
#pragma unroll
        for (int e = 0; e < L::E; ++e) acc[g][e] = fmaf(acc[g][e], keep, weight * kv[e]);
        m[g] = merged;
      }
    }
  }

  // 4. merge the warp's lane groups (lanes s, s + PL, ... hold the same columns), then the warps
#pragma unroll
  for (int off = L::PL; off < 32; off *= 2) {
#pragma unroll
    for (int g = 0; g < GMax; ++g) {
      const float m_other = __shfl_xor_sync(0xffffffffu, m[g], off);
      const float t_other = __shfl_xor_sync(0xffffffffu, total[g], off);
      float keep, take, merged;
      merge_scales(m[g], m_other, keep, take, merged);
      total[g] = total[g] * keep + t_other * take;
#pragma unroll
      for (int e = 0; e < L::E; ++e) acc[g][e] = acc[g][e] * keep + __shfl_xor_sync(0xffffffffu, acc[g][e], off) * take;
      m[g] = merged;
    }
  }
  __syncthreads();  // the staged keys and values are read: their memory holds the warps' results now
  float* red = reinterpret_cast<float*>(smem);  // [kWarps][GMax][D + 2]: sums, then max and total
  constexpr int kRow = D + 2;
  if (sub == 0) {
#pragma unroll
    for (int g = 0; g < GMax; ++g) {
      float* r = red + (warp * GMax + g) * kRow;
#pragma unroll
      for (int e = 0; e < L::E; ++e) r[L::column(s, e)] = acc[g][e];
      if (s == 0) r[D] = m[g], r[D + 1] = total[g];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, red[(w * GMax + g) * kRow + D]);
    float sum = 0.f, tot = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float* r = red + (w * GMax + g) * kRow;
        const float f = r[D] == -INFINITY ? 0.f : exp2f(r[D] - mx);
        sum = fmaf(r[d], f, sum);
        tot = fmaf(r[D + 1], f, tot);
      }
    }
    if (p.splits == 1) {
      store(static_cast<T*>(p.out) + (b * p.heads + head * group + g) * D + d, tot > 0.f ? sum / tot : 0.f);
    } else {
      float* out = p.partial + (((b * p.kv_heads + head) * p.splits + split) * group + g) * kRow;
      out[d] = sum;
      if (d == 0) out[D] = mx, out[D + 1] = tot;
    }
  }
}

// splits > 1: grid (kv_heads, batch), kThreads threads; merges the pieces' partial results.
template <typename T>
__global__ void __launch_bounds__(kThreads) decode_attention_combine(DecodeAttentionProblem p) {
  pdl_wait_then_release();
  const int head = blockIdx.x, b = blockIdx.y;
  const int group = static_cast<int>(p.heads / p.kv_heads), dim = static_cast<int>(p.dim), row = dim + 2;
  const float* part = p.partial + (b * p.kv_heads + head) * p.splits * group * row;
  for (int i = threadIdx.x; i < group * dim; i += kThreads) {
    const int g = i / dim, d = i % dim;
    float mx = -INFINITY;
    for (int s = 0; s < p.splits; ++s) mx = fmaxf(mx, part[(s * group + g) * row + dim]);
    float sum = 0.f, tot = 0.f;
    if (mx != -INFINITY) {
      for (int s = 0; s < p.splits; ++s) {
        const float* r = part + (s * group + g) * row;
        const float f = r[dim] == -INFINITY ? 0.f : exp2f(r[dim] - mx);
        sum = fmaf(r[d], f, sum);
        tot = fmaf(r[dim + 1], f, tot);
      }
    }
    store(static_cast<T*>(p.out) + (b * p.heads + head * group + g) * dim + d, tot > 0.f ? sum / tot : 0.f);
  }
}

template <typename T, int D, int GMax>
size_t smem_bytes(int chunk) {
  const size_t staged = 2 * static_cast<size_t>(chunk) * D * sizeof(T) + ((chunk + 15) / 16) * 16;
  const size_t reduced = static_cast<size_t>(kWarps) * GMax * (D + 2) * sizeof(float);
  return std::max(staged, reduced);
}

// The kernel of p.variant 0: QTOOL_DECODE_ATTENTION_KERNEL (read once), 1 (the default) the online kernel above, 2 the
// two-pass kernel (attention_two_pass.cuh); p.variant 1 or 2 picks one per call. The Python caller passes 2 by default
// (qtool_kernels/attention.py VARIANT: 4-10% faster than the online kernel in session 32's probe).
int kernel_choice() {
  static const int choice = [] {
    const char* env = std::getenv("QTOOL_DECODE_ATTENTION_KERNEL");
    return env != nullptr && std::atoi(env) == 2 ? 2 : 1;
  }();
  return choice;
}

template <typename T, int D, int GMax>
cudaError_t launch_two_pass(const DecodeAttentionProblem& p, int chunk, cudaStream_t stream) {
  auto kernel = two_pass::kernel<T, D, GMax>;
  static const cudaError_t opted = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(two_pass::Smem<T, D, GMax>{kDecodeAttentionMaxChunk}.bytes()));
  if (opted != cudaSuccess) return opted;
  const dim3 grid(p.splits, static_cast<unsigned>(p.kv_heads), static_cast<unsigned>(p.batch));
  launch_maybe_pdl(kernel, p.pdl, grid, dim3(two_pass::kThreads),
                   static_cast<int>(two_pass::Smem<T, D, GMax>{chunk}.bytes()), stream, p, chunk);
  return cudaSuccess;
}

template <typename T, int D, int GMax>
cudaError_t launch_online(const DecodeAttentionProblem& p, int chunk, cudaStream_t stream) {
  auto kernel = decode_attention_kernel<T, D, GMax>;
  static const cudaError_t opted = cudaFuncSetAttribute(  // the largest any call can ask for
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
      static_cast<int>(smem_bytes<T, D, GMax>(kDecodeAttentionMaxChunk)));
  if (opted != cudaSuccess) return opted;
  const dim3 grid(p.splits, static_cast<unsigned>(p.kv_heads), static_cast<unsigned>(p.batch));
  launch_maybe_pdl(kernel, p.pdl, grid, dim3(kThreads), static_cast<int>(smem_bytes<T, D, GMax>(chunk)), stream, p,
                   chunk);
  return cudaSuccess;
}

template <typename T, int D, int GMax>
cudaError_t launch_group(const DecodeAttentionProblem& p, cudaStream_t stream) {
  const int chunk = static_cast<int>((p.length + p.splits - 1) / p.splits);
  const bool two = p.cos != nullptr || (p.variant != 0 ? p.variant : kernel_choice()) == 2;  // rotary: two-pass only
  const cudaError_t err =
      two ? launch_two_pass<T, D, GMax>(p, chunk, stream) : launch_online<T, D, GMax>(p, chunk, stream);
  if (err != cudaSuccess) return err;
  if (p.splits > 1)  // the pieces' partial results merged
    launch_maybe_pdl(decode_attention_combine<T>, p.pdl, dim3(static_cast<unsigned>(p.kv_heads),
                     static_cast<unsigned>(p.batch)), dim3(kThreads), 0, stream, p);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t launch_dim(const DecodeAttentionProblem& p, cudaStream_t stream) {
  const int64_t group = p.heads / p.kv_heads;
  if (group <= 4) return launch_group<T, D, 4>(p, stream);
  if (group <= 8) return launch_group<T, D, 8>(p, stream);
  return launch_group<T, D, 16>(p, stream);
}

template <typename T>
cudaError_t launch_dtype(const DecodeAttentionProblem& p, cudaStream_t stream) {
  return p.dim == 64 ? launch_dim<T, 64>(p, stream) : launch_dim<T, 128>(p, stream);
}

}  // namespace

int decode_attention_splits(int64_t batch, int64_t kv_heads, int64_t length, int requested, int num_sms) {
  const int64_t fewest = (length + kDecodeAttentionMaxChunk - 1) / kDecodeAttentionMaxChunk;
  int64_t splits = requested;
  if (splits <= 0 && length <= kDecodeAttentionMaxChunk) splits = 1;
  if (splits <= 0)  // pieces of >= 64 positions, as many as fill the SMs once (a block holds an SM: session 30's
    // probe, 8 KV heads at 2048 positions: 16 pieces 15.7 us, 17 pieces 22.0 us, two waves)
    splits = std::min((length + 63) / 64, std::max<int64_t>(1, num_sms / (batch * kv_heads)));
  splits = std::min(std::max(splits, fewest), length);
  const int64_t chunk = (length + splits - 1) / splits;
  return static_cast<int>((length + chunk - 1) / chunk);  // no empty pieces
}

cudaError_t launch_decode_attention(const DecodeAttentionProblem& p, cudaStream_t stream) {
  if (p.batch == 0 || p.heads == 0) return cudaSuccess;
  return p.dtype == ScalarKind::kHalf ? launch_dtype<__half>(p, stream) : launch_dtype<__nv_bfloat16>(p, stream);
}

}  // namespace qtool
