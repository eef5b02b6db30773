// Weight-only GEMM on tensor cores (mma.sync.m16n8k16, bf16/fp16 in, float32 accumulation).
//
// The product is computed transposed, Y^T = W * X^T, so that the weights are the 16-row A operand
// and up to 64 tokens are the B operand in n-tiles of 8: small m wastes at most 7 of 8 columns
// instead of 15 of 16 rows. Block = 8 warps = 8 stripes (128 weight rows) x up to 64 tokens x a
// K range (split-K over blockIdx.y when there are too few blocks to fill the GPU; tokens beyond 64
// over blockIdx.z). Per step ("piece") of 128 k:
//   - activations [tokens, 128] are copied to shared memory with cp.async (NB buffers, zero-filled
//     past m and k_padded) and read back as B fragments with ldmatrix;
//   - each warp loads its stripe's weights straight into registers (the repacked layout puts each
//     lane's A fragments in its own 16 bytes, so no shared memory and no shuffles), NB - 1 pieces
//     ahead (session 26: the one-ahead form left a split of four pieces waiting four memory latencies
//     in a row; a deep form has a split's weights in flight at once), and with groups of >= 128 k the
//     pieces' scales and zero points ride along (one group per piece), so no load waits in the math;
//   - codes become A = q - zero_point, exact small integers in bf16/fp16 (int4: one shift, one LOP3
//     and one packed subtraction per pair, see wo_decode.cuh);
//   - the mma accumulates sum (q - z) * x per group in float32, and at each group boundary the
//     float32 scale of the lane's row is applied: acc += scale * group_sum. Scales stay float32,
//     so the result is as accurate as dequantizing in float32 (better than the bf16 weights of
//     the reference) and the scale costs one FMA per accumulator per group, not one per weight.
// Split-K: each split writes its float32 partial tile to a workspace [splits, m, n]; the block that
// arrives last for its tile (a counter per tile, zero on entry, reset by that block) sums the splits
// and writes y, so a split call is one kernel. The legacy form (QTOOL_WO_GEMM, below) adds the partials
// atomically into a zeroed workspace and finishes in a second kernel.
#include <cstdint>
#include <cstdlib>

#include "wo_common.cuh"

