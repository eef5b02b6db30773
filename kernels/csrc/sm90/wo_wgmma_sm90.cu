// Weight-only GEMMs for 9-128 tokens on Hopper's wgmma, the weights read straight from their own layout into registers:
// W4A16 from the 4-bit kernel layout, and 8-bit codes row-major (int8, FP8 E4M3 or E5M2 with per-channel or
// per-tensor scales, or E4M3 with 128 x 128 block scales), which serves W8A16 and the W8A8 layers at these tokens with 16-bit
// activations (as w8_gemv does below them).
//
// Why (kernels/NOTES.md, sessions 48 and 63): at 17-128 tokens the planes kernels (mma.sync, 16-row warp tiles) are a
// latency chain, and CUTLASS's mixed-input GEMM pays ~5-7 us of fixed time per call for staging the weights through
// shared memory with TMA. Here the product is computed transposed, Y^T [n, m] = W [n, k] . X^T [k, m]:
//   - A = the weights, 64 rows per warpgroup: each lane copies its part of a 64-k chunk (the int4 layout's 16-byte
//     word, already the A fragments of mma.m16n8k16 that wgmma's register A repeats per warp; or 16 bytes of two
//     rows of 8-bit codes) and, for 4 bits, its rows' scales, kDepth chunks ahead with cp.async into a lane-private
//     ring in shared memory (LaneRing), converts them in registers to bf16 (wgmma_weights.cuh) and hands them to
//     wgmma. No copy of the weight beside the GEMVs' one.
//   - B = the activations, up to 128 tokens x 64 k per stage, copied by one thread's TMA (a tensor map built per
//     launch) into the 128-byte-swizzled k-major layout wgmma's descriptor reads, in a ring of stages with full /
//     empty mbarriers (session 67: a producer warp's cp.async was the bottleneck at 64-128 tokens; TMA ran 4096 x
//     4096 at 128 tokens 0.65x -> 1.1x bf16).
//   - Split-K over a (1, split, 1) thread block cluster: each CTA leaves its float32 partial tile in its shared
//     memory and the cluster sums them in rank order through distributed shared memory (deterministic; one launch).
//   - PDL: the weight ring is issued before griddepcontrol.wait, so the first DRAM round trips overlap the kernel
//     before.
// Compiled for sm_90a (wgmma) in its own library (kernels/sm90.py), called through ctypes (kernels/warpgroup_mm.py).
#include <cooperative_groups.h>
#include <cuda.h>  // CUtensorMap
#include <cudaTypedefs.h>  // its encoder's signature (called through the runtime's driver entry point)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../pdl.cuh"
#include "wgmma_async.cuh"
#include "wgmma_consumer.cuh"

#define QTOOL_WGMMA_API extern "C" __attribute__((visibility("default")))

