// wo_planes_gemv variant 3, "tile": 4-bit weights (zero points or none) times x's int8 planes (x_planes) for 1 <= m <=
// kPlanesTileMaxTokens tokens, the planes staged once per block in shared memory and read by all its rows.
// Unrouted unless QTOOL_PLANES_GEMM is set (kernels/int8_planes.py): kernels/NOTES.md, "Session 40", has its figures.
//
// Why (kernels/NOTES.md, "Session 39"): wo_planes_gemv with four n-tiles (9-16 tokens) lost because each warp loads
// its own B fragments (4 x 512 bytes per 512 bytes of codes) from L2, and the L2 ran out (~7.6 TB/s). Here 8 warps
// on 8 stripes of 16 rows walk the same 64-k chunks of one K slice, so the planes of a chunk (2 m rows x 64 bytes) are
// copied into shared memory once for 128 rows.
//   - A block: 8 warps = 8 stripes (warp w: stripe 8 blockIdx.x + w), the chunks [c_beg, c_end) of its split.
//   - Stages of 4 chunks through cp.async, 3-4 in flight: each warp's codes (its stripe's 4 x 512 bytes, the A
//     fragments as loaded), the block's scales (and zero points) per chunk, and the planes ([chunk][plane row][64
//     bytes]: a warp's LDS.128 of rows 8 i .. 8 i + 7 is 512 contiguous bytes); one barrier per stage. Session 39's
//     version kept the codes in a per-lane register ring of 4 chunks (the GEMVs' way): behind the barrier it
//     held ~48 KB in flight per SM, and ncu showed long-scoreboard stalls at 30-40% of DRAM bandwidth.
//   - Math per chunk and n-tile (4 tokens x 2 planes): two mma.m16n8k32.s8 on A from int4_word_s8x16 into int32 sums
//     of their own (the n-tiles' mma overlap), folded into acc once per chunk, or per pair of chunks where a group
//     spans both (fold_planes254); columns past 2 m read stale bytes into C columns that are never stored.
//   - Split-K over a thread block cluster (1, splits, 1): each block writes its float32 partial tile to shared
//     memory and rank r sums the r-th share over the cluster through distributed shared memory, in rank order
//     (deterministic), then y = sum * s_x / 16 + bias. One launch, no workspace. sm_90 only (ops.cpp refuses others).
#include <cstdint>

#include "cluster_sum.cuh"
#include "pdl.cuh"
#include "planes.cuh"
#include "wo_common.cuh"

