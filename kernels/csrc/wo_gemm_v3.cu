// Weight-only GEMM v3 for 5..64 tokens: the weight stream of wo_gemv v2 with the activations of a GEMM.
//
// Y^T = W X^T on mma.sync.m16n8k16 (weights = the 16-row A operand, up to 64 tokens = B in n-tiles of
// 8), as in wo_gemm.cu, whose numerics it keeps: A = q - zero_point as exact small integers,
// float32 sums per group, acc += scale * group_sum in float32. What changes is how bytes move
// (kernels/NOTES.md, "wo_gemm v3"):
//   - Weights: each lane keeps a ring of DEPTH 16-byte chunks of its warp's stripe in flight, all
//     issued at the start and each slot refilled right after its math (wo_gemv's v2 ring), so a
//     warp has DEPTH x 512 bytes outstanding at all times; v2 wo_gemm had 2-4 chunks, one step ahead.
//   - Activations and group parameters: one cp.async pipeline of kStages pieces of 128 k per block
//     (x [tokens, 128] + the block's 128 rows of scale/zero for the piece's groups), shared by the
//     8 warps (8 stripes of 16 rows). The group parameters ride with x because v2 loaded them with
//     __ldg at each group boundary: one DRAM round trip in series every 128 k.
//   - Split-K over a thread block cluster (sm_90): the splits of one tile are the blocks of one
//     cluster; each writes its float32 partial tile to its own shared memory and, after a cluster
//     barrier, every block sums 1/splits of the tile over all partials through distributed shared
//     memory (fixed order: deterministic) and stores y. One launch: no workspace, no memset, no
//     second kernel. Without clusters (before sm_90) ops.cpp runs wo_gemm.cu instead.
#include <cstdint>

#include <cooperative_groups.h>

#include "pdl.cuh"
#include "wo_common.cuh"
#include "wo_occupancy.h"
#include "wo_piece.cuh"

