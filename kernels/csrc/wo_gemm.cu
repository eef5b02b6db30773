// Weight-only GEMM on tensor cores (mma.sync.m16n8k16, bf16/fp16 in, float32 accumulation).
//
// The product is computed transposed, Y^T = W * X^T, so that the weights are the 16-row A operand
// and up to 64 tokens are the B operand in n-tiles of 8: small m wastes at most 7 of 8 columns
// instead of 15 of 16 rows. Block = 8 warps = 8 stripes (128 weight rows) x up to 64 tokens x a
// K range (split-K over blockIdx.y when there are too few blocks to fill the GPU; tokens beyond 64
// over blockIdx.z). Per step of 128 k:
//   - activations [tokens, 128] are copied to shared memory with cp.async (double buffered, one
//     barrier per step, zero-filled past m and k_padded) and read back as B fragments with ldmatrix;
//   - each warp loads its stripe's weights straight into registers (the repacked layout puts each
//     lane's A fragments in its own 16 bytes, so no shared memory and no shuffles), one step ahead,
//     and with groups of >= 128 k the step's scales and zero points with them (session 26's profile:
//     loaded at the group boundary instead, their first use held a quarter of the stall samples);
//   - codes become A = q - zero_point, exact small integers in bf16/fp16 (int4: one shift, one LOP3
//     and one packed subtraction per pair, see wo_decode.cuh);
//   - the mma accumulates sum (q - z) * x per group in float32, and at each group boundary the
//     float32 scale of the lane's row is applied: acc += scale * group_sum. Scales stay float32,
//     so the result is as accurate as dequantizing in float32 (better than the bf16 weights of
//     the reference) and the scale costs one FMA per accumulator per group, not one per weight.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "kept_counters.h"
#include "pdl.cuh"
#include "wo_common.cuh"

