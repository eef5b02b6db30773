// wo_planes_gemv variant 3, "tile": 4-bit weights (zero points or none) times x's int8 planes (x_planes) for 1 <= m <=
// kPlanesTileMaxTokens tokens, the planes staged once per block in shared memory and read by all its rows.
// WRITTEN IN SESSION 39 WITHOUT DEVICE TIME: unrouted unless QTOOL_PLANES_GEMM is set (kernels/int8_planes.py).
//
// Why (kernels/NOTES.md, "Session 39"): wo_planes_gemv with four n-tiles (9-16 tokens) lost because each warp loads
// its own B fragments (4 x 512 bytes per 512 bytes of codes) from L2, and the L2 ran out (~7.6 TB/s). Here the
// structure is wo_gemm_v3's (its weight ring, its cp.async pipeline, its split-K over a cluster) with the planes'
// arithmetic (wo_planes.cu): 8 warps on 8 stripes of 16 rows walk the same 64-k chunks of one K slice, so the planes
// of a chunk (2 m rows x 64 bytes) are copied into shared memory once for 128 rows, 1/8 of what the per-warp loads
// moved at 16 tokens; the codes stream to registers as in the GEMVs (their layout is the A fragment as loaded).
//   - A block: 8 warps = 8 stripes (warp w: stripe 8 blockIdx.x + w), the chunks [c_beg, c_end) of its split.
//   - Codes: each lane's ring of kTileRing 16-byte chunks of its stripe, all issued before the PDL wait (static
//     weights), each slot refilled after its math, as wo_gemv's; the group scales ride along.
//   - Planes: stages of kTileRing chunks ([chunk][plane row][64 bytes]: a warp's LDS.128 of rows 8 i .. 8 i + 7 is
//     512 contiguous bytes), kTileStages stages in flight through cp.async, one barrier per stage.
//   - Math per chunk and n-tile (4 tokens x 2 planes): two mma.m16n8k32.s8 on A from int4_word_s8x16, acc += s_w
//     (hi + lo / 254), as wo_planes.cu; columns past 2 m read stale bytes into C columns that are never stored.
//   - Split-K over a thread block cluster (1, splits, 1): each block writes its float32 partial tile to shared
//     memory and rank r sums the r-th share over the cluster through distributed shared memory, in rank order
//     (deterministic), then y = sum * s_x / 16 + bias. One launch, no workspace. sm_90 only (ops.cpp refuses others).
#include <cstdint>

#include <cooperative_groups.h>

#include "pdl.cuh"
#include "planes.cuh"
#include "wo_common.cuh"