namespace qtool {
namespace {

constexpr int kWarps = 8;                 // stripes per block, one per warp: 128 weight rows
constexpr int kBlockRows = kWarps * kStripeRows;
constexpr int kPieceK = 128;              // k of activations staged in shared memory per step
constexpr int kRowStride = kPieceK + 8;   // shared row stride (elements); +16 bytes puts the 8 rows
                                          // one ldmatrix phase reads in 8 distinct bank groups
constexpr int kMinPiecesPerSplit = 4;     // keep the pipeline warm in each split
constexpr int kTargetBlocksPerSm = 2;

int tokens_per_block(int m) { return m <= 8 ? 8 : m <= 16 ? 16 : m <= 32 ? 32 : 64; }

// Pieces whose weights a lane holds at once (NB - 1 ahead of the math): as deep as the registers allow
// without spills (ptxas, sm_90): a piece is CPP 16-byte chunks per lane, the sums 8 * MT registers.
template <int BITS, int MT>
constexpr int deep_buffers() {
  return BITS == 4 ? (MT <= 2 ? 4 : 3) : (MT == 1 ? 3 : 2);
}
// Two blocks per SM (<= 128 registers) where the deep form fits them without spills; 64 tokens' sums do not.
template <int MT, int NB>
constexpr int min_blocks() {
  return NB > 2 && MT <= 4 ? 2 : 1;
}

struct SplitOut {  // where a split block's partial sums go
  int* counters;   // one per output tile (gridDim.x * gridDim.z), zero on entry and left zero; nullptr: atomics
};

template <typename T,    // activation and output type: __half or __nv_bfloat16
          int BITS,      // weight code width: 4 or 8
          int MT,        // n-tiles of 8 tokens per block: 1, 2, 4 or 8
          int NB>        // pieces of weights and activations in flight: 2 (one ahead) or more
__global__ void __launch_bounds__(kWarps * 32, min_blocks<MT, NB>()) wo_gemm_kernel(const WoProblem p,          // the problem
                                                               int pieces_per_split,      // 128-k steps per blockIdx.y
                                                               const SplitOut out) {      // split-K epilogue
  constexpr int SUB = 16 / BITS;        // 16x16 subtiles per chunk
  constexpr int KC = chunk_k(BITS);     // k per chunk
  constexpr int CPP = kPieceK / KC;     // chunks per step: 2 (int4) or 4 (int8)
  constexpr int TOK = 8 * MT;           // tokens per block
  constexpr int SEGS = kPieceK / 8;     // 16-byte segments per staged activation row
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto xs = reinterpret_cast<T(*)[TOK][kRowStride]>(smem_raw);  // [NB][TOK][kRowStride]

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int stripe = blockIdx.x * kWarps + warp;
  const bool active = stripe < p.w.n_padded / kStripeRows;  // warp-uniform
  const int row0 = stripe * kStripeRows + lane / 4;         // this lane's rows: row0, row0 + 8
  const int tok0 = blockIdx.z * TOK;
  const int nchunks = p.w.k_padded / KC;
  const int npieces = (p.w.k_padded + kPieceK - 1) / kPieceK;
  const int piece_begin = blockIdx.y * pieces_per_split;
  const int count = min(npieces, piece_begin + pieces_per_split) - piece_begin;
  const bool piece_groups = p.w.group_shift >= 7;  // one group per piece: its parameters load with its weights
  const T* x = nullptr;  // set below (opaque)
  const uint4* wq = reinterpret_cast<const uint4*>(p.w.qweight) + static_cast<size_t>(stripe) * nchunks * 32 + lane;

  float acc[MT][4] = {};   // scaled sums; C fragment: rows row0 (i < 2) / row0 + 8, token 2 * (lane % 4) + i % 2
  float gacc[MT][4] = {};  // unscaled sums of the current group
  float2 sz0 = make_float2(0.0f, 0.0f), sz1 = sz0;  // (scale, zero point) of row0 / row0 + 8
  int cur_grp = -1;
  uint4 wbuf[NB][CPP];     // slot s: the codes of pieces s, s + NB, ... of this split
  float2 pbuf[NB][2];      // their group parameters (rows row0, row0 + 8) when piece_groups

  auto flush = [&]() {
#pragma unroll
    for (int nt = 0; nt < MT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[nt][i] = fmaf(i < 2 ? sz0.x : sz1.x, gacc[nt][i], acc[nt][i]);
        gacc[nt][i] = 0.0f;
      }
  };

  auto stage = [&](int i, int buf) {  // activations [TOK, kPieceK] of the split's piece i -> xs[buf]
    const int piece = piece_begin + i;
    for (int e = threadIdx.x; e < TOK * SEGS; e += kWarps * 32) {
      const int r = e / SEGS, col = (e % SEGS) * 8;
      const int tok = tok0 + r, k = piece * kPieceK + col;
      const bool valid = i < count && tok < p.m && k < p.w.k_padded;
      cp_async_16(&xs[buf][r][col], valid ? x + static_cast<size_t>(tok) * p.w.k_padded + k : x, valid);
    }
  };

  auto load = [&](int i, uint4 (&dst)[CPP], float2 (&par)[2]) {  // codes (and parameters) of piece i
    const int piece = piece_begin + i;
#pragma unroll
    for (int cc = 0; cc < CPP; ++cc) {
      const int c = piece * CPP + cc;
      dst[cc] = active && i < count && c < nchunks ? load_streaming(wq + static_cast<size_t>(c) * 32)
                                                   : make_uint4(0, 0, 0, 0);
    }
    if (piece_groups && active && i < count) {
      const int grp = (piece * kPieceK) >> p.w.group_shift;
      par[0] = group_params(p.w, grp, row0);
      par[1] = group_params(p.w, grp, row0 + 8);
    }
  };

  auto compute = [&](int i, int buf, const uint4 (&packed)[CPP], const float2 (&par)[2]) {
    const int piece = piece_begin + i;
    if (piece_groups) {  // the whole piece is one group
      sz0 = par[0];
      sz1 = par[1];
    }
#pragma unroll
    for (int cc = 0; cc < CPP; ++cc) {
      const int c = piece * CPP + cc;
      if (c >= nchunks) break;
      uint32_t words[4];
      words_of(packed[cc], words);
      float v[SUB][4][2];  // int8 only: biased float values
      if constexpr (BITS == 8) decode_chunk<8>(words, v);
#pragma unroll
      for (int j = 0; j < SUB; ++j) {
        const int k0 = c * KC + 16 * j;
        if (!piece_groups) {
          const int grp = k0 >> p.w.group_shift;
          if (grp != cur_grp) {  // warp-uniform
            flush();
            sz0 = group_params(p.w, grp, row0);
            sz1 = group_params(p.w, grp, row0 + 8);
            cur_grp = grp;
          }
        }
        uint32_t a[4];  // A fragment: q - zero_point
        if constexpr (BITS == 4) {
          const uint32_t z0 = float_to_pair(PairTraits<T>::kBase + 8.0f + sz0.y, T{});
          const uint32_t z1 = float_to_pair(PairTraits<T>::kBase + 8.0f + sz1.y, T{});
#pragma unroll
          for (int r = 0; r < 4; ++r) a[r] = sub_pair(int4_pair_biased<T>(words[j], r), r % 2 ? z1 : z0, T{});
        } else {
          const float z0 = kInt8Bias + sz0.y, z1 = kInt8Bias + sz1.y;
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const float z = r % 2 ? z1 : z0;
            a[r] = float2_to_pair(v[j][r][0] - z, v[j][r][1] - z, T{});
          }
        }
        const int kk = k0 - piece * kPieceK + 8 * ((lane / 8) % 2);  // ldmatrix: odd matrices are k + 8
        if constexpr (MT == 1) {
          uint32_t b[2];
          ldmatrix_x2(b, &xs[buf][lane % 8][kk]);
          mma_16816<T>(gacc[0], a, b[0], b[1]);
        } else {
#pragma unroll
          for (int nt = 0; nt < MT; nt += 2) {  // matrices: (nt, k), (nt, k + 8), (nt + 1, k), (nt + 1, k + 8)
            uint32_t b[4];
            ldmatrix_x4(b, &xs[buf][8 * nt + lane % 8 + 8 * (lane / 16)][kk]);
            mma_16816<T>(gacc[nt], a, b[0], b[1]);
            mma_16816<T>(gacc[nt + 1], a, b[2], b[3]);
          }
        }
      }
    }
    if (piece_groups) flush();
  };