namespace qtool {
namespace {

constexpr int kWarps = 8;                 // stripes per block, one per warp: 128 weight rows
constexpr int kPieceK = 128;              // k of activations staged in shared memory per step
constexpr int kRowStride = kPieceK + 8;   // shared row stride (elements); +16 bytes puts the 8 rows
                                          // one ldmatrix phase reads in 8 distinct bank groups
constexpr int kMinPiecesPerSplit = 4;     // keep the pipeline warm in each split
constexpr int kTargetBlocksPerSm = 2;

int tokens_per_block(int m) { return m <= 8 ? 8 : m <= 16 ? 16 : m <= 32 ? 32 : 64; }

// The group parameters a lane applies: scale and zero point of rows row0 / row0 + 8, and the zero points as
// T pairs already offset for the decode (int4: base + 8 + z; int8: the float bias + z), computed once per group.
template <typename T, int BITS>
struct LaneGroup {
  float s0 = 0.0f, s1 = 0.0f;
  uint32_t zp0 = 0, zp1 = 0;  // int4
  float zf0 = 0.0f, zf1 = 0.0f;  // int8
  __device__ inline void set(float2 a, float2 b) {
    s0 = a.x;
    s1 = b.x;
    if constexpr (BITS == 4) {
      zp0 = float_to_pair(PairTraits<T>::kBase + 8.0f + a.y, T{});
      zp1 = float_to_pair(PairTraits<T>::kBase + 8.0f + b.y, T{});
    } else {
      zf0 = kInt8Bias + a.y;
      zf1 = kInt8Bias + b.y;
    }
  }
};

// f(index in y [m, n], the lane's sum, weight row) for each of the lane's C-fragment elements inside y: rows row0
// (i < 2) / row0 + 8, tokens col0 + 8 nt + i % 2.
template <int MT, class F>
__device__ __forceinline__ void each_output(const WoProblem& p, const float (&acc)[MT][4], int row0, int col0, F&& f) {
#pragma unroll
  for (int nt = 0; nt < MT; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = row0 + 8 * (i / 2), tok = col0 + 8 * nt + i % 2;
      if (row < p.w.n && tok < p.m) f(static_cast<size_t>(tok) * p.w.n + row, acc[nt][i], row);
    }
}

// Split-K without a memset or a second kernel (p.split_counters set), the last split of a tile to arrive (counted
// on a kept per-tile counter that it resets) storing y:
// - ordered (p.kept_sums unset): each split stores its partial tile (this lane's C fragments) in its own slot of
//   the workspace ([gridDim.y, m, n] float32, not zeroed); the last adds the slots in split order, so the result
//   has the same bits on every run (the atomicAdd paths round in arrival order);
// - fused (p.kept_sums set, QTOOL_WO_SPLIT=fused): each split adds its partials into the kept sums ([m, n], zero
//   between launches) with atomics; the last reads each sum once and leaves it zero.
template <typename T, int MT>
__device__ __forceinline__ void store_split_last(const WoProblem& p, const float (&acc)[MT][4], bool active,
                                                 int row0, int col0) {
  const size_t plane = static_cast<size_t>(p.m) * p.w.n;
  auto each = [&](auto&& f) {
    if (active) each_output<MT>(p, acc, row0, col0, f);
  };
  if (p.kept_sums) {
    each([&](size_t idx, float v, int) { atomicAdd(p.workspace + idx, v); });
  } else {
    each([&](size_t idx, float v, int) { p.workspace[blockIdx.y * plane + idx] = v; });
  }
  __shared__ bool last;
  __syncthreads();  // every warp's partials issued
  if (threadIdx.x == 0) {
    __threadfence();  // ... and visible before this split's arrival
    int* counter = p.split_counters + blockIdx.z * gridDim.x + blockIdx.x;
    last = atomicAdd(counter, 1) == static_cast<int>(gridDim.y) - 1;
    if (last) *counter = 0;  // every split of the tile has arrived: zero for the next launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  each([&](size_t idx, float, int row) {
    float sum = 0.0f;
    if (p.kept_sums) {
      sum = __ldcg(p.workspace + idx);
      p.workspace[idx] = 0.0f;
    } else {
      for (unsigned s = 0; s < gridDim.y; ++s) sum += __ldcg(p.workspace + s * plane + idx);
    }
    store(static_cast<T*>(p.y) + idx, activate(sum + bias_at(opaque(p.bias), row), p.act));
  });
}

// 64 tokens of int4 in 128 registers (two blocks per SM, no spills); int8's 64-token form takes ~165 (one block):
// capped at 128 it spilled 52-72 bytes (ptxas, sm_90, session 26).
template <int BITS, int MT>
constexpr int min_blocks() {
  return BITS == 4 && MT == 8 ? 2 : 1;
}

template <typename T,    // activation and output type: __half or __nv_bfloat16
          int BITS,      // weight code width: 4 or 8
          int MT,        // n-tiles of 8 tokens per block: 1, 2, 4 or 8
          bool PG>       // one group per 128-k piece (groups of >= 128, or per channel): its parameters are
                         // loaded a piece ahead with the codes; else at each group boundary inside the piece
__global__ void __launch_bounds__(kWarps * 32, min_blocks<BITS, MT>()) wo_gemm_kernel(const WoProblem p,  // problem
                                                               int pieces_per_split) {  // 128-k steps per blockIdx.y
  constexpr int SUB = 16 / BITS;        // 16x16 subtiles per chunk
  constexpr int KC = chunk_k(BITS);     // k per chunk
  constexpr int CPP = kPieceK / KC;     // chunks per step: 2 (int4) or 4 (int8)
  constexpr int TOK = 8 * MT;           // tokens per block
  constexpr int SEGS = kPieceK / 8;     // 16-byte segments per staged activation row
  constexpr int ROWS_PER_PASS = kWarps * 32 / SEGS;  // activation rows one pass of the block's copies covers
  constexpr int PASSES = (TOK + ROWS_PER_PASS - 1) / ROWS_PER_PASS;
  __shared__ __align__(16) T xs[2][TOK][kRowStride];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int stripe = blockIdx.x * kWarps + warp;
  const bool active = stripe < p.w.n_padded / kStripeRows;  // warp-uniform
  const int row0 = stripe * kStripeRows + lane / 4;         // this lane's rows: row0, row0 + 8
  const int tok0 = blockIdx.z * TOK;
  const int nchunks = p.w.k_padded / KC;
  const int npieces = (p.w.k_padded + kPieceK - 1) / kPieceK;
  const int piece_begin = blockIdx.y * pieces_per_split;
  const int piece_end = min(npieces, piece_begin + pieces_per_split);
  const uint4* wq = reinterpret_cast<const uint4*>(p.w.qweight) + static_cast<size_t>(stripe) * nchunks * 32 + lane;

  // This thread's activation copies: rows r0 + ROWS_PER_PASS * i, columns seg * 8 .. + 7 of each piece (the
  // addresses computed once: they were ~60 instructions per piece when recomputed per copy).
  const int r0 = threadIdx.x / SEGS, seg = threadIdx.x % SEGS;
  const T* x = opaque(static_cast<const T*>(p.x));
  const T* xrow = x + static_cast<size_t>(tok0 + r0) * p.w.k_padded + seg * 8;  // read only where valid
  const size_t pass_stride = static_cast<size_t>(ROWS_PER_PASS) * p.w.k_padded;
  unsigned xok = 0;  // bit i: pass i's row is a token of this call
#pragma unroll
  for (int i = 0; i < PASSES; ++i) {
    const int r = r0 + ROWS_PER_PASS * i;
    if (r < TOK && tok0 + r < p.m) xok |= 1u << i;
  }

  float acc[MT][4] = {};   // scaled sums; C fragment: rows row0 (i < 2) / row0 + 8, token 2 * (lane % 4) + i % 2
  float gacc[MT][4] = {};  // unscaled sums of the current group
  LaneGroup<T, BITS> g;
  int cur_grp = -1;

  auto flush = [&]() {
#pragma unroll
    for (int nt = 0; nt < MT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[nt][i] = fmaf(i < 2 ? g.s0 : g.s1, gacc[nt][i], acc[nt][i]);
        gacc[nt][i] = 0.0f;
      }
  };

  auto stage = [&](int piece, int buf) {  // activations [TOK, kPieceK] -> xs[buf]
    const bool k_ok = piece * kPieceK + seg * 8 < p.w.k_padded;
#pragma unroll
    for (int i = 0; i < PASSES; ++i) {
      const int r = r0 + ROWS_PER_PASS * i;
      if (r < TOK) {
        const bool valid = k_ok && (xok >> i) & 1u;
        cp_async_16(&xs[buf][r][seg * 8], valid ? xrow + i * pass_stride + piece * kPieceK : x, valid);
      }
    }
  };

  auto load = [&](int piece, uint4 (&dst)[CPP], float2 (&par)[2]) {  // codes (and with PG parameters) of a piece
#pragma unroll
    for (int cc = 0; cc < CPP; ++cc) {
      const int c = piece * CPP + cc;
      dst[cc] = active && c < nchunks ? load_streaming(wq + static_cast<size_t>(c) * 32) : make_uint4(0, 0, 0, 0);
    }
    if (PG && active) {
      const int grp = (piece * kPieceK) >> p.w.group_shift;
      par[0] = group_params(p.w, grp, row0);
      par[1] = group_params(p.w, grp, row0 + 8);
    }
  };

  auto compute = [&](int piece, int buf, const uint4 (&packed)[CPP], const float2 (&par)[2]) {
    if constexpr (PG) g.set(par[0], par[1]);
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
        if constexpr (!PG) {
          const int grp = k0 >> p.w.group_shift;
          if (grp != cur_grp) {  // warp-uniform
            flush();
            g.set(group_params(p.w, grp, row0), group_params(p.w, grp, row0 + 8));
            cur_grp = grp;
          }
        }
        uint32_t a[4];  // A fragment: q - zero_point
        if constexpr (BITS == 4) {
#pragma unroll
          for (int r = 0; r < 4; ++r) a[r] = sub_pair(int4_pair_biased<T>(words[j], r), r % 2 ? g.zp1 : g.zp0, T{});
        } else {
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const float z = r % 2 ? g.zf1 : g.zf0;
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
    if constexpr (PG) flush();
  };

  // One piece ahead, one barrier per piece: step i stages piece i + 1 into the buffer piece i - 1 used, which
  // every warp has finished with once it is past step i's barrier. Slots alternate by the unrolled parity.
  uint4 w[2][CPP];
  float2 par[2][2] = {};
  // Launched with PDL (p.pdl, QTOOL_WO_GEMM_PDL=1: static weights only): the first piece's codes and parameters,
  // which no kernel before writes, are in flight before the wait for that kernel; x, the bias, the workspace and y
  // only after it.
  if (p.pdl) {
    if (piece_begin < piece_end) load(piece_begin, w[0], par[0]);
    pdl_wait_then_release();
  }
  if (piece_begin < piece_end) {
    stage(piece_begin, 0);
    cp_async_commit();
    if (!p.pdl) load(piece_begin, w[0], par[0]);
    for (int base = piece_begin; base < piece_end; base += 2) {
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        const int piece = base + s;
        if (piece >= piece_end) break;
        const bool more = piece + 1 < piece_end;
        if (more) load(piece + 1, w[s ^ 1], par[s ^ 1]);
        cp_async_wait<0>();  // this piece's activations have landed (this thread's copies)
        __syncthreads();     // ... and every thread's; every warp is done with the other buffer
        if (more) stage(piece + 1, s ^ 1);
        cp_async_commit();
        if (active) compute(piece, s, w[s], par[s]);
      }
    }
  }
  if constexpr (!PG) flush();
  const int col0 = tok0 + 2 * (lane % 4);
  if (p.split_counters != nullptr) {
    store_split_last<T, MT>(p, acc, active, row0, col0);
    return;
  }
  if (!active) return;
  each_output<MT>(p, acc, row0, col0, [&](size_t idx, float v, int row) {
    if (p.workspace != nullptr) {
      atomicAdd(p.workspace + idx, v);
    } else {
      store(static_cast<T*>(p.y) + idx, activate(v + bias_at(opaque(p.bias), row), p.act));
    }
  });
}

// After split-K: y = act(workspace + bias); kept sums are left zero for the next launch.
template <typename T>  // output type
__global__ void finish_split_k(const WoProblem p) {  // the problem whose workspace holds the sums
  const size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= static_cast<size_t>(p.m) * p.w.n) return;
  const int n = static_cast<int>(i % p.w.n);
  const float sum = p.workspace[i];
  if (p.kept_sums) p.workspace[i] = 0.f;
  store(static_cast<T*>(p.y) + i, activate(sum + bias_at(p.bias, n), p.act));
}

