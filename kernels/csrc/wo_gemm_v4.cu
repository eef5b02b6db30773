// Weight-only GEMM v4 (issue 19): wo_gemm's tiles and numerics, with the weights staged through shared
// memory by a multi-stage cp.async pipeline, so the bytes a block has in flight no longer depend on
// registers (kernels/NOTES.md, "wo_gemm v4").
//
// Y^T = W X^T on mma.sync.m16n8k16: weights are the 16-row A operand (one 16-row stripe per warp, 8
// warps = 128 rows per block), up to 64 tokens the B operand in n-tiles of 8 (more over blockIdx.z).
// Per 128-k piece, one pipeline stage holds
//   - the tile's codes: 8 stripes x 128 k, copied verbatim from the repacked layout (layout.py; 1 KB
//     contiguous per stripe for int4, 2 KB for int8), 16 bytes per cp.async.cg; each lane later reads
//     its own 16 bytes of its stripe's chunk with one ld.shared.v4 (a warp reads 512 contiguous bytes:
//     no bank conflict), which is exactly its A fragments, as wo_gemm's global load was;
//   - x [tokens, 128] (zero-filled past m and k_padded), read with ldmatrix as in wo_gemm;
//   - the tile's 128 scales (and zero points) of the piece's groups, so no group parameter is ever a
//     dependent global load inside the math (wo_gemm __ldg-ed them at every group boundary).
// stages - 1 pieces are in flight ahead of the one being used (stages = 2..8, chosen on the host from
// shared memory), with one __syncthreads per piece.
// Split-K over blockIdx.y (sized so the grid fills the resident slots once): each split stores its
// float32 partial tile to workspace[split]; the last split of a tile to arrive (one atomic counter per
// tile) sums the partials in split order (deterministic) and writes y with bias and activation. One
// kernel; the caller zeroes the counters (tiles x 4 bytes).
#include <cstdint>
#include <type_traits>
#include <utility>

#include "wo_common.cuh"
#include "wo_occupancy.h"
#include "wo_piece.cuh"

