// The W1A16 GEMV with its weight stream on Hopper's bulk copy engine (sm_90; issue 21). Same problem, layout,
// math and result as w1_gemv.cu's kernel (its header explains the encoding); what changes is how the codes and
// scales reach shared memory.
//
// Why. The cp.async ring kernel asks for every chunk of a block before any math (at K = 8192 all 48 KB), yet
// Nsight measured it at 24% of DRAM throughput: 11 us for 12.6 MB that stream in ~3 us. Each cp.async is a
// 16-byte request per lane that lives in the SM's load/store path until it lands; bf16 cuBLAS, which streams
// at 80%, moves its tiles with TMA instead. Here one producer warp issues, per stage, four bulk copies (each
// stripe's codes and scales of 8 chunks are contiguous in the layout: 4 KB + 2 KB at g64), so a block's whole
// weight stream is a handful of instructions that the copy engine tracks, and the eight math warps wait on an
// mbarrier per stage instead of on cp.async groups.
//
// Pipeline: kW1Stages stages, each with a "full" barrier (the producer's arrival + the bytes of its copies)
// and an "empty" one (one arrival per math warp once it holds its chunk in registers). Stage i holds chunks
// 8i..8i+7, chunk 8i + w for warp w: the same chunk-to-warp assignment as the ring kernel. The producer refills
// a stage when its empty barrier completes; at K <= 8192 every stage is issued before any math.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>

#include "bulk.cuh"
#include "w1_chunk.cuh"
#include "w1_gemv_plan.h"
#include "w1_kernels.h"

namespace qtool {
namespace {

using w1::ChunkRegs;
using w1::chunk_math;
using w1::kStripes;

template <typename T, int GPC, bool XS>
__global__ void __launch_bounds__((kW1Warps + 1) * 32) w1_gemv_bulk_kernel(const W1GemvProblem p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ uint4 smem[];  // laid out by plan_w1_gemv(..., bulk = true)
  constexpr int kMathThreads = kW1Warps * 32;
  constexpr int NS = ChunkRegs<GPC>::NS;
  constexpr int kCodes = w1_stage_code_bytes(), kScales = w1_stage_scale_bytes(GPC), kStage = w1_stage_bytes(GPC);
  constexpr int kChunkScaleBytes = GPC > 0 ? 8 * 2 * NS * 4 : 0;  // one stripe's scales of one chunk
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int stripe0 = blockIdx.x * kStripes;
  const int nchunks = p.k_padded / kW1ChunkK, nstages = (nchunks + kW1Warps - 1) / kW1Warps;
  const int ring_offset = w1_ring_offset(XS, p.m, p.k_padded);
  const int partial_offset = w1_partial_offset(XS, p.m, p.k_padded, GPC);
  char* stages = reinterpret_cast<char*>(smem) + ring_offset;
  uint64_t* full = reinterpret_cast<uint64_t*>(reinterpret_cast<char*>(smem) + partial_offset + kW1PartialBytes);
  uint64_t* empty = full + kW1Stages;

  if (threadIdx.x == 0) {
    for (int s = 0; s < kW1Stages; ++s) {
      barrier_init(&full[s], 1);
      barrier_init(&empty[s], kW1Warps);
    }
    fence_barrier_init();
  }
  __syncthreads();

  if (warp == kW1Warps) {  // the producer: one lane issues every copy, then the warp leaves
    if (lane == 0) {
      const char* codes = reinterpret_cast<const char*>(p.qweight);
      const char* scales = reinterpret_cast<const char*>(p.scale);
      for (int i = 0; i < nstages; ++i) {
        const int slot = i % kW1Stages;
        if (i >= kW1Stages) barrier_wait(&empty[slot], (i / kW1Stages - 1) & 1);
        const int c0 = i * kW1Warps, nc = min(kW1Warps, nchunks - c0);
        char* stage = stages + slot * kStage;
        barrier_expect_bytes(&full[slot], kStripes * nc * (32 * 16 + kChunkScaleBytes));
#pragma unroll
        for (int s = 0; s < kStripes; ++s) {
          const size_t at = static_cast<size_t>(stripe0 + s) * nchunks + c0;  // (stripe, chunk) of the copy
          bulk_copy(stage + s * kCodes, codes + at * (32 * 16), nc * 32 * 16, &full[slot]);
          if constexpr (GPC > 0) {
            bulk_copy(stage + kStripes * kCodes + s * kScales, scales + at * kChunkScaleBytes, nc * kChunkScaleBytes,
                      &full[slot]);
          }
        }
      }
    }
    return;
  }

  // B: token g (token 0 for g >= m), words 2t, 2t + 1 of each step, as in w1_gemv.cu.
  const uint32_t* x;
  if constexpr (XS) {
    const int vecs = p.k_padded / 8, row_vecs = w1_xs_row_bytes(p.k_padded) / 16;
    const uint4* xg = opaque(static_cast<const uint4*>(p.x));
    for (int i = threadIdx.x; i < p.m * vecs; i += kMathThreads) {
      const int tok = i / vecs;
      cp_async_16(smem + tok * row_vecs + (i - tok * vecs), xg + i, true);
    }
    cp_async_commit();
    cp_async_wait<0>();
    named_barrier_sync(1, kMathThreads);
    x = reinterpret_cast<const uint32_t*>(smem) + (g < p.m ? g : 0) * (w1_xs_row_bytes(p.k_padded) / 4) + 2 * t;
  } else {
    x = opaque(static_cast<const uint32_t*>(p.x)) + (g < p.m ? g : 0) * (p.k_padded / 2) + 2 * t;
  }

  float acc[kStripes][4] = {};
  for (int i = 0; i < nstages; ++i) {
    const int slot = i % kW1Stages, c = i * kW1Warps + warp;
    barrier_wait(&full[slot], (i / kW1Stages) & 1);
    const char* stage = stages + slot * kStage;
    ChunkRegs<GPC> cr;
    if (c < nchunks) {
      cr.read(reinterpret_cast<const uint4*>(stage) + warp * 32, kCodes / 16,
              reinterpret_cast<const float*>(stage + kStripes * kCodes + warp * kChunkScaleBytes), kScales / 4, lane);
    }
    __syncwarp();  // every lane holds its words: the stage may be refilled
    if (lane == 0) barrier_arrive(&empty[slot]);
    if (c < nchunks) chunk_math<T, GPC, XS>(cr, x + c * (kW1ChunkK / 2), acc);
  }

  // Sum the math warps, then the epilogue (w1_gemv.cu's).
  auto& partial = *reinterpret_cast<float(*)[kW1Warps][kW1GemvRows][kMaxW1GemvTokens]>(
      reinterpret_cast<char*>(smem) + partial_offset);
#pragma unroll
  for (int s = 0; s < kStripes; ++s) {
    partial[warp][16 * s + g][2 * t] = acc[s][0];
    partial[warp][16 * s + g][2 * t + 1] = acc[s][1];
    partial[warp][16 * s + g + 8][2 * t] = acc[s][2];
    partial[warp][16 * s + g + 8][2 * t + 1] = acc[s][3];
  }
  named_barrier_sync(1, kMathThreads);
  if (threadIdx.x < p.m * kW1GemvRows) {
    const int m = threadIdx.x / kW1GemvRows, r = threadIdx.x % kW1GemvRows;
    const int n = stripe0 * 16 + r;
    if (n < p.n) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < kW1Warps; ++w) v += partial[w][r][m];
      if constexpr (GPC == 0) v *= __ldg(p.scale + n);
      v += bias_at(p.bias, n);
      store(static_cast<T*>(p.y) + static_cast<size_t>(m) * p.n + n, v);
    }
  }
#endif
}

