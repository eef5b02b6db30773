// w8_planes_gemv: int8 weights (row-major [n, k], one scale per row: W8A8 int8 and W8A16 checkpoints) at 1-4 tokens
// on the int8 tensor cores, x given as x_planes' two int8 planes in k order. Written in session 37 without device
// time, correct on its first GPU run; measured in session 38 level with w8_gemv as the layers run (faster on
// 8192 x 28672, slower on 8192 x 8192): off unless QTOOL_W8_PLANES=1 (kernels/scaled_mm.py).
//
// Why: w8_gemv (w8_gemv.cu) converts each int8 weight to bf16 before its mma (the issue-bound part of issue 18's
// 1.35-1.65x at <= 16 tokens, sessions 28-35). Here nothing is converted. In a 64-k chunk lane (g, t) loads 16 bytes
// of row g and of row g + 8 at k = 16t..16t+15; the k order inside an mma tile is free as long as B agrees, so for
// tile i (0, 1) its words 2i / 2i + 1 are a0, a2 (row g) and a1, a3 (row g + 8) as loaded, holding k = 16t + 8i + 0..3
// / + 4..7, and B's b0 / b1 of lane t are words 2i / 2i + 1 of the plane's 16 bytes at the same k: the planes in
// natural order. Per chunk: three 16-byte loads and two mma, int32 sums over the whole row (per-row scales: no
// per-chunk float work), and s_w s_x (hi + lo / 254) once at the end.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "pdl.cuh"
#include "planes.cuh"
#include "wo_common.cuh"

namespace qtool {
namespace {

constexpr int kWarps = 8;    // warps per block, split over its STRIPES 16-row stripes
constexpr int kBatch = 3;    // chunks per lane in flight: 48 bytes each (two rows' codes and the planes)
constexpr int kChunkK = 64;  // k per lane load: 16 bytes of each row

template <typename T, int STRIPES>
__global__ void __launch_bounds__(kWarps * 32, 4) w8_planes_kernel(const W8PlanesProblem p) {
  constexpr int SWARPS = kWarps / STRIPES;  // warps per stripe
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32 % SWARPS;
  const int g = lane / 4, t = lane % 4;
  const int stripe = blockIdx.x * STRIPES + threadIdx.x / 32 / SWARPS;
  const int nchunks = stripe * 16 < p.n ? p.k / kChunkK : 0;  // a stripe past n: its warps only wait
  // Rows past n read row n - 1 (their sums are never stored).
  const int row0 = min(stripe * 16 + g, p.n - 1), row8 = min(stripe * 16 + g + 8, p.n - 1);
  const uint4* wg = reinterpret_cast<const uint4*>(p.w + static_cast<size_t>(row0) * p.k) + t;
  const uint4* wg8 = reinterpret_cast<const uint4*>(p.w + static_cast<size_t>(row8) * p.k) + t;
  // B: column g of the mma is token g / 2's plane g % 2 (columns past 2m read token 0's high plane: never stored).
  const uint4* bsrc = reinterpret_cast<const uint4*>(p.planes + static_cast<size_t>(g < 2 * p.m ? g : 0) * p.k) + t;

  uint4 a_lo[kBatch], a_hi[kBatch], b[kBatch];  // rows g, g + 8 and the planes of the slot's chunk
  int next = warp;                               // the chunk the next refill loads
  auto load_codes = [&](int u) {
    if (next < nchunks) a_lo[u] = load_streaming(wg + 4 * next), a_hi[u] = load_streaming(wg8 + 4 * next);
  };
  // The first fill's codes go out before the wait (static weights); the planes, written by x_planes, after it.
#pragma unroll
  for (int u = 0; u < kBatch; ++u, next += SWARPS) load_codes(u);
  pdl_wait_then_release();
#pragma unroll
  for (int u = 0; u < kBatch; ++u)
    if (warp + u * SWARPS < nchunks) b[u] = __ldg(bsrc + 4 * (warp + u * SWARPS));

  int d[4] = {};  // rows g / g + 8, columns 2t / 2t + 1: token t's high and low planes, summed over the whole row
  for (int c0 = warp; c0 < nchunks; c0 += SWARPS * kBatch) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (c0 + u * SWARPS >= nchunks) break;  // warp-uniform
      const uint32_t t0[4] = {a_lo[u].x, a_hi[u].x, a_lo[u].y, a_hi[u].y};
      const uint32_t t1[4] = {a_lo[u].z, a_hi[u].z, a_lo[u].w, a_hi[u].w};
      mma_s8_16832(d, t0, b[u].x, b[u].y);
      mma_s8_16832(d, t1, b[u].z, b[u].w);
      load_codes(u);
      if (next < nchunks) b[u] = __ldg(bsrc + 4 * next);
      next += SWARPS;
    }
  }

  __shared__ float partial[kWarps][16][kPlanesMaxTokens];
  if (t < p.m) {
    partial[threadIdx.x / 32][g][t] = fmaf(static_cast<float>(d[1]), 1.0f / 254.0f, static_cast<float>(d[0]));
    partial[threadIdx.x / 32][g + 8][t] = fmaf(static_cast<float>(d[3]), 1.0f / 254.0f, static_cast<float>(d[2]));
  }
  __syncthreads();
  if (threadIdx.x < STRIPES * p.m * 16) {
    const int s = threadIdx.x / (p.m * 16), m = threadIdx.x / 16 % p.m, r = threadIdx.x % 16;
    const int n = (blockIdx.x * STRIPES + s) * 16 + r;
    if (n < p.n) {
      float v = 0.0f;
#pragma unroll
      for (int i = 0; i < SWARPS; ++i) v += partial[s * SWARPS + i][r][m];
      v = v * __ldg(p.wscale + n) * __ldg(p.xscale + m) + bias_at(p.bias, n);
      store(static_cast<T*>(p.y) + static_cast<size_t>(m) * p.n + n, v);
    }
  }
}

template <typename T, int STRIPES>
void launch_typed(const W8PlanesProblem& p, cudaStream_t stream) {
  const int blocks = (p.n + 16 * STRIPES - 1) / (16 * STRIPES);
  launch_maybe_pdl(w8_planes_kernel<T, STRIPES>, p.pdl, dim3(blocks), dim3(kWarps * 32), 0, stream, p);
}

template <typename T>
void launch_stripes(const W8PlanesProblem& p, int stripes, cudaStream_t stream) {
  stripes == 4 ? launch_typed<T, 4>(p, stream) : stripes == 2 ? launch_typed<T, 2>(p, stream) : launch_typed<T, 1>(p, stream);
}

}  // namespace

void launch_w8_planes(const W8PlanesProblem& p, int stripes, cudaStream_t stream) {
  p.dtype == ScalarKind::kBFloat16 ? launch_stripes<__nv_bfloat16>(p, stripes, stream)
                                   : launch_stripes<__half>(p, stripes, stream);
}

}  // namespace qtool