template <typename T,    // activation and output type
          int BITS>      // weight code width
void launch_typed(const WoProblem& p,     // the problem (workspace set when splits > 1)
                  int splits,             // split-K factor from wo_gemm_splits
                  cudaStream_t stream) {  // the caller's stream
  const int tok = tokens_per_block(p.m);
  const int npieces = (p.w.k_padded + kPieceK - 1) / kPieceK;
  const int pieces_per_split = (npieces + splits - 1) / splits;
  const dim3 grid((p.w.n_padded / kStripeRows + kWarps - 1) / kWarps, (npieces + pieces_per_split - 1) / pieces_per_split,
                  (p.m + tok - 1) / tok);
  const dim3 block(kWarps * 32);
  auto launch = [&](auto kernel) { launch_maybe_pdl(kernel, p.pdl, grid, block, 0, stream, p, pieces_per_split); };
  if (p.w.group_shift >= 7) {
    switch (tok) {
      case 8: launch(wo_gemm_kernel<T, BITS, 1, true>); break;
      case 16: launch(wo_gemm_kernel<T, BITS, 2, true>); break;
      case 32: launch(wo_gemm_kernel<T, BITS, 4, true>); break;
      default: launch(wo_gemm_kernel<T, BITS, 8, true>); break;
    }
  } else {
    switch (tok) {
      case 8: launch(wo_gemm_kernel<T, BITS, 1, false>); break;
      case 16: launch(wo_gemm_kernel<T, BITS, 2, false>); break;
      case 32: launch(wo_gemm_kernel<T, BITS, 4, false>); break;
      default: launch(wo_gemm_kernel<T, BITS, 8, false>); break;
    }
  }
  if (p.workspace != nullptr && p.split_counters == nullptr) {
    const size_t total = static_cast<size_t>(p.m) * p.w.n;
    finish_split_k<T><<<static_cast<unsigned>((total + 255) / 256), 256, 0, stream>>>(p);
  }
}

}  // namespace

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

