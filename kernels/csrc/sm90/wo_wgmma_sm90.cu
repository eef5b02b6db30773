// W4A16 for 9-128 tokens on Hopper's wgmma, the weights read straight from the kernel layout into registers.
//
// Why (kernels/NOTES.md, sessions 48 and 63): at 17-128 tokens the planes kernels (mma.sync, 16-row warp tiles) are a
// latency chain, and CUTLASS's mixed-input GEMM pays ~5-7 us of fixed time per call for staging the weights through
// shared memory with TMA. Here the product is computed transposed, Y^T [n, m] = W [n, k] . X^T [k, m]:
//   - A = the weights, 64 rows per warpgroup: each lane copies its 16-byte word of a 64-k chunk of the int4 kernel
//     layout (kernels/layout.py: already the A fragments of mma.m16n8k16, which wgmma's register A repeats per warp)
//     and its rows' scales kDepth chunks ahead with cp.async into a lane-private ring in shared memory (LaneRing),
//     converts them in registers to bf16 ((q - z) * s: one exact subtraction, one rounding) and hands them to wgmma.
//     No copy of the weight beside the GEMVs' one.
//   - B = the activations, up to 128 tokens x 64 k per stage, copied by one producer warp with cp.async into the
//     128-byte-swizzled k-major layout wgmma's descriptor reads, in a ring of stages with full / empty mbarriers.
//   - Split-K over a (1, split, 1) thread block cluster: each CTA leaves its float32 partial tile in its shared
//     memory and the cluster sums them in rank order through distributed shared memory (deterministic; one launch).
//   - PDL: the weight ring is issued before griddepcontrol.wait, so the first DRAM round trips overlap the kernel
//     before.
// Compiled for sm_90a (wgmma) in its own library (kernels/sm90.py), called through ctypes (kernels/warpgroup_mm.py).
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../pdl.cuh"
#include "wgmma_ops.cuh"

#define QTOOL_WGMMA_API extern "C" __attribute__((visibility("default")))

namespace qtool::wgmma {

constexpr int kChunkK = 64;  // k per lane's 16-byte word of int4 codes (a chunk of the kernel layout)
// Chunks of codes each consumer lane has in flight (LaneRing): 16 (256 bytes a lane) for one or two warpgroups,
// 8 for four, whose 512 lanes would otherwise take 192-256 KB of shared memory.
template <int WG>
constexpr int kDepth = WG == 4 ? 8 : 16;
constexpr int kMaxSplit = 8; // the portable cluster size
constexpr int kRingSmem = 64 * 1024;  // bytes of activation stages per CTA

struct Args {  // mirrored by kernels/warpgroup_mm.py, _Args
  const void* qweight;  // int32 [n_pad / 16, k_pad / 64, 32, 4]
  const float* scale;   // [G, n_pad]
  const float* zero;    // [G, n_pad] signed-domain zero points, or null (symmetric)
  const float* bias;    // [n] or null
  const void* x;        // bf16 [m, k] row-major
  void* y;              // bf16 [m, n] row-major
  int m, n, n_pad, k, k_pad, group;  // group: k per scale (a multiple of 64), k_pad per channel
  int tile, warpgroups, split, launch;  // tokens per CTA (16 / 32 / 64 / 128), 64-row warpgroups (1, 2, 4), splits;
  // launch: bit 0 PDL, bit 1 the producer's own fence (QTOOL_WGMMA_FENCE=producer: an A/B of the consumers' fence)
};

__device__ inline uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ inline void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ inline void mbar_wait(uint32_t bar, int parity) {
  asm volatile(
      "{\n.reg .pred done;\nwait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ inline void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Arrives on `bar` once this lane's earlier cp.async copies have landed (the barrier counts 32 such arrivals).
__device__ inline void cp_async_arrive(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}
__device__ inline void cp_async16(uint32_t dst, const void* src, int bytes) {  // bytes < 16: the rest zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
}
__device__ inline void cp_async4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src) : "memory");
}
__device__ inline uint4 lds128(uint32_t at) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(at));
  return v;
}
__device__ inline float4 lds128f(uint32_t at) {
  float4 v;
  asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(at));
  return v;
}
__device__ inline float2 lds64f(uint32_t at) {
  float2 v;
  asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "r"(at));
  return v;
}
__device__ inline void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ inline void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
__device__ inline void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}
__device__ inline void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// cp.async writes through the generic proxy; wgmma reads shared memory through the async proxy.
__device__ inline void fence_async_smem() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