namespace qtool::wgmma {

// The producer (one thread): x's chunks [c_beg, c_beg + chunks) into the ring by TMA, the tensor map's box T tokens
// x 64 k in the 128-byte swizzle, rows >= m and columns >= k zero-filled. Session 67: a warp of cp.async (32 a lane
// per stage at 128 tokens) starved the consumers, whose waits on `full` were a third of the samples; four warps of
// it ran 2.6x faster and TMA faster still (4096 x 4096 at 128 tokens 0.58x -> 1.08x bf16, BENCHMARKS.md).
template <int T>
__device__ void produce(const Args& p, const CUtensorMap* x_map, uint32_t ring, uint32_t full, uint32_t empty,
                        int c_beg, int chunks) {
  Cursor at(Stages<T>::count(p));
  for (int c = 0; c < chunks; ++c, at.advance()) {
    const int s = at.stage;
    if (c >= at.count) mbar_wait(empty + 8 * s, at.parity ^ 1);
    mbar_arrive_expect_tx(full + 8 * s, Stages<T>::kBytes);  // the whole box's bytes, the zero-filled ones too
    tma_load_2d(ring + s * Stages<T>::kBytes, x_map, (c_beg + c) * kChunkK, 0, full + 8 * s);
  }
}

// After the mainloop: the CTA's partial tile into shared memory, the cluster's sum in rank order, y stored
// (8-bit kinds: times the channel's scale).
template <int T, int WG, int W, bool Tall>
__device__ inline void store_acc(float* part, const float (&acc)[T / 2], int r) {  // a warp's 16 rows x T tokens
  constexpr int kPitch = WG * 64 * (Tall ? 2 : 1) + 4;  // +4: the tile's stores fall in distinct banks
#pragma unroll
  for (int i = 0; i < T / 8; ++i) {
    const int t = 8 * i + 2 * (threadIdx.x % 32 % 4);
    part[t * kPitch + r] = acc[4 * i];
    part[(t + 1) * kPitch + r] = acc[4 * i + 1];
    part[t * kPitch + r + 8] = acc[4 * i + 2];
    part[(t + 1) * kPitch + r + 8] = acc[4 * i + 3];
  }
}

template <int T, int WG, int W, bool Tall>
__device__ void store(const Args& p, float* part, const float (&acc)[T / 2], const float (&acc1)[Tall ? T / 2 : 1],
                      bool consumer, int wg, int warp, int lane) {
  constexpr int R = WG * 64 * (Tall ? 2 : 1), kPitch = R + 4;
  if (consumer) {
    const int r = (Tall ? 128 : 64) * wg + 16 * warp + lane / 4;
    store_acc<T, WG, W, Tall>(part, acc, r);
    if constexpr (Tall) store_acc<T, WG, W, Tall>(part, acc1, r + 64);
  }
  const int split = gridDim.y, rank = blockIdx.y;
  cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
  if (split > 1)
    cluster.sync();
  else
    __syncthreads();
  const int quads = p.m * (R / 4);  // float4s of the tile's rows for tokens < m
  const int e_beg = quads * rank / split, e_end = quads * (rank + 1) / split;
  __nv_bfloat16* y = static_cast<__nv_bfloat16*>(p.y);
  for (int e = e_beg + static_cast<int>(threadIdx.x); e < e_end; e += blockDim.x) {
    const int t = e / (R / 4), r = 4 * (e % (R / 4)), n = blockIdx.x * R + r;
    if (n >= p.n) continue;
    float4 parts[kMaxSplit];
#pragma unroll
    for (int src = 0; src < kMaxSplit; ++src) {
      if (src < split) {
        const float* from = split > 1 ? cluster.map_shared_rank(part, src) : part;
        parts[src] = *reinterpret_cast<const float4*>(from + t * kPitch + r);
      }
    }
    float v[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int src = 0; src < kMaxSplit; ++src) {
      if (src < split) {
        v[0] += parts[src].x;
        v[1] += parts[src].y;
        v[2] += parts[src].z;
        v[3] += parts[src].w;
      }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if (n + i >= p.n) continue;
      const float scaled = kRows<W> && W != kE4m3Blocks ? v[i] * p.scale[p.scale_stride * (n + i)] : v[i];
      y[static_cast<int64_t>(t) * p.n + n + i] = __float2bfloat16(scaled + (p.bias ? p.bias[n + i] : 0.f));
    }
  }
  if (split > 1) {  // no CTA leaves while another reads its tile; relaxed, as cluster_sum.cuh's (session 62: 3-9%):
    // every remote value this thread loaded was summed into its store to y before the arrive, so it orders nothing
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
  }
}

// Shared memory: the activation stages, then the lanes' rings; after the mainloop the partial tile takes it from the
// start (every copy landed, every wgmma read its stage); then the barriers.
template <int T, int WG, int W, bool Tall>
struct SmemPlan {
  static constexpr int kTile = T * (WG * 64 * (Tall ? 2 : 1) + 4) * 4;
  __host__ __device__ static int data(const Args& p) {
    const int mainloop = Stages<T>::count(p) * Stages<T>::kBytes + LaneRing<Tall ? 2 * WG : WG, W>::kBytes;
    return mainloop > kTile ? mainloop : kTile;
  }
  static int bytes(const Args& p) { return 1024 + data(p) + 16 * Stages<T>::count(p); }  // + alignment, barriers
};

// CTAs an SM must hold (__launch_bounds__'s minimum, which caps the registers): the post-scale form's two sets of
// partial sums took 148 registers at 32 tokens on one warpgroup where ptxas was free (two CTAs an SM); held to 136
// three fit, at 128 and the wgmmas stay asynchronous (zero points too). Caps that would fit one more CTA elsewhere
// (16 tokens: 102 for four of one warpgroup, 113 for two of two; __maxnreg__(104) alike) left ptxas at 79 registers
// with the wgmmas serialized (C7512). The plain kernels: none.
template <int T, int WG, bool Post>
constexpr int kMinBlocks = Post && T == 32 && WG == 1 ? 3 : 1;

template <int T, int WG, int W, bool Tall, bool Post>
__global__ void __launch_bounds__(WG * 128 + 32, (kMinBlocks<T, WG, Post>))
    wo_wgmma_kernel(const Args p, const __grid_constant__ CUtensorMap x_map) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t ring = (raw + 1023) & ~1023u;  // the swizzle's atoms are 1024-byte aligned
  const int S = Stages<T>::count(p);
  const uint32_t lanes = ring + S * Stages<T>::kBytes, full = ring + SmemPlan<T, WG, W, Tall>::data(p),
                 empty = full + 8 * S;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks_total = p.k_pad / kChunkK, split = gridDim.y, rank = blockIdx.y;
  // K cut at whole g128 groups where the groups are scaled after the MMA (wgmma_groups.cuh), else at chunks
  const int unit = Post && post_groups(p.group, p.k_pad) ? 2 : 1, units = chunks_total / unit;
  const int c_beg = unit * (units * rank / split), chunks = unit * (units * (rank + 1) / split) - c_beg;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(full + 8 * s, 1);
      mbar_init(empty + 8 * s, WG * 4);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  float acc[T / 2], acc1[Tall ? T / 2 : 1];
#pragma unroll
  for (int i = 0; i < T / 2; ++i) acc[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < (Tall ? T / 2 : 1); ++i) acc1[i] = 0.0f;
  const bool consumer = warp < WG * 4;
  if (consumer) {  // Tall: warpgroup wg's stripes 8 wg + w and 8 wg + w + 4 of the CTA's 8 WG
    const int stripe = Tall ? blockIdx.x * WG * 8 + 8 * (warp / 4) + warp % 4 : blockIdx.x * WG * 4 + warp;
    consume<T, WG, W, Tall, Post>(p, ring, lanes, full, empty, c_beg, chunks, stripe, static_cast<int>(threadIdx.x),
                                  acc, acc1);
  } else if (lane == 0) {  // the producer warp's other lanes wait at the __syncthreads below
    pdl_wait();
    produce<T>(p, &x_map, ring, full, empty, c_beg, chunks);
  }
  pdl_release();
  __syncthreads();  // every wgmma has read its stage: the ring becomes the partial tile
  store<T, WG, W, Tall>(p, reinterpret_cast<float*>(smem_raw + (ring - raw)), acc, acc1, consumer, warp / 4, warp % 4,
                        lane);
}