namespace qtool {
namespace {

namespace cg = cooperative_groups;

constexpr int kStages = 4;                      // pieces in flight: 3 ahead of the one being used
constexpr int kRedStride = kTileRows + 4;       // partial-tile row (floats): tokens 2t apart land 8t banks apart
constexpr int kMaxSplits = 8;                   // portable cluster size

// Bytes of one pipeline stage: x [tok][kRowStride] then scale [gpp][kTileRows] (then zero, same shape).
__host__ __device__ inline int stage_bytes(int tok, int element_bytes, int group_shift, bool asym) {
  return tok * kRowStride * element_bytes + groups_per_piece(group_shift) * kTileRows * 4 * (asym ? 2 : 1);
}

// The block's partial tile (its split of K) to shared memory, then y = act(sum over the cluster's
// partials + bias): rank r of the (1, splits, 1) cluster sums the r-th share of the tile's float4s
// (4 rows of one token) over every rank's partial, in rank order, through distributed shared memory.
template <typename T,  // output type
          int MT>      // n-tiles of 8 tokens
__device__ void reduce_and_store(const WoProblem& p,       // the problem
                                 const float (&acc)[MT][4],  // this lane's C fragments
                                 float* red,                 // shared [8 * MT][kRedStride], free to overwrite
                                 int lrow,                   // the lane's first row in the tile
                                 int tile_row0, int tok0) {  // the tile's first row and token
  constexpr int TOK = 8 * MT;
  const int lane = threadIdx.x % 32;
  cp_async_wait<0>();  // the stages (which `red` overlays) take no more copies ...
  __syncthreads();     // ... and no warp reads them any more
#pragma unroll
  for (int nt = 0; nt < MT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) red[(8 * nt + 2 * (lane % 4) + i % 2) * kRedStride + lrow + 8 * (i / 2)] = acc[nt][i];

  const int splits = gridDim.y, rank = blockIdx.y;  // the cluster spans blockIdx.y: rank = blockIdx.y
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cg::cluster_group cluster = cg::this_cluster();
  if (splits > 1) {
    cluster.sync();
  } else {
    __syncthreads();
  }
#else
  __syncthreads();  // one split: the launcher never splits without clusters
#endif
  const int quads = min(TOK, p.m - tok0) * (kTileRows / 4);
  const int q_beg = quads * rank / splits, q_end = quads * (rank + 1) / splits;
  const float* bias = opaque(p.bias);
  for (int q = q_beg + static_cast<int>(threadIdx.x); q < q_end; q += kWarps * 32) {
    const int t = q / (kTileRows / 4), r4 = (q % (kTileRows / 4)) * 4;
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int src = 0; src < splits; ++src) {
      const float* part = red;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
      if (splits > 1) part = cluster.map_shared_rank(red, src);
#endif
      const float4 v = *reinterpret_cast<const float4*>(part + t * kRedStride + r4);
      sum[0] += v.x;
      sum[1] += v.y;
      sum[2] += v.z;
      sum[3] += v.w;
    }
    const size_t base = static_cast<size_t>(tok0 + t) * p.w.n;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = tile_row0 + r4 + e;
      if (row < p.w.n) store(static_cast<T*>(p.y) + base + row, activate(sum[e] + bias_at(bias, row), p.act));
    }
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (splits > 1) cluster.sync();  // no block leaves while another still reads its partial
#endif
}

template <typename T,    // activation and output type: __half or __nv_bfloat16
          int BITS,      // weight code width: 4 or 8
          int MT,        // n-tiles of 8 tokens per block: 1, 2, 4 or 8
          int DEPTH>     // chunks per lane in flight (the ring); a multiple of the chunks per piece
// 2 blocks per SM (<= 128 registers) everywhere but 64 tokens with a ring of 8 (195 registers; no spills
// at 128 for any other instantiation, sm_90 and sm_80).
__global__ void __launch_bounds__(kWarps * 32, MT <= 4 || DEPTH <= 4 ? 2 : 1)
    wo_gemm_v3_kernel(const WoProblem p,         // the problem
                      int pieces_per_split) {    // 128-k pieces per blockIdx.y (the cluster rank)
  constexpr int SUB = 16 / BITS;        // 16x16 subtiles per chunk
  constexpr int KC = chunk_k(BITS);     // k per chunk
  constexpr int CPP = kPieceK / KC;     // chunks per piece: 2 (int4) or 4 (int8)
  constexpr int PPR = DEPTH / CPP;      // pieces per pass over the ring
  constexpr int TOK = 8 * MT;           // tokens per block
  constexpr int SEGS = kPieceK / 8;     // 16-byte segments per staged x row
  static_assert(DEPTH % CPP == 0, "the ring must hold whole pieces");
  extern __shared__ __align__(16) unsigned char smem[];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int stripe = blockIdx.x * kWarps + warp;
  const bool active = stripe < p.w.n_padded / kStripeRows;  // warp-uniform
  const int lrow = warp * kStripeRows + lane / 4;           // this lane's rows in the tile: lrow, lrow + 8
  const int tile_row0 = blockIdx.x * kTileRows;
  const int tok0 = blockIdx.z * TOK;
  const int nchunks = p.w.k_padded / KC;
  const int npieces = (p.w.k_padded + kPieceK - 1) / kPieceK;
  const int p_beg = blockIdx.y * pieces_per_split;
  const int p_end = min(npieces, p_beg + pieces_per_split);
  const int c_beg = p_beg * CPP, c_end = min(nchunks, p_end * CPP);
  const int shift = p.w.group_shift;
  const int gpp = groups_per_piece(shift);
  const bool asym = p.w.zero != nullptr;
  const int ngroups = ((p.w.k_padded - 1) >> shift) + 1;  // groups_padded (ops.cpp checks scale's shape)
  const PieceStage where{tok0, tile_row0, shift, gpp, ngroups, asym};
  const int sbytes = stage_bytes(TOK, sizeof(T), shift, asym);
  auto xs = [&](int s) { return reinterpret_cast<T*>(smem + s * sbytes); };
  auto prm = [&](int s) { return reinterpret_cast<float*>(smem + s * sbytes + TOK * kRowStride * sizeof(T)); };

  // The ring, issued first: the weights are the DRAM stream; x and the parameters mostly hit L2.
  const uint4* wq = reinterpret_cast<const uint4*>(p.w.qweight) + static_cast<size_t>(active ? stripe : 0) * nchunks * 32 + lane;
  uint4 ring[DEPTH];
#pragma unroll
  for (int u = 0; u < DEPTH; ++u)
    ring[u] = active && c_beg + u < c_end ? load_streaming(wq + static_cast<size_t>(c_beg + u) * 32) : make_uint4(0, 0, 0, 0);

  const T* x = opaque(static_cast<const T*>(p.x));
  // Piece `piece` into stage s (nothing past the split: the group is committed empty, so the
  // wait_group count stays one group per piece). Tokens >= m and k >= k_padded are zero-filled;
  // so are groups >= ngroups and rows >= n_padded of the parameters.
  auto stage = [&](int piece, int s) {
    if (piece < p_end) stage_x_and_params<T, TOK>(p, where, x, piece, xs(s), prm(s));
    cp_async_commit();
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) stage(p_beg + s, s);

  GroupAccum<T, BITS, MT> st;

  // The math of chunk c (its codes in `packed`), which lies in piece `piece`, staged in stage s.
  auto compute_chunk = [&](const uint4& packed, int c, int piece, int s) {
    uint32_t words[4];
    words_of(packed, words);
    const T* xsb = xs(s);
#pragma unroll
    for (int j = 0; j < SUB; ++j) {
      const int k0 = c * KC + 16 * j;
      const int grp = k0 >> shift;
      if (grp != st.cur_grp)  // warp-uniform
        st.enter_group(grp, prm(s) + (grp - ((piece * kPieceK) >> shift)) * kTileRows + lrow, gpp, asym);
      st.mma_subtile(words, j, xsb, k0 - piece * kPieceK + 8 * ((lane / 8) % 2));  // ldmatrix: odd matrices are k + 8
    }
  };

  // Pass = DEPTH chunks = PPR pieces, so each chunk's ring slot is a compile-time index.
  for (int pass = p_beg; pass < p_end; pass += PPR) {
#pragma unroll
    for (int pp = 0; pp < PPR; ++pp) {
      const int piece = pass + pp;
      if (piece >= p_end) break;  // block-uniform
      const int i = piece - p_beg;
      cp_async_wait<kStages - 2>();  // piece i has landed (for this thread) ...
      __syncthreads();               // ... for every thread, and stage (i - 1) % kStages is free
      stage(piece + kStages - 1, (i + kStages - 1) % kStages);
      if (active) {
#pragma unroll
        for (int cc = 0; cc < CPP; ++cc) {
          const int c = piece * CPP + cc;
          if (c >= c_end) break;
          compute_chunk(ring[pp * CPP + cc], c, piece, i % kStages);
          if (c + DEPTH < c_end) ring[pp * CPP + cc] = load_streaming(wq + static_cast<size_t>(c + DEPTH) * 32);
        }
      }
    }
  }
  st.flush();

  reduce_and_store<T, MT>(p, st.acc, reinterpret_cast<float*>(smem), lrow, tile_row0, tok0);
}

// Chunks in flight per lane (kernels/NOTES.md, "wo_gemm v3"): 8 up to 32 tokens, where a ring of 8
// still fits 128 registers (2 blocks, 16 warps, 64 KB in flight per SM); 4 at 64 tokens, where the
// accumulators take 64 registers and a ring of 8 would need 195 (1 block, 8 warps, 32 KB). Variant 1
// takes the other depth, so the A/B exists at every m.
int depth_of(int variant, int tok) { return (tok == 64) != (variant == 1) ? 4 : 8; }

// Split-K factor (wo_piece.cuh's choose_splits, at most a portable cluster) for the A/B variants:
// variant 2 never splits; variant 3 aims at two waves of slots (more, shorter splits).
int splits_for_variant(int tiles, int npieces, int slots, int variant) {
  if (variant == 2) return 1;
  return choose_splits(tiles, npieces, variant == 3 ? 2 * slots : slots, kMaxSplits);
}

template <typename T, int BITS, int MT, int DEPTH>
cudaError_t launch_variant(const WoProblem& p, int variant, int num_sms, bool clusters, cudaStream_t stream) {
  const auto kernel = wo_gemm_v3_kernel<T, BITS, MT, DEPTH>;
  constexpr int TOK = 8 * MT;
  const int stage = stage_bytes(TOK, sizeof(T), p.w.group_shift, p.w.zero != nullptr);
  const int red = TOK * kRedStride * 4;
  const int smem = kStages * stage > red ? kStages * stage : red;
  if (smem > (48 << 10)) {  // above 48 KB a kernel must opt in (per device: cheap, so every time)
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return err;
  }
  const int tiles_x = (p.w.n_padded / kStripeRows + kWarps - 1) / kWarps;
  const int slices = (p.m + TOK - 1) / TOK;
  const int npieces = (p.w.k_padded + kPieceK - 1) / kPieceK;
  const int slots = blocks_per_sm(reinterpret_cast<const void*>(kernel), kWarps * 32, smem) * num_sms;
  const int splits = clusters ? splits_for_variant(tiles_x * slices, npieces, slots, variant) : 1;
  const int pieces_per_split = (npieces + splits - 1) / splits;

  return launch_cluster_y(kernel, false, dim3(tiles_x, splits, slices), dim3(kWarps * 32), smem, stream, splits, p,
                          pieces_per_split);
}

template <typename T, int BITS>
cudaError_t launch_typed(const WoProblem& p, int variant, int num_sms, bool clusters, cudaStream_t stream) {
  const int tok = p.m <= 8 ? 8 : p.m <= 16 ? 16 : p.m <= 32 ? 32 : 64;
  if (depth_of(variant, tok) == 4) {
    switch (tok) {
      case 8: return launch_variant<T, BITS, 1, 4>(p, variant, num_sms, clusters, stream);
      case 16: return launch_variant<T, BITS, 2, 4>(p, variant, num_sms, clusters, stream);
      case 32: return launch_variant<T, BITS, 4, 4>(p, variant, num_sms, clusters, stream);
      default: return launch_variant<T, BITS, 8, 4>(p, variant, num_sms, clusters, stream);
    }
  }
  switch (tok) {
    case 8: return launch_variant<T, BITS, 1, 8>(p, variant, num_sms, clusters, stream);
    case 16: return launch_variant<T, BITS, 2, 8>(p, variant, num_sms, clusters, stream);
    case 32: return launch_variant<T, BITS, 4, 8>(p, variant, num_sms, clusters, stream);
    default: return launch_variant<T, BITS, 8, 8>(p, variant, num_sms, clusters, stream);
  }
}

}  // namespace

cudaError_t launch_wo_gemm_v3(const WoProblem& p, int variant, int num_sms, bool clusters, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  if (p.w.num_bits == 4) {
    return bf16 ? launch_typed<__nv_bfloat16, 4>(p, variant, num_sms, clusters, stream)
                : launch_typed<__half, 4>(p, variant, num_sms, clusters, stream);
  }
  return bf16 ? launch_typed<__nv_bfloat16, 8>(p, variant, num_sms, clusters, stream)
              : launch_typed<__half, 8>(p, variant, num_sms, clusters, stream);
}

}  // namespace qtool
