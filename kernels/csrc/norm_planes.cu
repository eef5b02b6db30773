// norm_planes: a decoder layer's residual add and RMSNorm with x_planes after them, in one kernel.
//
// In a Llama-style layer the input of q/k/v (and of gate/up) is rms_norm(residual + block output) * weight, and at
// 1-8 tokens the 4-bit GEMVs take it as two int8 planes (x_planes, wo_planes.cu). Inductor fuses the add and the
// norm into one kernel; x_planes is a second launch per projection input (64 per 8B step) and its cost decides
// where the planes pay (int8_planes.py). Here one block per token reads the two rows once into registers, writes
// the sum (the next residual), reduces sum(s^2), normalizes, reduces max|n| and writes n's planes: the producer
// is gone, so the planes serve every shape at 1-2 tokens (kernels/norm_planes.py rewrites the compiled graph).
//
// Rounding as the graph it replaces (F.rms_norm decomposed by Inductor, in float32): s = T(residual + x);
// n = T(float(s) * rsqrt(mean(float(s)^2) + eps) * float(weight)). Only the order of the row's sum of squares
// differs (a tree here), so n may differ by one unit in the last place; the planes are then x_planes' of n.
#include <cstdint>

#include "pdl.cuh"
#include "wo_common.cuh"
#include "x_planes.cuh"

namespace qtool {
namespace {

constexpr int kNormPlanesThreads = 512;

template <typename T>
__device__ inline float vec_sumsq(const uint4 v, float acc) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = pair_to_float2((&v.x)[j], T{});
    acc = fmaf(f.x, f.x, fmaf(f.y, f.y, acc));
  }
  return acc;
}

// The block's sum (or max) of v, every thread getting it; red: kNormPlanesThreads / 32 floats that no other
// reduction of this block uses.
template <bool MAX>
__device__ inline float block_reduce(float v, float* red) {
#pragma unroll
  for (int off = 16; off > 0; off /= 2) {
    const float o = __shfl_xor_sync(0xffffffffu, v, off);
    v = MAX ? fmaxf(v, o) : v + o;
  }
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  v = red[0];
#pragma unroll
  for (int w = 1; w < kNormPlanesThreads / 32; ++w) v = MAX ? fmaxf(v, red[w]) : v + red[w];
  return v;
}

// SUBS 16-k subtiles per thread, the token held in registers from its load to its planes (as x_planes_kernel).
template <typename T, bool NATURAL, int SUBS>
__global__ void __launch_bounds__(kNormPlanesThreads) norm_planes_kernel(const NormPlanesProblem p) {
  __shared__ float red[2][kNormPlanesThreads / 32];
  const int r = blockIdx.x, subs = p.k / 16, row_vecs = p.k / 8;
  const uint4* wg = opaque(static_cast<const uint4*>(p.weight));
  uint4 w[SUBS][2];  // the norm's weight, which no kernel writes: loaded before the wait for the one before
#pragma unroll
  for (int i = 0; i < SUBS; ++i) {
    const int j = threadIdx.x + i * kNormPlanesThreads;
    w[i][0] = j < subs ? __ldg(wg + 2 * j) : make_uint4(0, 0, 0, 0);
    w[i][1] = j < subs ? __ldg(wg + 2 * j + 1) : make_uint4(0, 0, 0, 0);
  }
  pdl_wait_then_release();
  const size_t row = static_cast<size_t>(r) * row_vecs;
  const uint4* xg = opaque(static_cast<const uint4*>(p.x)) + row;
  const uint4* rg = p.residual != nullptr ? opaque(static_cast<const uint4*>(p.residual)) + row : nullptr;
  const auto plus = [](float a, float b) { return a + b; };
  uint4 v[SUBS][2];
  float sq = 0.0f;
#pragma unroll
  for (int i = 0; i < SUBS; ++i) {
    const int j = threadIdx.x + i * kNormPlanesThreads;
    v[i][0] = v[i][1] = make_uint4(0, 0, 0, 0);
    if (j < subs) {
      v[i][0] = __ldg(xg + 2 * j);
      v[i][1] = __ldg(xg + 2 * j + 1);
      if (rg != nullptr) {
        v[i][0] = zip_vec<T>(__ldg(rg + 2 * j), v[i][0], plus);  // rounded as Inductor's add of two T tensors
        v[i][1] = zip_vec<T>(__ldg(rg + 2 * j + 1), v[i][1], plus);
        uint4* sg = static_cast<uint4*>(p.sum) + row;
        sg[2 * j] = v[i][0];
        sg[2 * j + 1] = v[i][1];
      }
    }
    sq = vec_sumsq<T>(v[i][1], vec_sumsq<T>(v[i][0], sq));
  }
  const float inv_rms = rsqrtf(block_reduce<false>(sq, red[0]) / static_cast<float>(p.k) + p.eps);
  // n = T(float(s) * r * float(w)), rounded once as the decomposed F.rms_norm rounds it
  const auto normalize = [inv_rms](float s, float w) { return s * inv_rms * w; };
  float mx = 0.0f;
#pragma unroll
  for (int i = 0; i < SUBS; ++i) {  // past the row (j >= subs) v and w are zero, and so is n
    v[i][0] = zip_vec<T>(v[i][0], w[i][0], normalize);
    v[i][1] = zip_vec<T>(v[i][1], w[i][1], normalize);
    mx = vec_absmax<T>(v[i][1], vec_absmax<T>(v[i][0], mx));
  }
  store_token_planes<T, NATURAL, SUBS, kNormPlanesThreads>(v, block_reduce<true>(mx, red[1]), r, p.k, p.planes,
                                                          p.xscale);
}

template <typename T, bool NATURAL>
void launch_typed(const NormPlanesProblem& p, cudaStream_t stream) {
  const int per_thread = (p.k / 16 + kNormPlanesThreads - 1) / kNormPlanesThreads;
  auto* kernel = per_thread <= 1   ? norm_planes_kernel<T, NATURAL, 1>
                 : per_thread <= 2 ? norm_planes_kernel<T, NATURAL, 2>
                                   : norm_planes_kernel<T, NATURAL, 4>;  // k <= kNormPlanesMaxK (ops_planes.cpp)
  launch_maybe_pdl(kernel, p.pdl, dim3(p.m), dim3(kNormPlanesThreads), 0, stream, p);
}

}  // namespace

void launch_norm_planes(const NormPlanesProblem& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  if (p.natural)
    bf16 ? launch_typed<__nv_bfloat16, true>(p, stream) : launch_typed<__half, true>(p, stream);
  else
    bf16 ? launch_typed<__nv_bfloat16, false>(p, stream) : launch_typed<__half, false>(p, stream);
}

}  // namespace qtool
