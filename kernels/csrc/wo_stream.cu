// wo_gemv variant 3, "stream": the weight-only GEMV in w8_gemv's shape, for 1 <= m <= kMaxStreamTokens.
//
// Why a second GEMV (kernels/NOTES.md, session 14): wo_gemv's block is one 16-row stripe and stages all of
// x in shared memory (m * K * 2 bytes from L2 per block, for 8 * K bytes of int4 codes: x traffic is m / 4
// of the weight stream, twice the codes at m = 8, where it falls from ~2.5 to ~1.4 TB/s), and it keeps a ring
// of loads alive across passes (80 registers, three blocks per SM). w8_gemv, which streams 8-bit weights at
// 3.5 TB/s, does neither. Here:
//   - a block takes STRIPES stripes (16 rows each) and WARPS warps that split the chunks of K between them;
//     each B fragment (x) is read once per chunk and used by every stripe of the block;
//   - a warp issues the loads of UNROLL chunks per stripe before any math, then does the math: no ring, few
//     registers, more blocks per SM (occupancy keeps loads in flight);
//   - each warp copies the x rows of its own chunks into its slice of shared memory (cp.async, 16 bytes per
//     lane per copy, issued with the weight loads, no registers held) and reads the B fragments back with
//     conflict-free 4-byte loads (rows padded by 4 words). Session 14's first version read them straight from
//     global memory (__ldg, 4 bytes from 8 token rows: 8 L1 wavefronts each, 64 per 512-byte chunk of codes):
//     L1-bound past one token, 10-40% slower at 4-8 tokens (session 15), removed;
//   - up to 32 tokens: token tiles of 8 are the n of mma.m16n8k16 (TT of them), each A fragment (q - z,
//     exact in bf16/fp16) feeds TT mma.
// The arithmetic is wo_gemv's (float32 sums of (q - z) * x per group, times the float32 scale), so both
// agree with layout.ReferenceOps to float32 rounding. QTOOL_WO_STREAM (read once): 1..3 forces one of the three
// launch shapes (0 = by rows), for A/Bs in one build (dev/stream_ab.py).
#include <cstdint>
#include <cstdlib>

#include "pdl.cuh"
#include "wo_common.cuh"