// Shared-memory descriptor of a k-major B tile in the 128-byte swizzle: rows of 64 bf16 (128 bytes), 8-row atoms
// 1024 bytes apart (the stride byte offset); the leading offset is unused in this mode. `addr` 1024-aligned but
// for the k16 step's 32-byte offset inside the row, which the hardware swizzles as it does the rows'.
__device__ inline uint64_t b_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(1) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}

template <int T>
__device__ inline void mma(float (&d)[T / 2], const uint32_t (&a)[4], uint64_t desc) {
  if constexpr (T == 16) mma_m64n16(d, a, desc);
  if constexpr (T == 32) mma_m64n32(d, a, desc);
  if constexpr (T == 64) mma_m64n64(d, a, desc);
  if constexpr (T == 128) mma_m64n128(d, a, desc);
}

// One chunk's 16-byte word -> the 16 A registers of its four k16 steps. Word j holds step j; nibble p + 4h the
// element h of register p (rows lane / 4 + 8 (p % 2)). 0x4300 | u is the bf16 128 + u, so v - (136 + z) is the
// exact small integer q - z (u = q + 8) and one multiply by the bf16 scale rounds once.
__device__ inline void dequant(const uint4& w, __nv_bfloat162 s0, __nv_bfloat162 s8, __nv_bfloat162 z0,
                               __nv_bfloat162 z8, uint32_t (&a)[16]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      uint32_t v;
      asm("lop3.b32 %0, %1, 0x000F000F, 0x43004300, 0xEA;" : "=r"(v) : "r"(words[j] >> (4 * p)));
      const __nv_bfloat162 t = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&v), p % 2 ? z8 : z0);
      const __nv_bfloat162 r = __hmul2(t, p % 2 ? s8 : s0);
      a[4 * j + p] = *reinterpret_cast<const uint32_t*>(&r);
    }
  }
}

template <int T>
struct Stages {  // the activation ring: T tokens x 64 k of bf16 per stage
  static constexpr int kBytes = T * kChunkK * 2;
  static constexpr int kCount = kRingSmem / kBytes < 16 ? kRingSmem / kBytes : 16;
};

// The producer warp: x's chunks [c_beg, c_beg + chunks) into the ring, rows >= m and columns >= k zero-filled.
template <int T>
__device__ void produce(const Args& p, uint32_t ring, uint32_t full, uint32_t empty, int c_beg, int chunks, int lane) {
  constexpr int S = Stages<T>::kCount;
  const __nv_bfloat16* x = static_cast<const __nv_bfloat16*>(p.x);
  for (int c = 0; c < chunks; ++c) {
    const int s = c % S, use = c / S;
    if (use > 0) mbar_wait(empty + 8 * s, (use - 1) & 1);
    const int k0 = (c_beg + c) * kChunkK;
    const uint32_t stage = ring + s * Stages<T>::kBytes;
#pragma unroll
    for (int i = lane; i < T * 8; i += 32) {  // 16-byte pieces: token t, piece q of its 128 bytes
      const int t = i >> 3, q = i & 7, k = k0 + 8 * q;
      const bool in = t < p.m && k < p.k;
      cp_async16(stage + t * 128 + ((q ^ (t & 7)) << 4), in ? x + static_cast<int64_t>(t) * p.k + k : x, in ? 16 : 0);
    }
    if (p.launch & 2) {  // the stage's copies waited for and fenced into the async proxy by their issuer
      asm volatile("cp.async.wait_all;" ::: "memory");
      fence_async_smem();
      mbar_arrive(full + 8 * s);
    } else {
      cp_async_arrive(full + 8 * s);
    }
  }
}

