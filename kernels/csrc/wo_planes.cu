// wo_gemv variant 4, "planes": the one-token GEMV of symmetric 4-bit weights on the int8 tensor cores, for
// 1 <= m <= kPlanesMaxTokens tokens (variants 4-6 stage x in every block: unrouted since session 37), and
// wo_planes_gemv, the same on planes given by x_planes (routed at 1-8 tokens, int8_planes.planes_route; from 5 tokens
// with two or four n-tiles of the mma per A fragment, session 39).
//
// Why (kernels/NOTES.md, "Session 36"): ncu put the ring GEMV (wo_gemv.cu) at one token at 41-44% of its issue
// slots and 30-47% of DRAM bandwidth, each warp a chain of ~1,600 instructions at ~13 cycles each, ~22 per 16 x 16
// subtile whatever the code width (the LOP3 + HADD2 per bf16 pair of the A fragment). Here x becomes two int8
// planes (as act_quant's "int8x2", split_mm.py, but with s = max|x| / 127 per token and x = s hi + (s / 254) lo
// within s / 508, ~2^-16 of the token's range: no clamps) and mma.m16n8k32.s8 takes 512 weights per instruction:
//   - A from the wo layout as it is (wo_kernels.h, wo_decode.cuh): in subtile word j the even nibbles are all row
//     g (k = 2t, 2t + 8, 2t + 1, 2t + 9) and the odd ones row g + 8 at the same k, so a masked word is an int8 A
//     register (int4_word_s8x16: 16 q, signed, one shift and two LOP3 per word for both rows), words j and j + 1
//     giving a0, a1 / a2, a3 of one 16 x 32 tile.
//   - B: the k order inside a tile is free as long as A and B agree, so the planes are staged with lane t's slot
//     4t + b of subtile j holding k = 16j + (2t, 2t + 8, 2t + 1, 2t + 9)[b] (plane_slot), 16 bytes per lane per chunk.
//   - The m tokens and both planes fill the mma's 8 columns: column 2i = token i's high plane, 2i + 1 its low
//     plane, so lane t's C registers are token t's two planes for rows g and g + 8, and each chunk ends with
//     acc += s_w * (hi + lo / 254) per row (a chunk lies inside one group: groups >= 64 here).
// Every block quantizes all of x while staging it (a max over each token, a barrier, the planes), since each needs
// all of it; whether that costs what the main loop saves is the first thing to measure.
#include <cstdint>

#include "pdl.cuh"
#include "planes.cuh"
#include "wo_common.cuh"
#include "x_planes.cuh"