namespace qtool {
namespace {

// Chunks per stripe whose loads a warp issues before their math, and the register budget they fit in
// without spills (ptxas, sm_90): one stripe at <= 16 tokens in 64 registers (32 warps per SM), 6 chunks of
// int4 / int8 codes (96 bytes per lane in flight), fewer where a chunk brings more group parameters or is a
// 128-k chunk of 2- or 3-bit codes (twice the subtiles to decode); two stripes (<= 8 tokens only) in 80
// registers (three 8-warp blocks per SM); 32 tokens in 128 (four token tiles' sums take 32 registers alone).
// Staged x: a warp's tile per (chunk, token tile) is 8 token rows of chunk_k / 2 words, padded by 4 words (so the
// B loads, words 8j + t (+ 4) of row g, hit 32 distinct banks), and a warp stages at most kStageBytes (7 KB:
// 56 KB per 8-warp block, four per SM).
constexpr int kXPadWords = 4;
constexpr int kStageBytes = 7 << 10;
__host__ __device__ constexpr int x_row_words(int bits) { return chunk_k(bits) / 2 + kXPadWords; }
__host__ __device__ constexpr int x_tile_words(int bits) { return 8 * x_row_words(bits); }

__host__ __device__ constexpr int stream_unroll(int bits, int tt, int stripes, int gpc) {
  const bool low = is_low_bits(bits);
  int u = gpc == 1 ? (low ? 4 : 6) : gpc == 2 ? (low ? 3 : 4) : (low ? 2 : 3);
  if (stripes > 1) u = u * 2 / 3;
  if (tt > 1) u /= 2;
  const int fit = kStageBytes / (tt * x_tile_words(bits) * 4);
  if (u > fit) u = fit;
  return u < 1 ? 1 : u;
}

// Dynamic shared memory of a block: the staged x tiles, then (reusing them) the warps' partial sums.
__host__ __device__ constexpr int stream_smem_bytes(int bits, int gpc, int tt, int stripes, int warps) {
  const int stage = warps * stream_unroll(bits, tt, stripes, gpc) * tt * x_tile_words(bits) * 4;
  const int partial = warps * stripes * tt * 32 * 4 * 4;
  return stage > partial ? stage : partial;
}
__host__ __device__ constexpr int stream_min_blocks(int tt, int stripes, int warps) {
  return stripes > 1 ? 3 * 8 / warps : (tt > 2 ? 16 : 32) / warps;
}

template <typename T,     // activation and output type: __half or __nv_bfloat16
          int BITS,       // weight code width: 2, 3, 4 or 8
          int GPC,        // groups per chunk: 1, 2 or 4
          int TT,         // token tiles of 8: 1, 2 or 4
          int STRIPES,    // 16-row stripes per block
          int WARPS,      // warps per block, splitting the chunks
          bool PDL = false>  // QTOOL_PDL=2 (unmeasured): the first pass's weights before griddepcontrol.wait, x after
__global__ void __launch_bounds__(WARPS * 32, stream_min_blocks(TT, STRIPES, WARPS))
    wo_stream_kernel(const WoProblem p) {
  extern __shared__ uint4 smem_dyn[];        // the staged x tiles, then the partial sums
  constexpr int SUB = chunk_subtiles(BITS);  // 16 x 16 subtiles per chunk
  constexpr int KC = chunk_k(BITS);          // k per chunk
  constexpr int RW = KC / 2;                 // words of x per token row and chunk
  constexpr int SPG = SUB / GPC;             // subtiles per group
  constexpr int UNROLL = stream_unroll(BITS, TT, STRIPES, GPC);
  constexpr int XT = x_tile_words(BITS), XROW = x_row_words(BITS);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4, quad = lane & ~3;
  const int stripe0 = blockIdx.x * STRIPES;
  const int nstripes = p.w.n_padded / kStripeRows;
  const int nchunks = p.w.k_padded / KC;
  const uint32_t stripe_vecs = static_cast<uint32_t>(nchunks) * chunk_vecs(BITS);
  const uint4* wq = reinterpret_cast<const uint4*>(p.w.qweight);

  // Group parameter of this lane, as in wo_gemv: t = 0, 1 -> scale of row g / g + 8; t = 2, 3 -> zero point,
  // shared within the quad by shuffles.
  const float* par = t < 2 ? p.w.scale : p.w.zero;
  const bool has_par = par != nullptr;  // false for the zero lanes of a symmetric weight
  if (!has_par) par = p.w.scale;
  par += g + 8 * (t % 2);
  const uint32_t gstride = p.w.n_padded;

  // B fragments: token 8 tt + g, words t and t + 4 of each subtile (8 words). Tokens >= m read token 0
  // again: column n of an mma depends on column n of B only, and those columns are never stored.
  const uint32_t* x = static_cast<const uint32_t*>(p.x);
  const uint32_t row_words = p.w.k_padded / 2;
  uint32_t* stage = reinterpret_cast<uint32_t*>(smem_dyn) + warp * (UNROLL * TT * XT);  // this warp's tiles
  auto token_row = [&](int r) { return static_cast<uint32_t>(r < p.m ? r : 0) * row_words; };
  // Chunk c's token rows of each tile -> tile (u, tt), 16 bytes per copy. Rows of tokens >= m are not copied:
  // their lanes read token 0's row (tile 0, row 0) instead.
  auto stage_x = [&](int u, int c) {
#pragma unroll
    for (int tt = 0; tt < TT; ++tt)
#pragma unroll
      for (int q = 0; q < RW / 16; ++q) {  // 2 * RW copies of 16 bytes over 32 lanes
        const int i = lane + 32 * q, row = i / (RW / 4), col = (i % (RW / 4)) * 4;
        if (8 * tt + row < p.m)
          cp_async_16(stage + (u * TT + tt) * XT + row * XROW + col, x + token_row(8 * tt + row) + c * RW + col, true);
      }
  };

  float acc[STRIPES][TT][4] = {};  // C fragments: (row g, token 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
  bool waited = !PDL;
  for (int c0 = warp; c0 < nchunks; c0 += WARPS * UNROLL) {
    __syncwarp();  // the previous pass has read its tiles
    LaneChunk<BITS> w[UNROLL][STRIPES];
    float prm[UNROLL][STRIPES][GPC];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = c0 + u * WARPS;
#pragma unroll
      for (int s = 0; s < STRIPES; ++s) {
        const int stripe = stripe0 + s;
        w[u][s].clear();
#pragma unroll
        for (int gi = 0; gi < GPC; ++gi) prm[u][s][gi] = 0.0f;
        if (c < nchunks && stripe < nstripes) {
          w[u][s].load(wq + stripe * stripe_vecs, c, lane);
#pragma unroll
          for (int gi = 0; gi < GPC; ++gi) {
            const uint32_t grp = static_cast<uint32_t>((c * KC + gi * (KC / GPC)) >> p.w.group_shift);
            if (has_par) prm[u][s][gi] = __ldg(par + grp * gstride + stripe * kStripeRows);
          }
        }
      }
      if constexpr (!PDL) {
        if (c < nchunks) stage_x(u, c);
      }
    }
    if constexpr (PDL) {
      if (!waited) {  // the first pass's weights are in flight (pdl.cuh)
        pdl_wait_then_release();
        waited = true;
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        if (c0 + u * WARPS < nchunks) stage_x(u, c0 + u * WARPS);
      }
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncwarp();  // the other lanes' copies are visible
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = c0 + u * WARPS;
      if (c >= nchunks) break;  // warp-uniform
      const uint32_t* xb[TT];   // word t of token 8 tt + g's row of this chunk
#pragma unroll
      for (int tt = 0; tt < TT; ++tt) {
        const bool real = 8 * tt + g < p.m;
        xb[tt] = stage + (u * TT + (real ? tt : 0)) * XT + (real ? g : 0) * XROW + t;
      }
#pragma unroll
      for (int s = 0; s < STRIPES; ++s) {
        uint32_t wd[4];
        words_of(w[u][s].lo, wd);
        const uint32_t hi[2] = {w[u][s].hi.x, w[u][s].hi.y};  // 3-bit only
#pragma unroll
        for (int gi = 0; gi < GPC; ++gi) {
          const float gp = prm[u][s][gi];
          const float s0 = __shfl_sync(0xffffffffu, gp, quad);
          const float s1 = __shfl_sync(0xffffffffu, gp, quad + 1);
          const float zf[2] = {kCodeOffset<T, BITS> + __shfl_sync(0xffffffffu, gp, quad + 2),
                               kCodeOffset<T, BITS> + __shfl_sync(0xffffffffu, gp, quad + 3)};
          uint32_t zp[2] = {0u, 0u};
          if constexpr (!kViaFloat<T, BITS>) {
            zp[0] = float_to_pair(zf[0], T{});
            zp[1] = float_to_pair(zf[1], T{});
          }
          float d[TT][4] = {};  // this group's sums of (q - z) * x
#pragma unroll
          for (int jj = 0; jj < SPG; ++jj) {
            const int j = gi * SPG + jj;
            uint32_t a[4];
            a_fragment_any<T, BITS>(wd, hi, j, zf, zp, a);
#pragma unroll
            for (int tt = 0; tt < TT; ++tt) {
              mma_16816<T>(d[tt], a, xb[tt][8 * j], xb[tt][8 * j + 4]);
            }
          }
#pragma unroll
          for (int tt = 0; tt < TT; ++tt) {
            acc[s][tt][0] = fmaf(s0, d[tt][0], acc[s][tt][0]);
            acc[s][tt][1] = fmaf(s0, d[tt][1], acc[s][tt][1]);
            acc[s][tt][2] = fmaf(s1, d[tt][2], acc[s][tt][2]);
            acc[s][tt][3] = fmaf(s1, d[tt][3], acc[s][tt][3]);
          }
        }
      }
    }
  }