// Each consumer lane's private ring in shared memory: its 16-byte word of codes and its rows' scales (and zero
// points) for kDepth chunks, copied with cp.async so that many loads are in flight without holding registers
// (a ring of 8 in registers took ~250 of them and serialized the wgmmas; session 63 measured the same for the split
// GEMV). Lane-private: a lane's cp.async.wait_group is all the synchronization its slots need.
template <int WG, bool kAsym>
struct LaneRing {
  static constexpr int kLanes = WG * 128;
  static constexpr int kScaleBytes = kAsym ? 16 : 8;  // (s r0, s r0 + 8[, z r0, z r0 + 8]) float32
  static constexpr int kBytes = kDepth<WG> * kLanes * (16 + kScaleBytes);
  __device__ static uint32_t codes(uint32_t base, int slot, int tid) { return base + (slot * kLanes + tid) * 16; }
  __device__ static uint32_t scales(uint32_t base, int slot, int tid) {
    return base + kDepth<WG> * kLanes * 16 + (slot * kLanes + tid) * kScaleBytes;
  }
};

// Issue chunk c's copies into its slot (an empty group past the end, so that the waits count alike).
template <int WG, bool kAsym>
__device__ inline void issue(const Args& p, uint32_t base, int tid, const uint4* codes, int c, int c_beg, int chunks,
                             int r0, bool live) {
  using L = LaneRing<WG, kAsym>;
  if (live && c < chunks) {
    const int slot = c % kDepth<WG>;
    cp_async16(L::codes(base, slot, tid), codes + c * 32, 16);
    const int64_t at = static_cast<int64_t>((c_beg + c) * kChunkK / p.group) * p.n_pad + r0;
    const uint32_t s = L::scales(base, slot, tid);
    cp_async4(s, p.scale + at);
    cp_async4(s + 4, p.scale + at + 8);
    if constexpr (kAsym) {
      cp_async4(s + 8, p.zero + at);
      cp_async4(s + 12, p.zero + at + 8);
    }
  }
  asm volatile("cp.async.commit_group;" ::: "memory");
}

// A consumer warpgroup: 64 rows (stripes 4 wg .. 4 wg + 3 of the CTA's tile) over the CTA's chunks.
template <int T, int WG, bool kAsym>
__device__ void consume(const Args& p, uint32_t ring, uint32_t lanes, uint32_t full, uint32_t empty, int c_beg,
                        int chunks, int stripe, int tid, float (&acc)[T / 2]) {
  using L = LaneRing<WG, kAsym>;
  constexpr int S = Stages<T>::kCount;
  const int lane = tid % 32;
  const bool live = stripe * 16 < p.n_pad;
  const int r0 = stripe * 16 + lane / 4;
  const uint4* codes = static_cast<const uint4*>(p.qweight) +
                       (static_cast<int64_t>(stripe) * (p.k_pad / kChunkK) + c_beg) * 32 + lane;
  for (int c = 0; c < kDepth<WG> - 1; ++c) issue<WG, kAsym>(p, lanes, tid, codes, c, c_beg, chunks, r0, live);
  pdl_wait();
  uint32_t a[2][16];
  for (int c0 = 0; c0 < chunks; c0 += 2) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {  // two chunks per trip: a[] double-buffered by static index
      const int c = c0 + j;
      if (c < chunks) {
        issue<WG, kAsym>(p, lanes, tid, codes, c + kDepth<WG> - 1, c_beg, chunks, r0, live);
        asm volatile("cp.async.wait_group %0;" ::"n"(kDepth<WG> - 1) : "memory");  // chunk c's group has landed
        const int slot = c % kDepth<WG>;
        const uint4 w = lds128(L::codes(lanes, slot, tid));
        float4 sz = make_float4(0.f, 0.f, 0.f, 0.f);
        const uint32_t at = L::scales(lanes, slot, tid);
        if constexpr (kAsym) {
          sz = lds128f(at);
        } else {
          const float2 s2 = lds64f(at);
          sz.x = s2.x;
          sz.y = s2.y;
        }
        dequant(w, __float2bfloat162_rn(sz.x), __float2bfloat162_rn(sz.y), __float2bfloat162_rn(136.0f + sz.z),
                __float2bfloat162_rn(136.0f + sz.w), a[j]);
        const int s = c % S;
        mbar_wait(full + 8 * s, (c / S) & 1);
        fence_async_smem();
        wgmma_fence();
        const uint32_t stage = ring + s * Stages<T>::kBytes;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const uint32_t step[4] = {a[j][4 * kk], a[j][4 * kk + 1], a[j][4 * kk + 2], a[j][4 * kk + 3]};
          mma<T>(acc, step, b_desc(stage + 32 * kk));
        }
        wgmma_commit();
        wgmma_wait<1>();  // chunk c - 1 done: its stage and its A registers are free
        if (c > 0 && lane == 0) mbar_arrive(empty + 8 * ((c - 1) % S));
      }
    }
  }
  wgmma_wait<0>();
  asm volatile("cp.async.wait_all;" ::: "memory");  // the empty groups past the end
}