// wo_gemm's two A/B switches, read from the environment on first use and again by reload_wo_switches (the op
// qtool_cuda::reload_switches: dev/step_ab.py alternates them in one process, each variant recompiled and its
// graphs captured again). QTOOL_WO_SPLIT: "kept" or unset (atomic adds into kept zeroed sums, then
// finish_split_k: no fill; the default since session 52, whose 8B step at batch 16 ran 1.3% faster with it on an
// H100), "atomic" (atomic adds into at::zeros sums, then finish_split_k: a fill per call), "ordered" (kept tile
// counters, slots added in split order by the last split: one launch) or "fused" (kept sums and counters, the last
// split finishes: one launch; 15% slower at batch 16 in the same A/B). Kept sums are one buffer per device: two
// streams must not run split wo_gemm calls at the same time (qtool runs its layers on one stream; the Hopper GEMMs'
// kept flags ask the same). QTOOL_WO_GEMM_PDL=1: launched with programmatic dependent launch, its first weights
// loaded before the wait (pdl.cuh); only for weights no kernel writes while in use, which the A/Bs' layers are.
enum WoSplitMode : int { kSplitAtomic = 0, kSplitOrdered, kSplitKept, kSplitFused, kSplitUnread = -1 };
static std::atomic<int> wo_split{kSplitUnread};
static std::atomic<int> wo_pdl{-1};
static KeptCounters wo_counters(16384);
constexpr size_t kKeptSums = size_t{1} << 21;  // 8 MB of float sums: 64 tokens of a 28672-row weight fit
static KeptCounters wo_sums(kKeptSums);  // the counters' class: zero int bits are float +0.0