  if (!waited) pdl_wait_then_release();  // a warp without chunks: y is written after the barriers below
  prefetch_next_layer(p, WARPS * 32);  // all our weight loads have landed

  // Sum the warps' C fragments in shared memory (the staged tiles' space, once every warp is done with them),
  // then bias, activation and the store.
  float(*partial)[STRIPES][TT][32][4] = reinterpret_cast<float(*)[STRIPES][TT][32][4]>(smem_dyn);
  __syncthreads();
#pragma unroll
  for (int s = 0; s < STRIPES; ++s)
#pragma unroll
    for (int tt = 0; tt < TT; ++tt)
#pragma unroll
      for (int r = 0; r < 4; ++r) partial[warp][s][tt][lane][r] = acc[s][tt][r];
  __syncthreads();
  constexpr int kOutputs = STRIPES * TT * 32 * 4;
  for (int e = threadIdx.x; e < kOutputs; e += WARPS * 32) {
    const int r = e % 4, l = (e / 4) % 32, tt = (e / 128) % TT, s = e / (128 * TT);
    const int row = (stripe0 + s) * kStripeRows + l / 4 + 8 * (r / 2);
    const int token = 8 * tt + 2 * (l % 4) + r % 2;
    if (row < p.w.n && token < p.m) {
      float v = bias_at(p.bias, row);
#pragma unroll
      for (int wi = 0; wi < WARPS; ++wi) v += partial[wi][s][tt][l][r];
      store(static_cast<T*>(p.y) + static_cast<size_t>(token) * p.w.n + row, activate(v, p.act));
    }
  }
}

// Launch shapes: 1 = one stripe, 16 warps (few stripes: twice the loads in flight per stripe, as w8_gemv's
// 16-warp blocks); 2 = one stripe, 8 warps; 3 = two stripes, 8 warps (x shared by two; <= 8 tokens, else shape
// 2). Session 15 (W4 g128, 1-8 tokens): shape 1 wins up to 384 stripes (6144 rows: 1.44x vs 1.27-1.38x bf16 at
// 4 tokens), shape 3 above (8192 rows at 8 tokens: 1.38x vs 1.04x). QTOOL_WO_STREAM=1..3 forces one.
int forced_shape() {
  static const int forced = [] {
    const char* env = std::getenv("QTOOL_WO_STREAM");
    return env ? std::atoi(env) & 3 : 0;
  }();
  return forced;
}

int stream_shape(const WoProblem& p) {
  if (const int forced = forced_shape()) return forced;
  return p.w.n_padded / kStripeRows <= 384 ? 1 : 3;
}

template <typename T, int BITS, int GPC, int TT, int STRIPES, int WARPS>
void launch_shape(const WoProblem& p, cudaStream_t stream) {
  constexpr int smem = stream_smem_bytes(BITS, GPC, TT, STRIPES, WARPS);
  auto* kernel = wo_stream_kernel<T, BITS, GPC, TT, STRIPES, WARPS>;
  bool pdl = false;
  if constexpr (TT == 1 && std::is_same_v<T, __nv_bfloat16>) {  // the PDL twin: bf16, <= 8 tokens (the A/B's case)
    if (pdl_level() >= 2) {
      kernel = wo_stream_kernel<T, BITS, GPC, TT, STRIPES, WARPS, true>;
      pdl = true;
    }
  }
  if (smem > (48 << 10))  // a kernel must opt in above 48 KB; cheap, per device, every time
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  const int blocks = (p.w.n_padded / kStripeRows + STRIPES - 1) / STRIPES;
  launch_maybe_pdl(kernel, pdl, dim3(blocks), dim3(WARPS * 32), smem, stream, p);
}

template <typename T, int BITS, int GPC, int TT>
void launch_tiles(const WoProblem& p, cudaStream_t stream) {
  const int shape = stream_shape(p);
  if (shape == 1)
    launch_shape<T, BITS, GPC, TT, 1, 16>(p, stream);
  else if (shape == 2 || TT > 1)  // two stripes at <= 8 tokens only: more tiles spill in their budget
    launch_shape<T, BITS, GPC, TT, 1, 8>(p, stream);
  else
    launch_shape<T, BITS, GPC, 1, 2, 8>(p, stream);
}

template <typename T, int BITS, int GPC>
void launch_groups(const WoProblem& p, cudaStream_t stream) {
  if (p.m <= 8)
    launch_tiles<T, BITS, GPC, 1>(p, stream);
  else if (p.m <= 16)
    launch_tiles<T, BITS, GPC, 2>(p, stream);
  else
    launch_tiles<T, BITS, GPC, 4>(p, stream);
}

template <typename T, int BITS>
void launch_typed(const WoProblem& p, cudaStream_t stream) {
  // Groups per chunk, as wo_gemv: chunk_k is 2^7 (2-, 3-bit), 2^6 (int4) or 2^5 (int8) k, groups >= min_group.
  constexpr int chunk_shift = BITS == 8 ? 5 : BITS == 4 ? 6 : 7;
  const int gpc = p.w.group_shift >= chunk_shift ? 1 : 1 << (chunk_shift - p.w.group_shift);
  if (gpc == 1)
    launch_groups<T, BITS, 1>(p, stream);
  else if (gpc == 2)
    launch_groups<T, BITS, 2>(p, stream);
  else if constexpr (BITS != 8)  // int8 chunks hold at most 2 groups of 16
    launch_groups<T, BITS, 4>(p, stream);
}

}  // namespace

void launch_wo_stream(const WoProblem& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  switch (p.w.num_bits) {
    case 2: bf16 ? launch_typed<__nv_bfloat16, 2>(p, stream) : launch_typed<__half, 2>(p, stream); break;
    case 3: bf16 ? launch_typed<__nv_bfloat16, 3>(p, stream) : launch_typed<__half, 3>(p, stream); break;
    case 4: bf16 ? launch_typed<__nv_bfloat16, 4>(p, stream) : launch_typed<__half, 4>(p, stream); break;
    default: bf16 ? launch_typed<__nv_bfloat16, 8>(p, stream) : launch_typed<__half, 8>(p, stream);
  }
}

}  // namespace qtool