// After the mainloop: the CTA's partial tile into shared memory, the cluster's sum in rank order, y stored.
template <int T, int WG>
__device__ void store(const Args& p, float* part, const float (&acc)[T / 2], bool consumer, int wg, int warp,
                      int lane) {
  constexpr int R = WG * 64, kPitch = R + 4;  // +4: the tile's stores fall in distinct banks
  if (consumer) {
    const int r = 64 * wg + 16 * warp + lane / 4;
#pragma unroll
    for (int i = 0; i < T / 8; ++i) {
      const int t = 8 * i + 2 * (lane % 4);
      part[t * kPitch + r] = acc[4 * i];
      part[(t + 1) * kPitch + r] = acc[4 * i + 1];
      part[t * kPitch + r + 8] = acc[4 * i + 2];
      part[(t + 1) * kPitch + r + 8] = acc[4 * i + 3];
    }
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
      if (n + i < p.n) y[static_cast<int64_t>(t) * p.n + n + i] = __float2bfloat16(v[i] + (p.bias ? p.bias[n + i] : 0.f));
    }
  }
  if (split > 1) cluster.sync();  // no CTA leaves while another reads its tile
}

// Shared memory: the activation stages, then the lanes' rings; after the mainloop the partial tile takes it from the
// start (every copy landed, every wgmma read its stage); then the barriers.
template <int T, int WG, bool kAsym>
struct SmemPlan {
  static constexpr int kMainloop = Stages<T>::kCount * Stages<T>::kBytes + LaneRing<WG, kAsym>::kBytes;
  static constexpr int kTile = T * (WG * 64 + 4) * 4;
  static constexpr int kData = kMainloop > kTile ? kMainloop : kTile;
};