namespace qtool {
namespace {

constexpr int kTileWarps = 8;      // = stripes per block: 128 rows
constexpr int kTileRows = kTileWarps * kStripeRows;
constexpr int kTileChunks = 4;     // chunks per stage
constexpr int kTileChunkK = 64;    // int4 chunk (wo_kernels.h, chunk_k(4))
constexpr int kTileChunkBytes = 512;  // one stripe's chunk of codes: 16 rows x 64 k x 4 bits
constexpr int kTileMaxSplits = 8;  // portable cluster size

// Stages in flight (two blocks per SM at every NT): four, three with eight n-tiles (their planes are 16 KB a stage).
constexpr int tile_stages(int nt) { return nt == 8 ? 3 : 4; }
// One stage: the codes of the block's 8 stripes, the scales (and zero points) of its 128 rows per chunk, the planes
// of its chunks (8 NT plane rows: 4 NT tokens).
constexpr int tile_codes_bytes() { return kTileWarps * kTileChunks * kTileChunkBytes; }
constexpr int tile_params_bytes(bool asym) { return (asym ? 2 : 1) * kTileChunks * kTileRows * 4; }
constexpr int tile_planes_bytes(int nt) { return kTileChunks * 8 * nt * kTileChunkK; }
constexpr int tile_stage_bytes(int nt, bool asym) {
  return tile_codes_bytes() + tile_params_bytes(asym) + tile_planes_bytes(nt);
}
constexpr int tile_smem_bytes(int nt, bool asym) {
  const int stages = tile_stages(nt) * tile_stage_bytes(nt, asym);
  const int partial = kTileRows * cluster_tok_stride(4 * nt) * 4;  // the epilogue's partial tile overlays the stages
  return stages > partial ? stages : partial;
}

// What one thread copies into every stage by cp.async (16-byte pieces), fixed for the launch:
//   codes: warp w's stripe, chunk u, lane's 16 bytes -> [w][u][512 bytes], u = 0..3 (the warp's own stripe only);
//   scales (threads 0-127) / zero points (128-255): chunk u = tid / 32 % 4, rows 4 q .. 4 q + 3 of the block
//     (q = tid % 32) -> [u][128 floats];
//   planes: piece i = tid + 256 j of [chunk][plane row][64 bytes] lands at 16 i: one plane row and quarter a thread.
// Codes past c_end or of a stripe past n_padded, scales of rows past n_padded, plane rows past 2 m are not copied
// (never read, or read into columns that are never stored). Destinations are offsets in a stage's shared-memory
// address (computed once: a generic-to-shared conversion per copy cost ~10 instructions under a cluster launch).
struct TileCopy {
  const uint4* codes;     // the lane's 16 bytes of chunk c_beg of its warp's stripe
  const uint8_t* params;  // scales or zero points: rows 4 q.. of the block, group 0
  const uint8_t* planes;  // plane row r, quarter, chunk c0
  uint32_t codes_dst, params_dst, planes_dst;
  int params_u, planes_c0;
  bool live, params_ok, row_ok;
};

template <int NT, bool ASYM>
__device__ inline void copy_stage(const WoProblem& p, const TileCopy& cp, uint32_t slot, int rel, int chunk0,
                                  int c_end) {
  constexpr int PER = kTileWarps * 32 / (8 * NT * 4);  // plane chunks one pass of the block covers: 4, 2, 1
#pragma unroll
  for (int u = 0; u < kTileChunks; ++u) {
    if (cp.live && chunk0 + u < c_end)
      cp_async_shared_16(slot + cp.codes_dst + u * kTileChunkBytes, cp.codes + (rel + u) * chunk_vecs(4));
  }
  const int pc = chunk0 + cp.params_u;
  if (cp.params_ok && pc < c_end) {
    const uint32_t group = static_cast<uint32_t>(pc * kTileChunkK) >> p.w.group_shift;
    cp_async_shared_16(slot + cp.params_dst, cp.params + static_cast<size_t>(group) * p.w.n_padded * 4);
  }
#pragma unroll
  for (int j = 0; j < kTileChunks / PER; ++j) {
    if (cp.row_ok && chunk0 + cp.planes_c0 + j * PER < c_end)
      cp_async_shared_16(slot + cp.planes_dst + 16 * kTileWarps * 32 * j, cp.planes + (chunk0 + j * PER) * kTileChunkK);
  }
}

// This thread's TileCopy for the block's split starting at chunk c_beg (warp w: stripe `stripe`).
template <int NT, bool ASYM>
__device__ inline TileCopy make_copy(const WoProblem& p, int stripe, int nchunks, int c_beg) {
  constexpr int ROWS = 8 * NT;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  TileCopy cp;
  cp.live = stripe < p.w.n_padded / kStripeRows;  // a last block's extra warps copy planes, no math
  cp.codes = reinterpret_cast<const uint4*>(p.w.qweight) +
             (static_cast<size_t>(cp.live ? stripe : 0) * nchunks + c_beg) * chunk_vecs(4) + lane;
  cp.codes_dst = (warp * kTileChunks) * kTileChunkBytes + 16 * lane;
  const int prow0 = blockIdx.x * kTileRows + 4 * (threadIdx.x % 32);
  cp.params_u = threadIdx.x / 32 % kTileChunks;
  cp.params_ok = prow0 < p.w.n_padded && (ASYM || threadIdx.x < 128);
  cp.params = reinterpret_cast<const uint8_t*>(threadIdx.x < 128 ? p.w.scale : p.w.zero) +
              4 * static_cast<size_t>(prow0);
  cp.params_dst = tile_codes_bytes() + 16 * threadIdx.x;
  const int prow = threadIdx.x / 4 % ROWS;
  cp.planes_c0 = threadIdx.x / (ROWS * 4);
  cp.planes = reinterpret_cast<const uint8_t*>(p.planes) + static_cast<size_t>(prow) * p.w.k_padded +
              cp.planes_c0 * kTileChunkK + 16 * (threadIdx.x % 4);
  cp.planes_dst = tile_codes_bytes() + tile_params_bytes(ASYM) + 16 * threadIdx.x;
  cp.row_ok = prow < 2 * p.m;
  return cp;
}

// One chunk's mma (chunk u of a stage, inside the split): A from the warp's codes w, B from the stage's planes
// (bstage: the lane's bytes of chunk 0, n-tile 0), the scales from `params` (the stage's, at the lane's row g). d[i]
// starts over at a chunk (or a pair's first chunk), whose scales / 254 go to s0 / s1; zero points' term goes to acc.
template <int NT, bool ASYM, bool PAIR>
__device__ inline void chunk_mma(int u, const uint4& w, const float* params, const uint8_t* bstage, int (&d)[NT][4],
                                 float (&acc)[NT][2], float& s0, float& s1) {
  constexpr int ROWS = 8 * NT;
  uint32_t a[2][4];  // the 16 x 32 tiles of the chunk: words 2 tile / 2 tile + 1
  tile_a(int4_word_s8x16(w.x), int4_word_s8x16(w.y), a[0]);
  tile_a(int4_word_s8x16(w.z), int4_word_s8x16(w.w), a[1]);
  if (u % 2 == 0 || !PAIR) {  // a pair's second chunk keeps the first one's scales
    s0 = params[u * kTileRows] * (1.0f / 254.0f);
    s1 = params[u * kTileRows + 8] * (1.0f / 254.0f);
  }
  float sz0 = 0.0f, sz1 = 0.0f;  // s z of rows g, g + 8 (s0 = s / 254)
  if constexpr (ASYM) {
    sz0 = 254.0f * s0 * params[(kTileChunks + u) * kTileRows];
    sz1 = 254.0f * s1 * params[(kTileChunks + u) * kTileRows + 8];
  }
#pragma unroll
  for (int i = 0; i < NT; ++i) {  // independent accumulators: the n-tiles' mma chains overlap
    const uint4 bv = *reinterpret_cast<const uint4*>(bstage + (u * ROWS + 8 * i) * kTileChunkK);
    chunk_ntile_mma<ASYM>(u % 2 == 0 || !PAIR, a, bv, sz0, sz1, d[i], acc[i]);
  }
}

// The block's partial tile [warp][row][token] (float32, over the stages: `smem`), then the cluster's sum
// (cluster_sum.cuh): y = sum * s_x / 16 + bias.
template <typename T, int NT>
__device__ inline void store_cluster(const WoProblem& p, const float (&acc)[NT][2], const float* scale, uint8_t* smem) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  cp_async_wait<0>();
  __syncthreads();  // no copies in flight, no warp reading the stages
  constexpr int TOK = cluster_tok_stride(4 * NT);
  float* partial = reinterpret_cast<float*>(smem);
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    partial[(warp * kStripeRows + g) * TOK + 4 * i + t] = acc[i][0];
    partial[(warp * kStripeRows + g + 8) * TOK + 4 * i + t] = acc[i][1];
  }
  cluster_sum_store<T>(p, partial, kTileWarps * kStripeRows, TOK, scale, 1.0f / 16.0f);
}