namespace qtool {
namespace {

constexpr int kPlanesWarps = 8;    // warps per block, all on one 16-row stripe, splitting its chunks
constexpr int kPlanesBatch = 4;    // chunks per lane in flight (the lean ring's depth)
constexpr int kPlanesBatchAsym = 3;  // with zero points: a shallower ring, to stay within 64 registers
constexpr int kPlanesChunkK = 64;  // int4 chunk (wo_kernels.h, chunk_k(4))

// x [m, k_padded] (xg) -> its planes at dst (rows 2r / 2r + 1 = token r's high / low plane, row_bytes apart, bytes at
// plane_slot order; shared memory in the GEMV), each token's s in `scale` and (1 / s, 254 / s) in `inverse`.
// THREADS threads, three barriers; ends with the planes visible to the block.
template <typename T, int THREADS, bool NATURAL = false>  // NATURAL: bytes in k order (the int8-row GEMV's B)
__device__ inline void quantize_planes(const uint4* xg, int m, int k_padded, int row_bytes, uint8_t* dst, float* scale,
                                       float2* inverse, float (*red)[kPlanesMaxTokens]) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int vecs = k_padded / 8;
  // 1. max |x| of each token
#pragma unroll
  for (int r = 0; r < kPlanesMaxTokens; ++r) {
    float mx = 0.0f;
    if (r < m) {
      for (int v = threadIdx.x; v < vecs; v += THREADS) mx = vec_absmax<T>(__ldg(xg + r * vecs + v), mx);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    if (lane == 0) red[warp][r] = mx;
  }
  __syncthreads();
  if (threadIdx.x < kPlanesMaxTokens) {
    float mx = 0.0f;
#pragma unroll
    for (int w = 0; w < THREADS / 32; ++w) mx = fmaxf(mx, red[w][threadIdx.x]);
    scale[threadIdx.x] = token_scale(mx, inverse[threadIdx.x]);
  }
  __syncthreads();
  // 2. the planes, one 16-k subtile (two vectors of x) per step
  const int subs = k_padded / 16;
  for (int i = threadIdx.x; i < m * subs; i += THREADS) {
    int r = 0;  // i / subs for m <= 4 tokens, without a division
#pragma unroll 1
    for (int j = 1; j < m; ++j) r += i >= j * subs;
    const int j = i - r * subs;
    store_subtile<T, NATURAL>(__ldg(xg + r * vecs + 2 * j), __ldg(xg + r * vecs + 2 * j + 1), scale[r], inverse[r],
                              dst + 2 * r * row_bytes + (NATURAL ? 16 * j : plane_slot(16 * j)), row_bytes);
  }
  __syncthreads();
}

// x_planes: one block per token writes its planes [2, k_padded] and its scale, for the GEMVs with given planes, so
// that no block of them repeats the quantization. The token is read once, into registers (SUBS 16-k subtiles per
// thread, all loads in flight together), its max reduced in one barrier and its planes written from the registers:
// the block is one load round trip long at any K up to kXPlanesThreads * 16 * SUBS (the looped form's two passes
// over x were ~5 us at K = 28672, session 38).
// GATED: the token is a gated MLP's [gate | up] row (2 k_padded values) and its planes are those of silu(gate) * up
// rounded to T, the values silu_mul would write: the down projection's input without that kernel.
constexpr int kXPlanesThreads = 512;
template <typename T, bool NATURAL, int SUBS, bool GATED = false>
__global__ void __launch_bounds__(kXPlanesThreads) x_planes_kernel(const XPlanesProblem p) {
  __shared__ float red[kXPlanesThreads / 32];
  pdl_wait_then_release();
  const int r = blockIdx.x, subs = p.k_padded / 16, row_vecs = p.k_padded / 8;
  const uint4* xg = opaque(static_cast<const uint4*>(p.x)) + static_cast<size_t>(r) * row_vecs * (GATED ? 2 : 1);
  uint4 v[SUBS][2];
  uint4 up[GATED ? SUBS : 1][2];
  float mx = 0.0f;
#pragma unroll
  for (int i = 0; i < SUBS; ++i) {
    const int j = threadIdx.x + i * kXPlanesThreads;
    v[i][0] = v[i][1] = up[GATED ? i : 0][0] = up[GATED ? i : 0][1] = make_uint4(0, 0, 0, 0);
    if (j < subs) {
      v[i][0] = __ldg(xg + 2 * j);
      v[i][1] = __ldg(xg + 2 * j + 1);
      if constexpr (GATED) {
        up[i][0] = __ldg(xg + row_vecs + 2 * j);
        up[i][1] = __ldg(xg + row_vecs + 2 * j + 1);
      }
    }
  }
  if constexpr (GATED) {  // past the row (j >= subs) both halves are zero, and so is silu(0) * 0
#pragma unroll
    for (int i = 0; i < SUBS; ++i) {
      v[i][0] = silu_times_vec<T>(v[i][0], up[i][0]);
      v[i][1] = silu_times_vec<T>(v[i][1], up[i][1]);
    }
  }
#pragma unroll
  for (int i = 0; i < SUBS; ++i) mx = vec_absmax<T>(v[i][1], vec_absmax<T>(v[i][0], mx));
#pragma unroll
  for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = mx;
  __syncthreads();
  mx = 0.0f;
#pragma unroll
  for (int w = 0; w < kXPlanesThreads / 32; ++w) mx = fmaxf(mx, red[w]);  // every thread: no second barrier
  store_token_planes<T, NATURAL, SUBS, kXPlanesThreads>(v, mx, r, p.k_padded, p.planes, p.xscale);
}

// Registers per thread and blocks per SM by n-tiles: the ring holds NT B fragments per slot beside the codes.
constexpr int planes_min_blocks(int nt) { return nt == 1 ? 4 : nt == 2 ? 3 : 2; }
constexpr int planes_batch(int nt, bool asym) {
  return asym && nt > 1 ? 2 : asym || nt == 2 ? kPlanesBatchAsym : kPlanesBatch;
}

template <typename T,   // activation and output type: __half or __nv_bfloat16
          int WARPS,    // warps per block
          int STRIPES,  // 16-row stripes per block (variant 4: 1; 5: 2; 6: 4, the staged planes shared by more
                        // rows, each stripe's chunks split over WARPS / STRIPES warps)
          bool GIVEN,   // the planes and scales from x_planes (p.planes, p.xscale) instead of staged from x
          bool ASYM,    // zero points (p.w.zero; GIVEN only), w = s (q - z): A stays 16 q and 16 z times the chunk's
                        // sum of x (two more mma) is subtracted
          int NT = 1>   // n-tiles of 4 tokens (GIVEN only): each A fragment feeds NT mma pairs, B of n-tile i is
                        // plane rows 8 i .. 8 i + 7; 5-8 tokens take 2, 9-16 take 4
// NT = 1: 64 registers, four blocks per SM. With zero points the ring is 3 deep: at 4, ptxas spilled 56 bytes, and at
// 80 registers (three blocks) the pair ran 1.9-2.5x bf16 at 1-4 tokens against 1.9-3.1x now (session 37). A/B'd
// there and dropped: A = q - z per byte ((u | 128) - (z + 8), no borrow), 2-10% slower than the two extra mma.
// NT = 2 / 4: three / two blocks per SM (80 / 128 registers) for the B fragments in the ring.
__global__ void __launch_bounds__(WARPS * 32, planes_min_blocks(NT) * kPlanesWarps / WARPS)
    wo_planes_kernel(const WoProblem p) {
  static_assert(NT == 1 || GIVEN, "more than 4 tokens only on given planes");
  extern __shared__ uint4 planes_dyn[];
  __shared__ float scale[4 * NT];
  __shared__ float2 inverse[kPlanesMaxTokens];
  __shared__ float red[WARPS][kPlanesMaxTokens];
  constexpr int SWARPS = WARPS / STRIPES;  // warps per stripe
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32 % SWARPS;
  const int g = lane / 4, t = lane % 4;
  const int stripe = blockIdx.x * STRIPES + threadIdx.x / 32 / SWARPS;
  const bool live = stripe < p.w.n_padded / kStripeRows;  // an odd last stripe: its warps only help stage x
  const int nchunks = live ? p.w.k_padded / kPlanesChunkK : 0;

  // Lane t = 0 / 1 of each quad loads the scale of row g / g + 8 per chunk (t = 2, 3 repeat them: no branch).
  const float* par = opaque(p.w.scale + stripe * kStripeRows + g + 8 * (t % 2));
  const float* zpar = ASYM ? opaque(p.w.zero + stripe * kStripeRows + g + 8 * (t % 2)) : nullptr;  // the same for z
  const uint32_t gstride = p.w.n_padded;

  // The ring of wo_gemv.cu: slot u holds chunk c0 + u * WARPS; all slots loaded before any math, each refilled
  // after its math with the same slot of the next pass.
  constexpr int BATCH = planes_batch(NT, ASYM);
  uint4 packed[BATCH];
  uint4 given[GIVEN ? BATCH : 1][NT];  // GIVEN: the B fragments of the slot's chunk, loaded with its codes
  float prm[BATCH] = {};
  float zrm[ASYM ? BATCH : 1] = {};
  // B: column g of n-tile i is token (8 i + g) / 2's plane g % 2 (columns past 2m read token 0's high plane: never
  // stored); boff[i]: that plane row's lane t bytes, in 16-byte units.
  const uint4* gsrc = reinterpret_cast<const uint4*>(p.planes);
  uint32_t boff[NT];
#pragma unroll
  for (int i = 0; i < NT; ++i) boff[i] = (8 * i + g < 2 * p.m ? 8 * i + g : 0) * (p.w.k_padded / 16) + t;
  const int brow = g < 2 * p.m ? g : 0;
  const uint4* next_codes = reinterpret_cast<const uint4*>(p.w.qweight) +
                            (static_cast<size_t>(stripe) * nchunks + warp) * chunk_vecs(4) + lane;  // nchunks 0: unused
  int next_k = warp * kPlanesChunkK;
  auto load_planes = [&](int u, int k) {  // chunk k / 64's 64 bytes of each plane row at k
#pragma unroll
    for (int i = 0; i < NT; ++i) given[u][i] = __ldg(gsrc + boff[i] + k / 16);
  };
  auto load_next = [&](int u, bool planes_too) {
    if (next_k < nchunks * kPlanesChunkK) {
      packed[u] = load_streaming(next_codes);
      prm[u] = __ldg(par + (static_cast<uint32_t>(next_k) >> p.w.group_shift) * gstride);
      if constexpr (ASYM) zrm[u] = __ldg(zpar + (static_cast<uint32_t>(next_k) >> p.w.group_shift) * gstride);
      if (GIVEN && planes_too) load_planes(u, next_k);
    }
    next_codes += SWARPS * chunk_vecs(4);
    next_k += SWARPS * kPlanesChunkK;
  };
  // The first fill's codes and scales go out before the wait (static weights); the planes, written by the kernel
  // before this one (x_planes), only after it.
#pragma unroll
  for (int u = 0; u < BATCH; ++u) load_next(u, false);
  pdl_wait_then_release();  // x, planes, xscale, bias and y only past this point (pdl.cuh)
  if constexpr (GIVEN) {
#pragma unroll
    for (int u = 0; u < BATCH; ++u) {
      const int k = (warp + u * SWARPS) * kPlanesChunkK;
      if (k < nchunks * kPlanesChunkK) load_planes(u, k);
    }
    if (threadIdx.x < p.m) scale[threadIdx.x] = __ldg(p.xscale + threadIdx.x);  // read past the epilogue's barrier
  } else {
    quantize_planes<T, WARPS * 32>(opaque(static_cast<const uint4*>(p.x)), p.m, p.w.k_padded,
                                   plane_row_bytes(p.w.k_padded), reinterpret_cast<uint8_t*>(planes_dyn), scale,
                                   inverse, red);  // every warp, live or not: it has barriers
  }
  const uint4* bsrc = reinterpret_cast<const uint4*>(reinterpret_cast<const uint8_t*>(planes_dyn) +
                                                     brow * plane_row_bytes(p.w.k_padded) + 16 * t);

  float acc[NT][2] = {};  // token 4 i + t of n-tile i: rows g, g + 8, in units of 16 s_x
  for (int c0 = warp; c0 < nchunks; c0 += SWARPS * BATCH) {
#pragma unroll
    for (int u = 0; u < BATCH; ++u) {
      const int c = c0 + u * SWARPS;
      if (c >= nchunks) break;  // warp-uniform
      const uint32_t w[4] = {packed[u].x, packed[u].y, packed[u].z, packed[u].w};
      // A of the 16 x 32 tiles: words 2 tile / 2 tile + 1 are k 0..15 / 16..31. One n-tile makes each tile's A just
      // before its mma (as few registers live as the 64-register launch needs); more make both once for all n-tiles.
      uint32_t a[2][4];
      auto make_a = [&](int tile) { tile_a(int4_word_s8x16(w[2 * tile]), int4_word_s8x16(w[2 * tile + 1]), a[tile]); };
      if constexpr (NT > 1) {
        make_a(0);
        make_a(1);
      }
      const float s0 = __shfl_sync(0xffffffffu, prm[u], 0, 4), s1 = __shfl_sync(0xffffffffu, prm[u], 1, 4);
#pragma unroll
      for (int i = 0; i < NT; ++i) {
        const uint4 bv = GIVEN ? given[u][i] : bsrc[c * (kPlanesChunkK / 16)];  // subtiles 0..3: 4 bytes each
        int d[4] = {};
        if constexpr (NT == 1) make_a(0);
        mma_s8_16832(d, a[0], bv.x, bv.y);
        if constexpr (NT == 1) make_a(1);
        mma_s8_16832(d, a[1], bv.z, bv.w);
        fold_planes(d, s0, s1, acc[i]);
        if constexpr (ASYM) {  // A was 16 q: subtract 16 z times the chunk's sum of x
          const float sum = chunk_plane_sum(bv);
          const float z0 = __shfl_sync(0xffffffffu, zrm[u], 0, 4), z1 = __shfl_sync(0xffffffffu, zrm[u], 1, 4);
          acc[i][0] = fmaf(-s0 * z0, sum, acc[i][0]);
          acc[i][1] = fmaf(-s1 * z1, sum, acc[i][1]);
        }
      }
      load_next(u, true);
    }
  }

  prefetch_next_layer(p, WARPS * 32);

  store_stripes<T, WARPS, STRIPES, NT>(p, acc, scale, 1.0f / 16.0f);
}

template <typename T, int STRIPES, bool GIVEN, bool ASYM, int NT = 1>
void launch_typed(const WoProblem& p, cudaStream_t stream) {
  const int smem = GIVEN ? 0 : planes_smem_bytes(p.m, p.w.k_padded);
  auto* kernel = wo_planes_kernel<T, kPlanesWarps, STRIPES, GIVEN, ASYM, NT>;
  constexpr int kStaticBytes = kPlanesWarps * (kStripeRows + 1) * kPlanesMaxTokens * 4 + kPlanesMaxTokens * 12;
  if (smem + kStaticBytes > (48 << 10)) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  const int blocks = (p.w.n_padded / kStripeRows + STRIPES - 1) / STRIPES;
  launch_maybe_pdl(kernel, p.pdl, dim3(blocks), dim3(kPlanesWarps * 32), smem, stream, p);
}

template <int STRIPES, bool GIVEN, bool ASYM>
void launch_dtype(const WoProblem& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  if constexpr (GIVEN) {  // 5-16 tokens: 2 or 4 n-tiles
    const int nt = planes_ntiles(p.m);
    if (nt == 2) {
      bf16 ? launch_typed<__nv_bfloat16, STRIPES, true, ASYM, 2>(p, stream)
           : launch_typed<__half, STRIPES, true, ASYM, 2>(p, stream);
      return;
    }
    if (nt == 4) {
      bf16 ? launch_typed<__nv_bfloat16, STRIPES, true, ASYM, 4>(p, stream)
           : launch_typed<__half, STRIPES, true, ASYM, 4>(p, stream);
      return;
    }
  }
  bf16 ? launch_typed<__nv_bfloat16, STRIPES, GIVEN, ASYM>(p, stream)
       : launch_typed<__half, STRIPES, GIVEN, ASYM>(p, stream);
}

template <bool GIVEN, bool ASYM = false>
void launch_stripes(const WoProblem& p, int stripes, cudaStream_t stream) {
  stripes == 4   ? launch_dtype<4, GIVEN, ASYM>(p, stream)
  : stripes == 2 ? launch_dtype<2, GIVEN, ASYM>(p, stream)
                 : launch_dtype<1, GIVEN, ASYM>(p, stream);
}

}  // namespace

void launch_wo_planes(const WoProblem& p, int stripes, cudaStream_t stream) {
  if (p.planes == nullptr)
    launch_stripes<false>(p, stripes, stream);  // symmetric only (ops.cpp, planes_take)
  else
    p.w.zero != nullptr ? launch_stripes<true, true>(p, stripes, stream) : launch_stripes<true>(p, stripes, stream);
}

// Longer tokens (K > kXPlanesThreads * 16 * 4 = 32768): the looped form, two passes over x.
template <typename T, bool NATURAL>
__global__ void __launch_bounds__(kXPlanesThreads) x_planes_looped_kernel(const XPlanesProblem p) {
  __shared__ float scale[kPlanesMaxTokens];
  __shared__ float2 inverse[kPlanesMaxTokens];
  __shared__ float red[kXPlanesThreads / 32][kPlanesMaxTokens];
  pdl_wait_then_release();
  const int r = blockIdx.x;
  quantize_planes<T, kXPlanesThreads, NATURAL>(
      opaque(static_cast<const uint4*>(p.x)) + static_cast<size_t>(r) * (p.k_padded / 8), 1, p.k_padded, p.k_padded,
      reinterpret_cast<uint8_t*>(p.planes) + 2 * static_cast<size_t>(r) * p.k_padded, scale, inverse, red);
  if (threadIdx.x == 0) p.xscale[r] = scale[0];
}

template <typename T, bool NATURAL>
void launch_x_planes_typed(const XPlanesProblem& p, cudaStream_t stream) {
  const int subs = p.k_padded / 16, per_thread = (subs + kXPlanesThreads - 1) / kXPlanesThreads;
  if (p.gated) {  // slot order only (wo_planes_gemv's down projection), K <= 32768 (ops.cpp)
    auto* gated = per_thread <= 1 ? x_planes_kernel<T, false, 1, true>
                  : per_thread <= 2 ? x_planes_kernel<T, false, 2, true> : x_planes_kernel<T, false, 4, true>;
    launch_maybe_pdl(gated, p.pdl, dim3(p.m), dim3(kXPlanesThreads), 0, stream, p);
    return;
  }
  auto* kernel = per_thread <= 1 ? x_planes_kernel<T, NATURAL, 1>
                 : per_thread <= 2 ? x_planes_kernel<T, NATURAL, 2>
                 : per_thread <= 4 ? x_planes_kernel<T, NATURAL, 4>
                                   : x_planes_looped_kernel<T, NATURAL>;  // 8 per thread spill at 512 threads
  launch_maybe_pdl(kernel, p.pdl, dim3(p.m), dim3(kXPlanesThreads), 0, stream, p);
}

void launch_x_planes(const XPlanesProblem& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  if (p.natural)
    bf16 ? launch_x_planes_typed<__nv_bfloat16, true>(p, stream) : launch_x_planes_typed<__half, true>(p, stream);
  else
    bf16 ? launch_x_planes_typed<__nv_bfloat16, false>(p, stream) : launch_x_planes_typed<__half, false>(p, stream);
}

}  // namespace qtool