  // The pipeline: pieces 0 .. NB - 2 in flight before the loop; step i issues piece i + NB - 1 into the
  // slot and buffer piece i - 1 used (every warp is past its math once the barrier of step i is passed), so one
  // barrier per piece. Slots are indexed by the unrolled s, so the register arrays stay registers.
  x = opaque(static_cast<const T*>(p.x));
#pragma unroll
  for (int s = 0; s < NB - 1; ++s) {
    stage(s, s);
    cp_async_commit();
    load(s, wbuf[s], pbuf[s]);
  }
  for (int base = 0; base < count; base += NB) {
#pragma unroll
    for (int s = 0; s < NB; ++s) {
      const int i = base + s;
      if (i >= count) break;
      constexpr int kAhead = NB - 1;
      const int ahead_slot = (s + kAhead) % NB;
      if (i + kAhead < count) load(i + kAhead, wbuf[ahead_slot], pbuf[ahead_slot]);
      cp_async_wait<NB - 2>();  // piece i's activations have landed (this thread's copies)
      __syncthreads();          // ... and every thread's; every warp is done with piece i - 1's buffer
      if (i + kAhead < count) stage(i + kAhead, ahead_slot);
      cp_async_commit();        // possibly empty: the group count stays one per step
      if (active) compute(i, s, wbuf[s], pbuf[s]);
    }
  }
  if (!piece_groups) flush();