template <typename T, int GPC>
bool launch_variant(const W1GemvProblem& p, int smem_optin_bytes, cudaStream_t stream) {
  const W1GemvPlan plan = plan_w1_gemv(p.m, p.n_padded, p.k_padded, GPC, smem_optin_bytes, true);
  auto kernel = plan.xs ? w1_gemv_bulk_kernel<T, GPC, true> : w1_gemv_bulk_kernel<T, GPC, false>;
  cudaFuncAttributes attributes{};
  // The library may hold this kernel for an architecture below sm_90 only (an empty body): the ring kernel runs.
  if (cudaFuncGetAttributes(&attributes, kernel) != cudaSuccess || attributes.binaryVersion < 90) {
    cudaGetLastError();
    return false;
  }
  if (plan.opt_in) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem_bytes);
  kernel<<<plan.blocks, plan.threads, plan.smem_bytes, stream>>>(p);
  return true;
}

template <typename T>
bool launch_typed(const W1GemvProblem& p, int optin, cudaStream_t stream) {
  switch (p.gpc) {
    case 0: return launch_variant<T, 0>(p, optin, stream);
    case 1: return launch_variant<T, 1>(p, optin, stream);
    case 2: return launch_variant<T, 2>(p, optin, stream);
    case 4: return launch_variant<T, 4>(p, optin, stream);
    default: return launch_variant<T, 8>(p, optin, stream);
  }
}

// QTOOL_W1_GEMV=ring runs the cp.async ring kernel everywhere (the A/B of kernels/NOTES.md "Session 17").
bool ring_forced() {
  static const bool forced = [] {
    const char* env = std::getenv("QTOOL_W1_GEMV");
    return env != nullptr && std::strcmp(env, "ring") == 0;
  }();
  return forced;
}

}  // namespace

bool launch_w1_gemv_bulk(const W1GemvProblem& p, int smem_optin_bytes, cudaStream_t stream) {
  int device = 0, major = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (ring_forced() || major < 9) return false;
  return p.dtype == ScalarKind::kBFloat16 ? launch_typed<__nv_bfloat16>(p, smem_optin_bytes, stream)
                                          : launch_typed<__half>(p, smem_optin_bytes, stream);
}

}  // namespace qtool