// x [m, k] bf16 as TMA sees it: boxes of T tokens x 64 k (128 bytes, the swizzle's row), zero past m and k.
inline const char* encode_x(const Args& p, int tile, CUtensorMap* map) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                                             &found);
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn)
               : nullptr;
  }();
  if (encode == nullptr) return "the driver has no cuTensorMapEncodeTiled (TMA)";
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(p.k), static_cast<cuuint64_t>(p.m)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(p.k) * 2};  // bytes between tokens: k % 8 == 0
  const cuuint32_t box[2] = {kChunkK, static_cast<cuuint32_t>(tile)}, unit[2] = {1, 1};
  const CUresult r = encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<void*>(p.x), dims, strides, box, unit,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS ? nullptr : "cuTensorMapEncodeTiled refused x's tensor map";
}

// Launch the kernel p selects, or with `clusters` set, only count how many of its (1, split, 1) clusters the GPU
// holds at once (the plan keeps a call's grid within one wave: session 66's ncu found 32 clusters of 4 where 30 fit,
// and the two left over ran as a second wave, doubling the call).
template <int T, int WG, int W, bool Tall = false, bool Post = false>
const char* launch(const Args& p, cudaStream_t stream, int* clusters) {
  constexpr int kMaxSmem = 227 * 1024, R = WG * 64 * (Tall ? 2 : 1);
  if (p.stages < 0 || p.stages == 1 || p.stages > kMaxStages) return "stages must be 0 (the default) or 2 .. 16";
  const int smem = SmemPlan<T, WG, W, Tall>::bytes(p);
  if (smem > kMaxSmem) return "the stages and the lanes' rings need more than the SM's 227 KB of shared memory";
  auto kernel = wo_wgmma_kernel<T, WG, W, Tall, Post>;
  static const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
  if (attr != cudaSuccess) return cudaGetErrorString(attr);
  const dim3 grid((p.n_pad + R - 1) / R, p.split), block(WG * 128 + 32);
  cudaError_t err;
  if (clusters != nullptr) {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(1, p.split);  // one cluster: the count does not depend on the grid
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    cudaLaunchAttribute cluster;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = 1;
    cluster.val.clusterDim.y = p.split;
    cluster.val.clusterDim.z = 1;
    config.attrs = &cluster;
    config.numAttrs = 1;
    err = cudaOccupancyMaxActiveClusters(clusters, kernel, &config);
  } else {
    alignas(64) CUtensorMap x_map = {};
    if (const char* why = encode_x(p, T, &x_map)) return why;
    err = launch_cluster_y(kernel, (p.launch & 1) != 0, grid, block, smem, stream, p.split, p, x_map);
  }
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// launch bit 1: the tall tile (128 rows a warpgroup), 4-bit weights at tiles of <= 64 tokens on 1 or 2 warpgroups
// (its A registers and two accumulators leave four warpgroups too few registers)
template <int T, int WG>
const char* launch_tall(const Args& p, cudaStream_t stream, int* clusters) {
  if constexpr (T <= 64 && WG <= 2) {
    if (p.kind == 0)
      return p.zero != nullptr ? launch<T, WG, kW4Asym, true>(p, stream, clusters)
                               : launch<T, WG, kW4, true>(p, stream, clusters);
  }
  return "the tall tile takes 4-bit weights, tiles of <= 64 tokens and 1 or 2 warpgroups";
}

// launch bit 2: the post-scale form (wgmma_groups.cuh), 4-bit weights at tiles of <= 32 tokens on 1 or 2 warpgroups
template <int T, int WG>
const char* launch_post(const Args& p, cudaStream_t stream, int* clusters) {
  if constexpr (kHasPost<T, WG, kW4, false>) {
    if (p.kind == 0 && !(p.launch & 2))
      return p.zero != nullptr ? launch<T, WG, kW4Asym, false, true>(p, stream, clusters)
                               : launch<T, WG, kW4, false, true>(p, stream, clusters);
  }
  return "the post-scale form takes 4-bit weights, tiles of <= 32 tokens, 1 or 2 warpgroups and not the tall tile";
}

template <int T, int WG>
const char* launch_kind(const Args& p, cudaStream_t stream, int* clusters) {
  if (p.launch & 4) return launch_post<T, WG>(p, stream, clusters);
  if (p.launch & 2) return launch_tall<T, WG>(p, stream, clusters);
  switch (p.kind) {
    case 0:
      return p.zero != nullptr ? launch<T, WG, kW4Asym>(p, stream, clusters) : launch<T, WG, kW4>(p, stream, clusters);
    case 1: return launch<T, WG, kI8Rows>(p, stream, clusters);
    case 2: return launch<T, WG, kE4m3Rows>(p, stream, clusters);
    case 3: return launch<T, WG, kE4m3Blocks>(p, stream, clusters);
    case 4: return launch<T, WG, kE5m2Rows>(p, stream, clusters);
    default: return "kind must be 0 (4-bit layout), 1 (int8 rows), 2 (e4m3 rows), 3 (e4m3 blocks) or 4 (e5m2 rows)";
  }
}

template <int WG>
const char* launch_tile(const Args& p, cudaStream_t stream, int* clusters) {
  switch (p.tile) {
    case 16: return launch_kind<16, WG>(p, stream, clusters);
    case 32: return launch_kind<32, WG>(p, stream, clusters);
    case 64: return launch_kind<64, WG>(p, stream, clusters);
    case 128:  // 64 accumulators a thread: four warpgroups' 544 threads leave 120 registers, and ptxas serializes
      if constexpr (WG == 4) return "tile 128 takes one or two warpgroups";
      else return launch_kind<128, WG>(p, stream, clusters);
    default: return "tile must be 16, 32, 64 or 128 tokens";
  }
}

const char* launch_warpgroups(const Args& p, cudaStream_t stream, int* clusters) {
  switch (p.warpgroups) {
    case 1: return launch_tile<1>(p, stream, clusters);
    case 2: return launch_tile<2>(p, stream, clusters);
    case 4: return launch_tile<4>(p, stream, clusters);
    default: return "warpgroups must be 1, 2 or 4";
  }
}

}  // namespace qtool::wgmma