  const int col0 = tok0 + 2 * (lane % 4);
  if (gridDim.y == 1 || out.counters == nullptr) {
    if (!active) return;
#pragma unroll
    for (int nt = 0; nt < MT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = row0 + 8 * (i / 2), tok = col0 + 8 * nt + i % 2;
        if (row >= p.w.n || tok >= p.m) continue;
        const size_t idx = static_cast<size_t>(tok) * p.w.n + row;
        if (p.workspace != nullptr)
          atomicAdd(p.workspace + idx, acc[nt][i]);
        else
          store(static_cast<T*>(p.y) + idx, activate(acc[nt][i] + bias_at(opaque(p.bias), row), p.act));
      }
    return;
  }
  // Split-K, one kernel: this split's partial tile, then the last block of the tile sums them all.
  const size_t plane = static_cast<size_t>(p.m) * p.w.n;
  float* mine = p.workspace + blockIdx.y * plane;
  if (active) {
#pragma unroll
    for (int nt = 0; nt < MT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = row0 + 8 * (i / 2), tok = col0 + 8 * nt + i % 2;
        if (row < p.w.n && tok < p.m) __stcg(mine + static_cast<size_t>(tok) * p.w.n + row, acc[nt][i]);
      }
  }
  __shared__ int last;
  __threadfence();  // the partials are visible device-wide before this block is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    int* counter = out.counters + blockIdx.z * gridDim.x + blockIdx.x;
    last = atomicAdd(counter, 1) == static_cast<int>(gridDim.y) - 1;
    if (last) *counter = 0;  // every split has arrived: ready for the next call on this stream
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int rows0 = blockIdx.x * kBlockRows;
  for (int e = threadIdx.x; e < TOK * kBlockRows; e += kWarps * 32) {
    const int tok = tok0 + e / kBlockRows, row = rows0 + e % kBlockRows;
    if (row >= p.w.n || tok >= p.m) continue;
    const size_t at = static_cast<size_t>(tok) * p.w.n + row;
    float v = 0.0f;
    for (int split = 0; split < static_cast<int>(gridDim.y); ++split) v += __ldcg(p.workspace + split * plane + at);
    store(static_cast<T*>(p.y) + at, activate(v + bias_at(p.bias, row), p.act));
  }
}

// After the legacy split-K: y = act(workspace + bias).
template <typename T>  // output type
__global__ void finish_split_k(const WoProblem p) {  // the problem whose workspace holds the sums
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<size_t>(p.m) * p.w.n) return;
  const int n = static_cast<int>(i % p.w.n);
  store(static_cast<T*>(p.y) + i, activate(p.workspace[i] + bias_at(p.bias, n), p.act));
}

template <typename T, int BITS, int MT, int NB>
void launch_shape(const WoProblem& p, int pieces_per_split, dim3 grid, const SplitOut& out, cudaStream_t stream) {
  constexpr int smem = NB * 8 * MT * kRowStride * static_cast<int>(sizeof(T));
  auto* kernel = wo_gemm_kernel<T, BITS, MT, NB>;
  if constexpr (smem > (48 << 10)) {
    static const bool opted = [&] {  // once per instantiation, before its first launch
      return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) == cudaSuccess;
    }();
    (void)opted;  // a refusal shows as the launch's own error
  }
  kernel<<<grid, kWarps * 32, smem, stream>>>(p, pieces_per_split, out);
}

