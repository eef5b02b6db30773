// GEMV for 1-bit weights with 16-bit activations, m <= 8 tokens (W1A16, issue 21):
// y[m, n] = sum_k x[m, k] * code[n, k] * scale[n, group(k)] with code = +-1.
//
// Bandwidth. 8192 x 8192 is 8.4 MB of sign bits plus 4.2 MB of float32 g64 scales, ~3 us at the H200's
// 4.3 TB/s, against the 134 MB of the bf16 weight. So the kernel must keep many bytes in flight and
// spend few instructions per bit: a CUDA-core "select and add" costs about one instruction per bit
// and token, which at 8192 x 8192 is ~2 us of issue per token on 132 SMs.
//
// Select and add on the tensor cores. +1 and -1 are exact in bf16 and fp16 and differ only in the
// sign bit, so a code becomes its 16-bit value with one shift and one LOP3: the layout
// (kernels/binary.py) puts the codes of register p of step j at bits 15 - s and 31 - s of word j / 4
// (s = 4 (j % 4) + p), and ((word << s) & 0x80008000) ^ (-1, -1) is the pair. mma.m16n8k16 then adds
// the 16 x 16 x (up to 8 tokens) products in float32: the cost per bit does not grow with m.
// The k order inside a step is permuted so that lane t's four B values (logical k 2t, 2t+1, 2t+8,
// 2t+9) are the physical k 4t..4t+3: one 8-byte shared-memory load per step.
//
// Work split. A block owns two 16-row stripes (x staged once for 32 rows); its 8 warps take the
// 256-k chunks round-robin and serve both stripes from each B load. Each lane keeps a ring of chunks
// in flight (16 bytes of codes per stripe plus their scales, fragment-ordered so a lane's scales are one
// or two 16-byte loads), issued before any math and refilled right after each chunk's math. Per-group
// partial sums are scaled in float32 once per group; one scale per row is applied in the epilogue.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "w1_gemv_plan.h"
#include "w1_kernels.h"
#include "wo_common.cuh"

namespace qtool {
namespace {

constexpr int kWarps = kW1Warps;
constexpr int kStripes = 2;        // 16-row stripes per block
constexpr int kSteps = 16;         // 16-k mma steps per chunk
static_assert(kW1PlanRows == kW1GemvRows && kW1PlanTokens == kMaxW1GemvTokens, "w1_gemv_plan.h is out of date");

__host__ __device__ constexpr int xs_row_words(int k_padded) { return w1_xs_row_bytes(k_padded) / 4; }

template <typename T>
constexpr uint32_t kMinusOnes = std::is_same_v<T, __half> ? 0xBC00BC00u : 0xBF80BF80u;  // (-1, -1)

// The A register holding the codes at bits 15 - s and 31 - s of `word`, as a pair of T (+-1).
template <typename T>
__device__ inline uint32_t sign_pair(uint32_t word, int s) {
  return ((word << s) & 0x80008000u) ^ kMinusOnes<T>;
}

template <typename T,    // activation and output type: __half or __nv_bfloat16
          int GPC,       // scale groups per chunk: 1, 2, 4, 8; 0: one scale per row (applied at the end)
          bool XS>       // x staged in shared memory (else its B loads go to global memory through L1)
__global__ void __launch_bounds__(kWarps * 32) w1_gemv_kernel(const W1GemvProblem p) {
  extern __shared__ uint4 xs_dyn[];  // all shared memory (w1_gemv_plan.h): [x staged, if XS][partial sums]
  constexpr int NS = GPC == 0 ? 1 : GPC;  // scale groups per chunk held per row
  constexpr int SPG = kSteps / NS;        // steps per group
  constexpr int SLOTS = GPC >= 8 ? 1 : 2;  // chunks in flight per lane (each for both stripes)
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;   // A: rows g, g + 8; B and C: token g / tokens 2t, 2t + 1
  const int stripe0 = blockIdx.x * kStripes;
  const int nchunks = p.k_padded / kW1ChunkK;
  const size_t stripe_words = static_cast<size_t>(nchunks) * 32;  // uint4 per stripe
  const uint4* wq = reinterpret_cast<const uint4*>(p.qweight) + stripe0 * stripe_words + lane;
  // Grouped scales: chunk c of stripe s at (s * nchunks + c) * 16 * NS floats; this lane's 2 * NS at g.
  const float* sq = p.scale + (static_cast<size_t>(stripe0) * nchunks * 8 + g) * 2 * NS;

  uint4 bits[SLOTS][kStripes];
  float sc[SLOTS][kStripes][2 * NS];  // [row g: groups 0..NS-1][row g + 8: groups]
  auto load = [&](int u, int c) {     // chunk c into slot u; zeros past the end
#pragma unroll
    for (int s = 0; s < kStripes; ++s) {
      bits[u][s] = make_uint4(0, 0, 0, 0);
#pragma unroll
      for (int i = 0; i < 2 * NS; ++i) sc[u][s][i] = 0.0f;
      if (c < nchunks) {
        bits[u][s] = load_streaming(wq + s * stripe_words + static_cast<uint32_t>(c) * 32u);
        if constexpr (GPC > 0) {
          const float* src = sq + (static_cast<size_t>(s) * nchunks + c) * 16 * NS;
          if constexpr (NS == 1) {
            const float2 v = __ldg(reinterpret_cast<const float2*>(src));
            sc[u][s][0] = v.x;
            sc[u][s][1] = v.y;
          } else {
#pragma unroll
            for (int i = 0; i < NS / 2; ++i) {
              const float4 v = __ldg(reinterpret_cast<const float4*>(src) + i);
              sc[u][s][4 * i] = v.x;
              sc[u][s][4 * i + 1] = v.y;
              sc[u][s][4 * i + 2] = v.z;
              sc[u][s][4 * i + 3] = v.w;
            }
          }
        }
      }
    }
  };

#pragma unroll
  for (int u = 0; u < SLOTS; ++u) load(u, warp + u * kWarps);
  // B: token g (token 0 for g >= m: those mma columns are never stored), words 2t, 2t + 1 of each step.
  const uint32_t* x;
  if constexpr (XS) {
    const int vecs = p.k_padded / 8, row_vecs = xs_row_words(p.k_padded) / 4;
    const uint4* xg = opaque(static_cast<const uint4*>(p.x));
    for (int i = threadIdx.x; i < p.m * vecs; i += kWarps * 32) {
      const int tok = i / vecs;
      cp_async_16(xs_dyn + tok * row_vecs + (i - tok * vecs), xg + i, true);
    }
    cp_async_commit();
    x = reinterpret_cast<const uint32_t*>(xs_dyn) + (g < p.m ? g : 0) * xs_row_words(p.k_padded) + 2 * t;
    cp_async_wait<0>();
    __syncthreads();
  } else {
    x = opaque(static_cast<const uint32_t*>(p.x)) + (g < p.m ? g : 0) * (p.k_padded / 2) + 2 * t;
  }

  float acc[kStripes][4] = {};  // C fragments: (row g, token 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
  for (int c0 = warp; c0 < nchunks; c0 += kWarps * SLOTS) {
#pragma unroll
    for (int u = 0; u < SLOTS; ++u) {
      const int c = c0 + u * kWarps;
      if (c >= nchunks) break;  // warp-uniform
      uint32_t w[kStripes][4];
#pragma unroll
      for (int s = 0; s < kStripes; ++s) words_of(bits[u][s], w[s]);
      const uint32_t* xc = x + c * (kW1ChunkK / 2);  // step j at words 8j + 2t, 8j + 2t + 1
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
            for (int r = 0; r < 4; ++r) a[r] = sign_pair<T>(w[s][j / 4], 4 * (j % 4) + r);
            mma_16816<T>(d[s], a, b.x, b.y);
          }
        }
#pragma unroll
        for (int s = 0; s < kStripes; ++s) {
          if constexpr (GPC > 0) {
            acc[s][0] = fmaf(sc[u][s][q], d[s][0], acc[s][0]);
            acc[s][1] = fmaf(sc[u][s][q], d[s][1], acc[s][1]);
            acc[s][2] = fmaf(sc[u][s][NS + q], d[s][2], acc[s][2]);
            acc[s][3] = fmaf(sc[u][s][NS + q], d[s][3], acc[s][3]);
          } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[s][i] += d[s][i];
          }
        }
      }
      load(u, c + kWarps * SLOTS);
    }
  }

  // Sum the warps (each holds every row and token of both stripes for its chunks), then the epilogue.
  // Dynamic, not static: the launch plan must count every byte (w1_gemv_plan.h). After the staged x.
  auto& partial = *reinterpret_cast<float(*)[kWarps][kW1GemvRows][kMaxW1GemvTokens]>(
      reinterpret_cast<char*>(xs_dyn) + w1_partial_offset(XS, p.m, p.k_padded));