// y [m, n] = x [m, k] . dequant(qweight)^T (+ bias): nullptr, or the error.
QTOOL_WGMMA_API const char* qtool_sm90_wgmma_mm(const qtool::wgmma::Args* p, cudaStream_t stream) {
  using namespace qtool::wgmma;
  const bool rows = p->kind != 0;
  if (p->m < 1 || p->m > p->tile) return "m must be in 1 .. tile";
  if (p->k_pad % kChunkK || p->k > p->k_pad || p->k_pad - p->k >= kChunkK) return "k_pad must be k rounded up to 64";
  if (p->k % (rows ? 16 : 8)) return rows ? "k must be a multiple of 16 (8-bit rows)" : "k must be a multiple of 8";
  if (!rows && (p->group % kChunkK || p->group <= 0)) return "group must be a positive multiple of 64";
  if (rows && (p->zero != nullptr || p->scale_stride < 0 || (p->kind != 3 && p->scale_stride > 1)))
    return "8-bit rows take no zero points and a scale stride of 0 or 1";
  if (p->kind == 3 && p->scale_stride != (p->k + 127) / 128) return "block scales need a stride of ceil(k / 128)";
  if (p->split < 1 || p->split > kMaxSplit || p->split > p->k_pad / kChunkK) return "split must be in 1 .. 8";
  if (p->n_pad % 16 || p->n > p->n_pad || p->n_pad - p->n >= 16) return "n_pad must be n rounded up to 16";
  if (reinterpret_cast<uintptr_t>(p->x) % 16 || reinterpret_cast<uintptr_t>(p->qweight) % 16)
    return "x and qweight must be 16-byte aligned";
  return launch_warpgroups(*p, stream, nullptr);
}

// How many (1, split, 1) clusters of the kernel p selects (tile, warpgroups, split, kind, zero) the GPU holds at
// once, into *clusters: nullptr, or the error.
QTOOL_WGMMA_API const char* qtool_sm90_wgmma_clusters(const qtool::wgmma::Args* p, int* clusters) {
  if (p->split < 1 || p->split > qtool::wgmma::kMaxSplit) return "split must be in 1 .. 8";
  return qtool::wgmma::launch_warpgroups(*p, nullptr, clusters);
}