template <typename T, int BITS, int MT>
void launch_tokens(const WoProblem& p, int pieces_per_split, dim3 grid, const SplitOut& out, bool deep,
                   cudaStream_t stream) {
  if (deep)
    launch_shape<T, BITS, MT, deep_buffers<BITS, MT>()>(p, pieces_per_split, grid, out, stream);
  else
    launch_shape<T, BITS, MT, 2>(p, pieces_per_split, grid, out, stream);
}

template <typename T,    // activation and output type
          int BITS>      // weight code width
void launch_typed(const WoProblem& p,     // the problem (workspace set when splits > 1)
                  int splits,             // split-K factor from wo_gemm_splits
                  const int* counters,    // wo_gemm_counters' buffer, or nullptr (legacy split-K)
                  cudaStream_t stream) {  // the caller's stream
  const int tok = tokens_per_block(p.m);
  const int npieces = (p.w.k_padded + kPieceK - 1) / kPieceK;
  const int pieces_per_split = (npieces + splits - 1) / splits;
  const dim3 grid((p.w.n_padded / kStripeRows + kWarps - 1) / kWarps, (npieces + pieces_per_split - 1) / pieces_per_split,
                  (p.m + tok - 1) / tok);
  const SplitOut out{const_cast<int*>(counters)};
  const bool deep = wo_gemm_mode() & 1;
  switch (tok) {
    case 8: launch_tokens<T, BITS, 1>(p, pieces_per_split, grid, out, deep, stream); break;
    case 16: launch_tokens<T, BITS, 2>(p, pieces_per_split, grid, out, deep, stream); break;
    case 32: launch_tokens<T, BITS, 4>(p, pieces_per_split, grid, out, deep, stream); break;
    default: launch_tokens<T, BITS, 8>(p, pieces_per_split, grid, out, deep, stream); break;
  }
  if (p.workspace != nullptr && counters == nullptr) {
    const size_t total = static_cast<size_t>(p.m) * p.w.n;
    finish_split_k<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(p);
  }
}

}  // namespace

// QTOOL_WO_GEMM, for A/Bs in one process (read at each call: a getenv beside a launch): bit 0 the deep pipeline,
// bit 1 the one-kernel split-K; default 3 (both). 0 is the form measured until session 25.
int wo_gemm_mode() {
  const char* env = std::getenv("QTOOL_WO_GEMM");
  return env ? std::atoi(env) & 3 : 3;
}

int wo_gemm_splits(const WoProblem& p, int num_sms) {
  const int tok = tokens_per_block(p.m);
  const int blocks = (p.w.n_padded / kStripeRows + kWarps - 1) / kWarps * ((p.m + tok - 1) / tok);
  const int target = kTargetBlocksPerSm * num_sms;
  const int npieces = (p.w.k_padded + kPieceK - 1) / kPieceK;
  const int max_splits = npieces / kMinPiecesPerSplit > 1 ? npieces / kMinPiecesPerSplit : 1;
  int splits = (target + blocks - 1) / blocks;
  splits = splits < 1 ? 1 : splits > max_splits ? max_splits : splits;
  const int pieces_per_split = (npieces + splits - 1) / splits;
  return (npieces + pieces_per_split - 1) / pieces_per_split;  // no empty splits
}

int wo_gemm_tiles(const WoProblem& p) {
  const int tok = tokens_per_block(p.m);
  return (p.w.n_padded / kStripeRows + kWarps - 1) / kWarps * ((p.m + tok - 1) / tok);
}

void launch_wo_gemm(const WoProblem& p, int splits, const int* counters, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  if (p.w.num_bits == 4) {
    bf16 ? launch_typed<__nv_bfloat16, 4>(p, splits, counters, stream)
         : launch_typed<__half, 4>(p, splits, counters, stream);
  } else {
    bf16 ? launch_typed<__nv_bfloat16, 8>(p, splits, counters, stream)
         : launch_typed<__half, 8>(p, splits, counters, stream);
  }
}

}  // namespace qtool