#pragma unroll
  for (int s = 0; s < kStripes; ++s) {
    partial[warp][16 * s + g][2 * t] = acc[s][0];
    partial[warp][16 * s + g][2 * t + 1] = acc[s][1];
    partial[warp][16 * s + g + 8][2 * t] = acc[s][2];
    partial[warp][16 * s + g + 8][2 * t + 1] = acc[s][3];
  }
  __syncthreads();
  if (threadIdx.x < p.m * kW1GemvRows) {
    const int m = threadIdx.x / kW1GemvRows, r = threadIdx.x % kW1GemvRows;
    const int n = stripe0 * 16 + r;
    if (n < p.n) {
      float v = 0.0f;
#pragma unroll
      for (int i = 0; i < kWarps; ++i) v += partial[i][r][m];
      if constexpr (GPC == 0) v *= __ldg(p.scale + n);
      v += bias_at(p.bias, n);
      store(static_cast<T*>(p.y) + static_cast<size_t>(m) * p.n + n, v);
    }
  }
}

int smem_optin_bytes() {  // per device; cheap (a cached attribute), so asked at every launch
  int device = 0, bytes = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return bytes;
}

template <typename T, int GPC>
void launch_variant(const W1GemvProblem& p, cudaStream_t stream) {
  const W1GemvPlan plan = plan_w1_gemv(p.m, p.n_padded, p.k_padded, smem_optin_bytes());
  auto kernel = plan.xs ? w1_gemv_kernel<T, GPC, true> : w1_gemv_kernel<T, GPC, false>;
  if (plan.opt_in) {  // per device and cheap, so every time; an error here is reported by the launch check
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem_bytes);
  }
  kernel<<<plan.blocks, plan.threads, plan.smem_bytes, stream>>>(p);
}

template <typename T>
void launch_typed(const W1GemvProblem& p, cudaStream_t stream) {
  switch (p.gpc) {
    case 0: return launch_variant<T, 0>(p, stream);
    case 1: return launch_variant<T, 1>(p, stream);
    case 2: return launch_variant<T, 2>(p, stream);
    case 4: return launch_variant<T, 4>(p, stream);
    default: return launch_variant<T, 8>(p, stream);  // ops_w1.cpp admits 0, 1, 2, 4, 8
  }
}

}  // namespace

void launch_w1_gemv(const W1GemvProblem& p, cudaStream_t stream) {
  p.dtype == ScalarKind::kBFloat16 ? launch_typed<__nv_bfloat16>(p, stream) : launch_typed<__half>(p, stream);
}

}  // namespace qtool