namespace qtool {
namespace {

namespace cg = cooperative_groups;

constexpr int kTileWarps = 8;     // = stripes per block: 128 rows
constexpr int kTileRing = 4;      // chunks per lane in flight, and chunks per stage of the planes
constexpr int kTileStages = 3;    // stages of the planes in shared memory: two ahead of the one in use
constexpr int kTileChunkK = 64;   // int4 chunk (wo_kernels.h, chunk_k(4))
constexpr int kTileMaxSplits = 8;  // portable cluster size

// Bytes of one stage of the planes for NT n-tiles (8 NT plane rows: 4 NT tokens).
constexpr int tile_stage_bytes(int nt) { return kTileRing * 8 * nt * kTileChunkK; }
constexpr int tile_smem_bytes(int nt) {
  const int stages = kTileStages * tile_stage_bytes(nt);
  const int partial = kTileWarps * kStripeRows * 4 * nt * 4;  // the epilogue's partial tile overlays the stages
  return stages > partial ? stages : partial;
}

// Stage s of the split's planes (chunks c_beg + kTileRing s ...) into slot `dst` by cp.async, 16-byte pieces: piece
// i = threadIdx.x + 256 j lands at 16 i, so each thread keeps one plane row r and quarter q (src_row: the planes at
// row r, quarter q, chunk c0) and walks chunks c0 + j PER. Plane rows past 2 m and chunks past c_end are left as
// they are (never read into a stored column / never read). Session 40's ncu: the index arithmetic this replaces
// was ~40 of the ~200 instructions per chunk and warp at eight n-tiles.
template <int NT>
__device__ inline void copy_stage(uint8_t* dst, const uint8_t* src_row, bool row_ok, int c0, int chunk0, int c_end) {
  constexpr int PER = kTileWarps * 32 / (8 * NT * 4);  // chunks one pass of the block covers: 4, 2, 1
#pragma unroll
  for (int j = 0; j < kTileRing / PER; ++j) {
    if (row_ok && chunk0 + c0 + j * PER < c_end)
      cp_async_16(dst + 16 * (threadIdx.x + kTileWarps * 32 * j), src_row + (chunk0 + j * PER) * kTileChunkK, true);
  }
}

template <typename T,  // output type: __half or __nv_bfloat16
          int NT,      // n-tiles of 4 tokens: 2, 4 or 8
          bool ASYM,   // zero points (p.w.zero), w = s (q - z): A stays 16 q and 16 z times the chunk's sum of x (two
                       // more mma per n-tile, as wo_planes.cu) is subtracted
          bool PAIR>   // groups of >= 128 (or per channel), no zero points: a pair of chunks shares its scales (c_beg
                       // is a multiple of kTileRing), so the int32 sums run over the pair and are folded once
// 8 warps; eight n-tiles or zero points at most 128 registers (two blocks per SM: the n-tiles' accumulators are
// live at once so their mma overlap), otherwise 80 (three blocks, 24 warps, 96 chunks of codes in flight per SM).
__global__ void __launch_bounds__(kTileWarps * 32, (ASYM || NT == 8) ? 2 : 3)
    wo_planes_tile_kernel(const WoProblem p, int chunks_per_split) {
  extern __shared__ __align__(16) uint8_t tile_smem[];
  __shared__ float scale[4 * NT];
  constexpr int ROWS = 8 * NT, STAGE = tile_stage_bytes(NT);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int stripe = blockIdx.x * kTileWarps + warp;
  const bool live = stripe < p.w.n_padded / kStripeRows;  // a last block's extra warps copy planes, no math
  const int nchunks = p.w.k_padded / kTileChunkK;
  const int c_beg = min(nchunks, static_cast<int>(blockIdx.y) * chunks_per_split);
  const int c_end = min(nchunks, c_beg + chunks_per_split);

  // Lane t = 0 / 1 of each quad loads the scale of row g / g + 8 per chunk (t = 2, 3 repeat them), as wo_planes.cu.
  const float* par = opaque(p.w.scale + (live ? stripe : 0) * kStripeRows + g + 8 * (t % 2));
  const float* zpar = ASYM ? opaque(p.w.zero + (live ? stripe : 0) * kStripeRows + g + 8 * (t % 2)) : nullptr;
  const uint32_t gstride = p.w.n_padded;
  uint4 packed[kTileRing];
  float prm[kTileRing] = {};
  float zrm[ASYM ? kTileRing : 1] = {};
  const uint4* next_codes = reinterpret_cast<const uint4*>(p.w.qweight) +
                            (static_cast<size_t>(live ? stripe : 0) * nchunks + c_beg) * chunk_vecs(4) + lane;
  int next_c = c_beg;
  auto load_next = [&](int u) {
    if (live && next_c < c_end) {
      packed[u] = load_streaming(next_codes);
      const uint32_t group = static_cast<uint32_t>(next_c * kTileChunkK) >> p.w.group_shift;
      prm[u] = __ldg(par + group * gstride);
      if constexpr (ASYM) zrm[u] = __ldg(zpar + group * gstride);
    }
    next_codes += chunk_vecs(4);
    ++next_c;
  };
#pragma unroll
  for (int u = 0; u < kTileRing; ++u) load_next(u);  // static weights: before the wait
  pdl_wait_then_release();  // planes, xscale, bias and y only past this point (pdl.cuh)
  if (threadIdx.x < p.m) scale[threadIdx.x] = __ldg(p.xscale + threadIdx.x);

  // This thread's plane row and quarter in every stage copy (copy_stage).
  const int c0 = threadIdx.x / (ROWS * 4), prow = threadIdx.x / 4 % ROWS;
  const uint8_t* src_row = reinterpret_cast<const uint8_t*>(p.planes) + static_cast<size_t>(prow) * p.w.k_padded +
                           c0 * kTileChunkK + 16 * (threadIdx.x % 4);
  const bool row_ok = prow < 2 * p.m;
  const int nstages = (c_end - c_beg + kTileRing - 1) / kTileRing;
#pragma unroll
  for (int s = 0; s < kTileStages - 1; ++s) {  // always commit: the group count stays the stage count
    if (s < nstages) copy_stage<NT>(tile_smem + s * STAGE, src_row, row_ok, c0, c_beg + s * kTileRing, c_end);
    cp_async_commit();
  }

  float acc[NT][2] = {};  // token 4 i + t of n-tile i: rows g, g + 8, in units of 16 s_x
  int d[NT][4] = {};      // the int32 sums of the chunk (or pair) not yet folded into acc
  float s0 = 0.0f, s1 = 0.0f;  // their scales / 254 (fold_planes254)
  // The lane's B bytes in a stage: plane row 8 i + g of chunk u at (u ROWS + 8 i + g) 64 + 16 t.
  const int boff = g * kTileChunkK + 16 * t;
  for (int s = 0; s < nstages; ++s) {
    cp_async_wait<kTileStages - 2>();
    __syncthreads();  // stage s visible to all; every warp is done with stage s - 1, whose slot is refilled next
    if (s + kTileStages - 1 < nstages)
      copy_stage<NT>(tile_smem + (s + kTileStages - 1) % kTileStages * STAGE, src_row, row_ok, c0,
                     c_beg + (s + kTileStages - 1) * kTileRing, c_end);
    cp_async_commit();
    const uint8_t* stage = tile_smem + s % kTileStages * STAGE + boff;
#pragma unroll
    for (int u = 0; u < kTileRing; ++u) {
      if (live && c_beg + s * kTileRing + u < c_end) {  // warp-uniform
        const uint32_t w[4] = {packed[u].x, packed[u].y, packed[u].z, packed[u].w};
        uint32_t a[2][4];  // the 16 x 32 tiles of the chunk: words 2 tile / 2 tile + 1
#pragma unroll
        for (int tile = 0; tile < 2; ++tile)
          tile_a(int4_word_s8x16(w[2 * tile]), int4_word_s8x16(w[2 * tile + 1]), a[tile]);
        if (u % 2 == 0 || !PAIR) {  // a pair's second chunk keeps the first one's scales
          s0 = __shfl_sync(0xffffffffu, prm[u], 0, 4) * (1.0f / 254.0f);
          s1 = __shfl_sync(0xffffffffu, prm[u], 1, 4) * (1.0f / 254.0f);
        }
        float sz0 = 0.0f, sz1 = 0.0f;  // s z of rows g, g + 8 (s0 = s / 254)
        if constexpr (ASYM) {
          sz0 = 254.0f * s0 * __shfl_sync(0xffffffffu, zrm[u], 0, 4);
          sz1 = 254.0f * s1 * __shfl_sync(0xffffffffu, zrm[u], 1, 4);
        }
        load_next(u);  // the codes are in registers: the slot's next chunk goes out before the math
#pragma unroll
        for (int i = 0; i < NT; ++i) {  // independent accumulators: the n-tiles' mma chains overlap
          const uint4 bv = *reinterpret_cast<const uint4*>(stage + (u * ROWS + 8 * i) * kTileChunkK);
          mma_s8_16832(d[i], a[0], bv.x, bv.y);
          mma_s8_16832(d[i], a[1], bv.z, bv.w);
          if constexpr (ASYM) {
            const float sum = chunk_plane_sum(bv);
            acc[i][0] = fmaf(-sz0, sum, acc[i][0]);
            acc[i][1] = fmaf(-sz1, sum, acc[i][1]);
          }
        }
      }
      if (u % 2 == 1 || !PAIR) {  // fold (a chunk past c_end added nothing: its zeros fold to nothing)
#pragma unroll
        for (int i = 0; i < NT; ++i) fold_planes254(d[i], s0, s1, acc[i]);
      }
    }
  }

  if (blockIdx.y == 0) prefetch_next_layer(p, kTileWarps * 32);  // slices by blockIdx.x: once per row block

  // The partial tile [warp][row][token] over the stages, then the cluster's sum.
  cp_async_wait<0>();
  __syncthreads();  // no copies in flight, no warp reading the stages
  constexpr int TOK = 4 * NT;
  float* partial = reinterpret_cast<float*>(tile_smem);
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    partial[(warp * kStripeRows + g) * TOK + 4 * i + t] = acc[i][0];
    partial[(warp * kStripeRows + g + 8) * TOK + 4 * i + t] = acc[i][1];
  }
  const int splits = gridDim.y, rank = blockIdx.y;  // the cluster spans blockIdx.y
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  if (splits > 1)
    cluster.sync();
  else
    __syncthreads();
#else
  __syncthreads();  // one split: the launcher never splits without clusters
#endif
  const int elems = kTileWarps * kStripeRows * p.m;  // (row of the block, token)
  const int e_beg = elems * rank / splits, e_end = elems * (rank + 1) / splits;
  for (int e = e_beg + static_cast<int>(threadIdx.x); e < e_end; e += kTileWarps * 32) {
    const int row = e / p.m, tok = e % p.m;
    float sum = 0.0f;
    for (int src = 0; src < splits; ++src) {
      const float* part = partial;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      if (splits > 1) part = cluster.map_shared_rank(partial, src);
#endif
      sum += part[row * TOK + tok];
    }
    const int n = blockIdx.x * kTileWarps * kStripeRows + row;
    if (n < p.w.n) {
      const float v = sum * (scale[tok] * (1.0f / 16.0f)) + bias_at(opaque(p.bias), n);
      store(static_cast<T*>(p.y) + static_cast<size_t>(tok) * p.w.n + n, activate(v, p.act));
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (splits > 1) cluster.sync();  // no block leaves while another still reads its partial
#endif
}

// Splits of K (the cluster's size): the fewest that give every SM two blocks, at most kTileMaxSplits, each split
// at least two stages of chunks; chunks per split a multiple of a stage.
int tile_splits(int row_blocks, int nchunks, int num_sms) {
  int splits = 1;
  while (splits < kTileMaxSplits && row_blocks * splits < 2 * num_sms && nchunks >= 4 * kTileRing * splits) splits *= 2;
  return splits;
}

template <typename T, int NT, bool ASYM, bool PAIR>
cudaError_t launch_tile(const WoProblem& p, int num_sms, cudaStream_t stream) {
  const int row_blocks = (p.w.n_padded / kStripeRows + kTileWarps - 1) / kTileWarps;
  const int nchunks = p.w.k_padded / kTileChunkK;
  const int splits = tile_splits(row_blocks, nchunks, num_sms);
  const int per_split = ((nchunks + splits - 1) / splits + kTileRing - 1) / kTileRing * kTileRing;
  const int smem = tile_smem_bytes(NT);
  auto* kernel = wo_planes_tile_kernel<T, NT, ASYM, PAIR>;
  if (smem + 16 * NT > (48 << 10)) {  // with the static `scale`: past the default 48 KB, opt in
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  return launch_cluster_y(kernel, p.pdl, dim3(row_blocks, splits), dim3(kTileWarps * 32), smem, stream, splits, p,
                          per_split);
}

template <int NT, bool ASYM, bool PAIR = false>
cudaError_t launch_dtype(const WoProblem& p, int num_sms, cudaStream_t stream) {
  return p.dtype == ScalarKind::kBFloat16 ? launch_tile<__nv_bfloat16, NT, ASYM, PAIR>(p, num_sms, stream)
                                          : launch_tile<__half, NT, ASYM, PAIR>(p, num_sms, stream);
}

template <int NT>
cudaError_t launch_sym(const WoProblem& p, int num_sms, cudaStream_t stream) {
  return p.w.group_shift >= 7 ? launch_dtype<NT, false, true>(p, num_sms, stream)
                              : launch_dtype<NT, false, false>(p, num_sms, stream);
}

template <int NT>
cudaError_t launch_nt(const WoProblem& p, int num_sms, cudaStream_t stream) {
  if constexpr (NT == 8) {  // with zero points eight n-tiles spilled (20 bytes at 128 registers): ops.cpp refuses them
    return launch_sym<NT>(p, num_sms, stream);
  } else {
    return p.w.zero != nullptr ? launch_dtype<NT, true>(p, num_sms, stream) : launch_sym<NT>(p, num_sms, stream);
  }
}

}  // namespace

cudaError_t launch_wo_planes_tile(const WoProblem& p, int num_sms, cudaStream_t stream) {
  return p.m <= 8 ? launch_nt<2>(p, num_sms, stream) : p.m <= 16 ? launch_nt<4>(p, num_sms, stream)
                                                     : launch_nt<8>(p, num_sms, stream);
}

}  // namespace qtool