static int read_split_mode() {
  const char* env = std::getenv("QTOOL_WO_SPLIT");
  const std::string mode = env != nullptr ? env : "";
  return mode == "ordered" ? kSplitOrdered : mode == "atomic" ? kSplitAtomic : mode == "fused" ? kSplitFused
                                                                                             : kSplitKept;
}

static int split_mode() {
  int mode = wo_split.load(std::memory_order_relaxed);
  if (mode == kSplitUnread) {
    mode = read_split_mode();
    wo_split.store(mode, std::memory_order_relaxed);
  }
  return mode;
}

void reload_wo_switches(cudaStream_t stream) {
  wo_split.store(read_split_mode(), std::memory_order_relaxed);
  wo_pdl.store(-1, std::memory_order_relaxed);
  // made now, outside any graph capture: a first use inside one gets nullptr and would run the fallback path
  if (split_mode() == kSplitOrdered || split_mode() == kSplitFused) wo_counters.get(stream);
  if (split_mode() == kSplitKept || split_mode() == kSplitFused) wo_sums.get(stream);
}

// wo_gemm's split-K in one launch (ordered or fused; kernels/NOTES.md "Session 41", "Session 50"): the kept tile
// counters (kept_counters.h), or nullptr when off, when the problem has more tiles than counters, or when they
// cannot be made now (the caller takes the memset path).
int* wo_gemm_counters(int tiles, cudaStream_t stream) {
  const bool on = split_mode() == kSplitOrdered || split_mode() == kSplitFused;
  return on && static_cast<size_t>(tiles) <= wo_counters.count() ? wo_counters.get(stream) : nullptr;
}

// wo_gemm's atomic split-K without the per-call at::zeros (kept or fused; kernels/NOTES.md "Session 50"): one
// float32 buffer per device, zeroed once and left zero by finish_split_k (or, fused, by the last split of each
// tile), for [m, n] sums of up to kKeptSums floats; nullptr when off, for larger problems, or when it cannot be
// made now (the caller takes the at::zeros path).
float* wo_gemm_kept_sums(size_t count, cudaStream_t stream) {
  const bool on = split_mode() == kSplitKept || split_mode() == kSplitFused;
  return on && count <= kKeptSums ? reinterpret_cast<float*>(wo_sums.get(stream)) : nullptr;
}

bool wo_gemm_pdl() {
  int on = wo_pdl.load(std::memory_order_relaxed);
  if (on < 0) {
    const char* env = std::getenv("QTOOL_WO_GEMM_PDL");
    on = env != nullptr && env[0] == '1' && pdl_enabled();
    wo_pdl.store(on, std::memory_order_relaxed);
  }
  return on != 0;
}

int wo_gemm_tiles(const WoProblem& p) {
  const int tok = tokens_per_block(p.m);
  return (p.w.n_padded / kStripeRows + kWarps - 1) / kWarps * ((p.m + tok - 1) / tok);
}

void launch_wo_gemm(const WoProblem& p, int splits, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  if (p.w.num_bits == 4) {
    bf16 ? launch_typed<__nv_bfloat16, 4>(p, splits, stream) : launch_typed<__half, 4>(p, splits, stream);
  } else {
    bf16 ? launch_typed<__nv_bfloat16, 8>(p, splits, stream) : launch_typed<__half, 8>(p, splits, stream);
  }
}

}  // namespace qtool