namespace qtool {
namespace {

constexpr int kThreads = kWarps * 32;
constexpr int kMaxStages = 8;                    // wait_pending covers 0..kMaxStages - 2
constexpr int kMaxSplits = 16;

__host__ __device__ constexpr int weight_stage_bytes(int bits) { return kWarps * (kPieceK / chunk_k(bits)) * 512; }

// One stage: codes [kWarps][chunks per piece][32 lanes] x 16 B, then x [tok][kRowStride] (2-byte
// elements), then scale [gpp][kTileRows] and, when asymmetric, zero [gpp][kTileRows] (float32).
__host__ __device__ inline int stage_bytes(int bits, int tok, int group_shift, bool asym) {
  return weight_stage_bytes(bits) + tok * kRowStride * 2 + groups_per_piece(group_shift) * kTileRows * 4 * (asym ? 2 : 1);
}

// cp.async.wait_group takes an immediate: `n` (= stages - 2, block-uniform) picks it.
__device__ inline void wait_pending(int n) {
  switch (n) {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    default: cp_async_wait<6>(); break;
  }
}

// Where a block sits in the problem, and the pointers into one stage's shared memory.
struct Tile : PieceStage {
  int p_beg, p_end, nchunks, sbytes;
  unsigned char* smem;
  template <int BITS> __device__ const uint4* codes(int s) const { return reinterpret_cast<const uint4*>(smem + s * sbytes); }
  template <typename T, int BITS> __device__ T* xs(int s) const {
    return reinterpret_cast<T*>(smem + s * sbytes + weight_stage_bytes(BITS));
  }
  template <typename T, int BITS, int TOK> __device__ float* prm(int s) const {
    return reinterpret_cast<float*>(smem + s * sbytes + weight_stage_bytes(BITS) + TOK * kRowStride * sizeof(T));
  }
};

// Piece `piece` of the block into stage s with cp.async: codes first (the DRAM stream), then x and
// the group parameters (mostly L2 hits). Out-of-range pieces commit an empty group so the pending-group
// count stays one per piece. Stripes past n_padded, chunks past k_padded, tokens past m, k past
// k_padded, groups past groups_padded and rows past n_padded are zero-filled.
template <typename T, int BITS, int TOK>
__device__ void stage_piece(const WoProblem& p, const Tile& t, const T* x, int piece, int s) {
  constexpr int CPP = kPieceK / chunk_k(BITS);
  if (piece < t.p_end) {
    const uint4* wq = reinterpret_cast<const uint4*>(p.w.qweight);
    unsigned char* wd = t.smem + s * t.sbytes;
    const int nstripes = p.w.n_padded / kStripeRows;
#pragma unroll 1  // registers: the copies need no ILP (cp.async does not block)
    for (int i = threadIdx.x; i < kWarps * CPP * 32; i += kThreads) {  // i = (stripe in tile * CPP + cc) * 32 + lane
      const int stripe = t.tile_row0 / kStripeRows + i / (CPP * 32), c = piece * CPP + (i / 32) % CPP;
      const bool valid = stripe < nstripes && c < t.nchunks;
      const uint4* src = wq + (static_cast<size_t>(stripe) * t.nchunks + c) * 32 + i % 32;
      cp_async_16(wd + i * 16, valid ? src : wq, valid);
    }
    stage_x_and_params<T, TOK>(p, t, x, piece, t.xs<T, BITS>(s), t.prm<T, BITS, TOK>(s));
  }
  cp_async_commit();
}

// The math of chunk c (codes `packed`) of piece `piece`, staged in stage s: one A fragment per 16x16
// subtile, B from the staged x with ldmatrix, one mma per n-tile.
template <typename T, int BITS, int MT>
__device__ void compute_chunk(GroupAccum<T, BITS, MT>& st, const Tile& t, const uint4& packed, int c, int piece, int s,
                              int lrow) {
  constexpr int SUB = 16 / BITS, KC = chunk_k(BITS);
  const int lane = threadIdx.x % 32;
  uint32_t words[4];
  words_of(packed, words);
  const T* xsb = t.xs<T, BITS>(s);
#pragma unroll
  for (int j = 0; j < SUB; ++j) {
    const int k0 = c * KC + 16 * j;
    const int grp = k0 >> t.shift;
    if (grp != st.cur_grp)  // warp-uniform
      st.enter_group(grp, t.prm<T, BITS, 8 * MT>(s) + (grp - ((piece * kPieceK) >> t.shift)) * kTileRows + lrow, t.gpp,
                     t.asym);
    st.mma_subtile(words, j, xsb, k0 - piece * kPieceK + 8 * ((lane / 8) % 2));  // ldmatrix: odd matrices are k + 8
  }
}

// Epilogue. One split: y = act(acc + bias) straight from the fragments. Several: the partial goes to
// workspace[blockIdx.y] ([splits, m, n] float32); the last block of the tile to count in sums all
// partials in split order (threadFenceReduction pattern: store, fence, count; the last one fences and
// reads through L2 with __ldcg) and writes y.
template <typename T, int MT>
__device__ void finish(const WoProblem& p, const Tile& t, const float (&acc)[MT][4], bool active, int lrow,
                       int* counters) {
  const int lane = threadIdx.x % 32;
  const int splits = gridDim.y;
  const float* bias = opaque(p.bias);
  float* part = splits > 1 ? p.workspace + static_cast<size_t>(blockIdx.y) * p.m * p.w.n : nullptr;
  if (active) {
#pragma unroll
    for (int nt = 0; nt < MT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = t.tile_row0 + lrow + 8 * (i / 2), tok = t.tok0 + 8 * nt + 2 * (lane % 4) + i % 2;
        if (row >= p.w.n || tok >= p.m) continue;
        const size_t idx = static_cast<size_t>(tok) * p.w.n + row;
        if (part != nullptr) {
          part[idx] = acc[nt][i];
        } else {
          store(static_cast<T*>(p.y) + idx, activate(acc[nt][i] + bias_at(bias, row), p.act));
        }
      }
  }
  if (part == nullptr) return;
  __threadfence();
  __syncthreads();
  int* last = reinterpret_cast<int*>(t.smem);  // the stages are idle now (no copy in flight: see caller)
  if (threadIdx.x == 0) *last = atomicAdd(counters + blockIdx.z * gridDim.x + blockIdx.x, 1) == splits - 1;
  __syncthreads();
  if (!*last) return;
  __threadfence();
  const int toks = min(8 * MT, p.m - t.tok0);
  for (int q = threadIdx.x; q < toks * kTileRows; q += kThreads) {
    const int row = t.tile_row0 + q % kTileRows, tok = t.tok0 + q / kTileRows;
    if (row >= p.w.n) continue;
    const size_t idx = static_cast<size_t>(tok) * p.w.n + row;
    float sum = 0.0f;
    for (int sp = 0; sp < splits; ++sp) sum += __ldcg(p.workspace + static_cast<size_t>(sp) * p.m * p.w.n + idx);
    store(static_cast<T*>(p.y) + idx, activate(sum + bias_at(bias, row), p.act));
  }
}

template <typename T,  // activation and output type: __half or __nv_bfloat16
          int BITS,    // weight code width: 4 or 8
          int MT>      // n-tiles of 8 tokens per block: 1, 2, 4 or 8
__global__ void __launch_bounds__(kThreads, 2) wo_gemm_v4_kernel(const WoProblem p,         // the problem
                                                                 int pieces_per_split,  // 128-k pieces per split
                                                                 int stages,            // pipeline depth, 2..8
                                                                 int* counters) {       // [tiles] zeroed, splits > 1
  constexpr int CPP = kPieceK / chunk_k(BITS), TOK = 8 * MT;
  extern __shared__ __align__(16) unsigned char smem[];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool active = blockIdx.x * kWarps + warp < p.w.n_padded / kStripeRows;  // warp-uniform
  const int lrow = warp * kStripeRows + lane / 4;  // this lane's rows in the tile: lrow, lrow + 8
  const int npieces = (p.w.k_padded + kPieceK - 1) / kPieceK;
  Tile t;
  t.tile_row0 = blockIdx.x * kTileRows;
  t.tok0 = blockIdx.z * TOK;
  t.p_beg = blockIdx.y * pieces_per_split;
  t.p_end = min(npieces, t.p_beg + pieces_per_split);
  t.nchunks = p.w.k_padded / chunk_k(BITS);
  t.shift = p.w.group_shift;
  t.gpp = groups_per_piece(t.shift);
  t.ngroups = ((p.w.k_padded - 1) >> t.shift) + 1;  // groups_padded (ops.cpp checks scale's shape)
  t.asym = p.w.zero != nullptr;
  t.sbytes = stage_bytes(BITS, TOK, t.shift, t.asym);
  t.smem = smem;
  const T* x = opaque(static_cast<const T*>(p.x));

  for (int s = 0; s < stages - 1; ++s) stage_piece<T, BITS, TOK>(p, t, x, t.p_beg + s, s);
  GroupAccum<T, BITS, MT> st;
  for (int piece = t.p_beg; piece < t.p_end; ++piece) {
    const int i = piece - t.p_beg, slot = i % stages;
    wait_pending(stages - 2);  // piece i has landed (this thread's copies) ...
    __syncthreads();           // ... everyone's, and stage (i - 1) % stages is no longer read
    stage_piece<T, BITS, TOK>(p, t, x, piece + stages - 1, (i + stages - 1) % stages);
    if (active) {
#pragma unroll
      for (int cc = 0; cc < CPP; ++cc) {
        const int c = piece * CPP + cc;
        if (c >= t.nchunks) break;
        const uint4 packed = t.codes<BITS>(slot)[(warp * CPP + cc) * 32 + lane];
        compute_chunk<T, BITS, MT>(st, t, packed, c, piece, slot, lrow);
      }
    }
  }
  st.flush();
  cp_async_wait<0>();  // only empty groups can be pending; the epilogue reuses stage memory
  __syncthreads();
  finish<T, MT>(p, t, st.acc, active, lrow, counters);
}

int tokens_per_block(int m) { return m <= 8 ? 8 : m <= 16 ? 16 : m <= 32 ? 32 : 64; }

template <typename V>
struct TypeTag {
  using type = V;
};

// Calls f(TypeTag<T>, integral_constant BITS, integral_constant MT) for the problem's instantiation.
template <typename F>
auto with_instance(const WoProblem& p, F&& f) {
  auto by_tok = [&](auto type, auto bits) {
    switch (tokens_per_block(p.m)) {
      case 8: return f(type, bits, std::integral_constant<int, 1>{});
      case 16: return f(type, bits, std::integral_constant<int, 2>{});
      case 32: return f(type, bits, std::integral_constant<int, 4>{});
      default: return f(type, bits, std::integral_constant<int, 8>{});
    }
  };
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  if (p.w.num_bits == 4)
    return bf16 ? by_tok(TypeTag<__nv_bfloat16>{}, std::integral_constant<int, 4>{})
                : by_tok(TypeTag<__half>{}, std::integral_constant<int, 4>{});
  return bf16 ? by_tok(TypeTag<__nv_bfloat16>{}, std::integral_constant<int, 8>{})
              : by_tok(TypeTag<__half>{}, std::integral_constant<int, 8>{});
}

// Stages: as many as fit (<= kMaxStages) with two blocks per SM, if that is at least 4; else as many
// as fit one block per SM. Both minus the 1 KB the runtime reserves per block.
int choose_stages(int sbytes) {
  int device = 0, per_sm = 0, optin = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  const int two = (per_sm / 2 - 1024) / sbytes;
  if (two >= 4) return two < kMaxStages ? two : kMaxStages;
  const int one = ((optin < per_sm - 1024 ? optin : per_sm - 1024)) / sbytes;
  return one < kMaxStages ? one : kMaxStages;
}

}  // namespace

WoGemmV4Plan plan_wo_gemm_v4(const WoProblem& p, int num_sms) {
  return with_instance(p, [&](auto type, auto bits, auto mt) {
    using T = typename decltype(type)::type;
    const auto kernel = wo_gemm_v4_kernel<T, decltype(bits)::value, decltype(mt)::value>;
    const int tok = 8 * decltype(mt)::value;
    const int sbytes = stage_bytes(decltype(bits)::value, tok, p.w.group_shift, p.w.zero != nullptr);
    WoGemmV4Plan plan{};
    plan.stages = choose_stages(sbytes);
    if (plan.stages < 2) return plan;  // the caller refuses the problem
    plan.smem_bytes = plan.stages * sbytes;
    if (plan.smem_bytes > (48 << 10) &&
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem_bytes) != cudaSuccess) {
      plan.stages = 0;
      return plan;
    }
    const int npieces = (p.w.k_padded + kPieceK - 1) / kPieceK;
    plan.tiles = (p.w.n_padded + kTileRows - 1) / kTileRows * ((p.m + tok - 1) / tok);
    const int slots = blocks_per_sm(reinterpret_cast<const void*>(kernel), kThreads, plan.smem_bytes) * num_sms;
    plan.splits = choose_splits(plan.tiles, npieces, slots, kMaxSplits);
    plan.pieces_per_split = (npieces + plan.splits - 1) / plan.splits;
    return plan;
  });
}

cudaError_t launch_wo_gemm_v4(const WoProblem& p, const WoGemmV4Plan& plan, int* counters, cudaStream_t stream) {
  return with_instance(p, [&](auto type, auto bits, auto mt) {
    using T = typename decltype(type)::type;
    const auto kernel = wo_gemm_v4_kernel<T, decltype(bits)::value, decltype(mt)::value>;
    const int tok = 8 * decltype(mt)::value;
    const dim3 grid((p.w.n_padded + kTileRows - 1) / kTileRows, plan.splits, (p.m + tok - 1) / tok);
    kernel<<<grid, kThreads, plan.smem_bytes, stream>>>(p, plan.pieces_per_split, plan.stages, counters);
    return cudaGetLastError();
  });
}

}  // namespace qtool