template <typename T,  // output type: __half or __nv_bfloat16
          int NT,      // n-tiles of 4 tokens: 2, 4 or 8
          bool ASYM,   // zero points (p.w.zero), w = s (q - z): A stays 16 q and 16 z times the chunk's sum of x (two
                       // more mma per n-tile, as wo_planes.cu) is subtracted
          bool PAIR>   // groups of >= 128 (or per channel), no zero points: a pair of chunks shares its scales (c_beg
                       // is a multiple of kTileChunks), so the int32 sums run over the pair and are folded once
// 8 warps, two blocks per SM (shared memory: 88-136 KB a block), at most 128 registers.
__global__ void __launch_bounds__(kTileWarps * 32, 2)
    wo_planes_tile_kernel(const WoProblem p, int chunks_per_split) {
  extern __shared__ __align__(16) uint8_t tile_smem[];
  __shared__ float scale[4 * NT];
  constexpr int STAGES = tile_stages(NT), STAGE = tile_stage_bytes(NT, ASYM);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int stripe = blockIdx.x * kTileWarps + warp;
  const int nchunks = p.w.k_padded / kTileChunkK;
  const int c_beg = min(nchunks, static_cast<int>(blockIdx.y) * chunks_per_split);
  const int c_end = min(nchunks, c_beg + chunks_per_split);

  const TileCopy cp = make_copy<NT, ASYM>(p, stripe, nchunks, c_beg);
  const uint32_t smem = static_cast<uint32_t>(__cvta_generic_to_shared(tile_smem));

  const int nstages = (c_end - c_beg + kTileChunks - 1) / kTileChunks;
  // Static weights: the codes and scales of the first STAGES - 1 stages go out before the PDL wait; the planes,
  // written by the kernel before this one, after it. Group s holds stage s's planes (group 0 also every early code).
  TileCopy weights_only = cp;
  weights_only.row_ok = false;
  for (int s = 0; s < STAGES - 1 && s < nstages; ++s)
    copy_stage<NT, ASYM>(p, weights_only, smem + s * STAGE, s * kTileChunks, c_beg + s * kTileChunks, c_end);
  pdl_wait_then_release();  // planes, xscale, bias and y only past this point (pdl.cuh)
  if (threadIdx.x < p.m) scale[threadIdx.x] = __ldg(p.xscale + threadIdx.x);
  {
    TileCopy planes_only = cp;
    planes_only.live = planes_only.params_ok = false;
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {  // always commit: the group count stays the stage count
      if (s < nstages)
        copy_stage<NT, ASYM>(p, planes_only, smem + s * STAGE, s * kTileChunks, c_beg + s * kTileChunks, c_end);
      cp_async_commit();
    }
  }

  float acc[NT][2] = {};  // token 4 i + t of n-tile i: rows g, g + 8, in units of 16 s_x
  int d[NT][4];           // the int32 sums of the chunk (or pair) not yet folded into acc
  float s0 = 0.0f, s1 = 0.0f;  // their scales / 254 (fold_planes254)
  const int boff = g * kTileChunkK + 16 * t;  // the lane's B bytes: plane row 8 i + g of chunk u, quarter t
  for (int s = 0; s < nstages; ++s) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage s visible to all; every warp is done with stage s - 1, whose slot is refilled next
    if (s + STAGES - 1 < nstages)
      copy_stage<NT, ASYM>(p, cp, smem + (s + STAGES - 1) % STAGES * STAGE, (s + STAGES - 1) * kTileChunks,
                           c_beg + (s + STAGES - 1) * kTileChunks, c_end);
    cp_async_commit();
    const uint8_t* stage = tile_smem + s % STAGES * STAGE;
    const float* params = reinterpret_cast<const float*>(stage + tile_codes_bytes()) + warp * kStripeRows + g;
    const uint8_t* bstage = stage + tile_codes_bytes() + tile_params_bytes(ASYM) + boff;
#pragma unroll
    for (int u = 0; u < kTileChunks; ++u) {
      const int c = c_beg + s * kTileChunks + u;
      if (cp.live && c < c_end) {  // warp-uniform
        const uint4 w = *reinterpret_cast<const uint4*>(stage + (warp * kTileChunks + u) * kTileChunkBytes + 16 * lane);
        chunk_mma<NT, ASYM, PAIR>(u, w, params, bstage, d, acc, s0, s1);
      }
      // Fold a chunk's sums, or a pair's after its second chunk (or its first one, where the second is past c_end).
      if ((u % 2 == 1 || !PAIR) && cp.live && (PAIR ? c - 1 : c) < c_end) {
#pragma unroll
        for (int i = 0; i < NT; ++i) fold_planes254(d[i], s0, s1, acc[i]);
      }
    }
  }

  if (blockIdx.y == 0) prefetch_next_layer(p, kTileWarps * 32);  // slices by blockIdx.x: once per row block

  store_cluster<T, NT>(p, acc, scale, tile_smem);
}

// Splits of K (the cluster's size): the fewest that give every SM two blocks, at most kTileMaxSplits, each split
// at least two stages of chunks; chunks per split a multiple of a stage.
int tile_splits(int row_blocks, int nchunks, int num_sms) {
  int splits = 1;
  while (splits < kTileMaxSplits && row_blocks * splits < 2 * num_sms && nchunks >= 4 * kTileChunks * splits)
    splits *= 2;
  return splits;
}

template <typename T, int NT, bool ASYM, bool PAIR>
cudaError_t launch_tile(const WoProblem& p, int num_sms, cudaStream_t stream) {
  const int row_blocks = (p.w.n_padded / kStripeRows + kTileWarps - 1) / kTileWarps;
  const int nchunks = p.w.k_padded / kTileChunkK;
  const int splits = tile_splits(row_blocks, nchunks, num_sms);
  const int per_split = ((nchunks + splits - 1) / splits + kTileChunks - 1) / kTileChunks * kTileChunks;
  const int smem = tile_smem_bytes(NT, ASYM);
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
  if constexpr (NT == 8) {  // zero points to 16 tokens only (ops.cpp refuses more; session 39's version spilled)
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