template <int T, int WG, bool kAsym>
__global__ void __launch_bounds__(WG * 128 + 32, 1) w4_wgmma_kernel(const Args p) {
  constexpr int kData = SmemPlan<T, WG, kAsym>::kData;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t ring = (raw + 1023) & ~1023u;  // the swizzle's atoms are 1024-byte aligned
  constexpr int S = Stages<T>::kCount;
  const uint32_t lanes = ring + S * Stages<T>::kBytes, full = ring + kData, empty = full + 8 * S;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks_total = p.k_pad / kChunkK, split = gridDim.y, rank = blockIdx.y;
  const int c_beg = chunks_total * rank / split, chunks = chunks_total * (rank + 1) / split - c_beg;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      mbar_init(full + 8 * s, 32);
      mbar_init(empty + 8 * s, WG * 4);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  float acc[T / 2];
#pragma unroll
  for (int i = 0; i < T / 2; ++i) acc[i] = 0.0f;
  const bool consumer = warp < WG * 4;
  if (consumer) {
    consume<T, WG, kAsym>(p, ring, lanes, full, empty, c_beg, chunks, blockIdx.x * WG * 4 + warp,
                          static_cast<int>(threadIdx.x), acc);
  } else {
    pdl_wait();
    produce<T>(p, ring, full, empty, c_beg, chunks, lane);
  }
  pdl_release();
  __syncthreads();  // every wgmma has read its stage: the ring becomes the partial tile
  store<T, WG>(p, reinterpret_cast<float*>(smem_raw + (ring - raw)), acc, consumer, warp / 4, warp % 4, lane);
}

template <int T, int WG, bool kAsym>
const char* launch(const Args& p, cudaStream_t stream) {
  constexpr int kSmem = 1024 + SmemPlan<T, WG, kAsym>::kData + 16 * Stages<T>::kCount;
  static_assert(kSmem <= 227 * 1024, "shared memory past the SM's 227 KB");
  auto kernel = w4_wgmma_kernel<T, WG, kAsym>;
  static const cudaError_t attr = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (attr != cudaSuccess) return cudaGetErrorString(attr);
  const dim3 grid((p.n_pad + WG * 64 - 1) / (WG * 64), p.split);
  const cudaError_t err =
      launch_cluster_y(kernel, (p.launch & 1) != 0, grid, dim3(WG * 128 + 32), kSmem, stream, p.split, p);
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <int T, int WG>
const char* launch_zero(const Args& p, cudaStream_t stream) {
  return p.zero != nullptr ? launch<T, WG, true>(p, stream) : launch<T, WG, false>(p, stream);
}

template <int WG>
const char* launch_tile(const Args& p, cudaStream_t stream) {
  switch (p.tile) {
    case 16: return launch_zero<16, WG>(p, stream);
    case 32: return launch_zero<32, WG>(p, stream);
    case 64: return launch_zero<64, WG>(p, stream);
    case 128:  // 64 accumulators a thread: four warpgroups' 544 threads leave 120 registers, and ptxas serializes
      if constexpr (WG == 4) return "tile 128 takes one or two warpgroups";
      else return launch_zero<128, WG>(p, stream);
    default: return "tile must be 16, 32, 64 or 128 tokens";
  }
}

}  // namespace qtool::wgmma

// y [m, n] = x [m, k] . dequant(qweight)^T (+ bias): nullptr, or the error.
QTOOL_WGMMA_API const char* qtool_sm90_wgmma_w4(const qtool::wgmma::Args* p, cudaStream_t stream) {
  using namespace qtool::wgmma;
  if (p->m < 1 || p->m > p->tile) return "m must be in 1 .. tile";
  if (p->k % 8 || p->k_pad % kChunkK || p->k > p->k_pad) return "k must be a multiple of 8, k_pad of 64, k <= k_pad";
  if (p->group % kChunkK || p->group <= 0) return "group must be a positive multiple of 64";
  if (p->split < 1 || p->split > kMaxSplit || p->split > p->k_pad / kChunkK) return "split must be in 1 .. 8";
  if (p->n_pad % 16 || p->n > p->n_pad) return "n_pad must be a multiple of 16 and >= n";
  if (reinterpret_cast<uintptr_t>(p->x) % 16 || reinterpret_cast<uintptr_t>(p->qweight) % 16)
    return "x and qweight must be 16-byte aligned";
  switch (p->warpgroups) {
    case 1: return launch_tile<1>(*p, stream);
    case 2: return launch_tile<2>(*p, stream);
    case 4: return launch_tile<4>(*p, stream);
    default: return "warpgroups must be 1, 2 or 4";
  }
}
