// GEMV/skinny GEMM for 8-bit weights (int8, FP8 E4M3/E5M2) stored row-major [n, k], with 16-bit
// activations, for m <= 32 tokens (16 by default, up to 32 where measured faster): the W8A8 layers' path at decode
// sizes, where the weight bytes set the time and quantizing the activations would only add a launch (issue 18).
//
// Work split. A block of 8 warps (16 for per-channel weights of <= 4096 rows) owns one or two "stripes" of 16
// weight rows (the M of mma.m16n8k16); its warps split k into 64-wide tiles taken round-robin, so together they
// stream 8 x 64 contiguous codes of every row at a time. Partial sums meet in shared memory at the end.
//
// Fragments without shuffles. Lane (g = lane / 4, t = lane % 4) loads 16 codes of rows g and g + 8 at
// k0 + 16 t and the 16 activations of token g at the same k. Because a dot product may visit k in any
// order, step j (0..3) of the tile feeds mma with the lane's codes 4j..4j+3 in the places the PTX ISA
// gives to logical k {2t, 2t+1, 2t+8, 2t+9}, and the activations of the same physical k in B: every
// operand arrives in registers straight from a 16-byte load. The codes convert exactly to fp16/bf16
// (int8 and both FP8 formats fit), the tensor cores accumulate in float32, and the scale is applied once
// per row (per channel) or once per 64-k tile and row block (block scales).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdlib>
#include <type_traits>

#include "pdl.cuh"
#include "w8a8.h"
#include "w8_decode.cuh"
#include "wo_common.cuh"
#include "wo_decode.cuh"

namespace qtool {
namespace {

constexpr int kTileK = 64;
// Tiles in flight per warp: 4 x kStripes x 2 rows x 16 bytes per lane; 2 with four token tiles (17-32 tokens),
// whose activations take 32 registers per tile.
// TwoTiles: 2 in flight for the folded variant at 9-16 tokens (64 registers; four spill 172 bytes even in 80).
template <int TokenTiles, bool TwoTiles = false>
__host__ __device__ constexpr int unroll_tiles() {
  return TokenTiles > 2 || TwoTiles ? 2 : 4;
}
// Warps per block. The kernel needs 52-128 registers, so up to four 8-warp blocks share an SM; a weight of at
// most kWideMaxN rows has too few 16-row blocks for that (4096 rows: 256 blocks, < 2 per SM on 132 SMs), and
// there each block takes 16 warps instead, twice the loads in flight per stripe. Session 13 tried the other cure,
// a ring of loads refilled after each tile's math: it needs 105-158 registers (two blocks per SM) and lost 10-25%
// everywhere except at 4096 rows (+9%): occupancy, not a pipeline, keeps these loads in flight.
constexpr int kWarps = 8;
constexpr int kWideWarps = 16;
constexpr int kWideMaxN = 4096;
// 16-row stripes per block: two share the activation loads, one gives twice the blocks (n < this).
constexpr int kTwoStripesMinN = 16384;

// Measurement switch (QTOOL_W8_GEMV, a bitmask read once; 0 or unset in normal use), so that one build times a
// change against the kernel without it (dev/gemv_probe.py):
//   2: no 16-warp blocks (session 13 measured them: 4096 x 4096 1.23x -> 1.62x bf16, 14336 x 4096 1.08x -> 1.50x
//      at one token; no change elsewhere).
//  16: 16-warp blocks up to 8192 rows instead of kWideMaxN (session 14's decode profile: q/k/v of 6144 rows, 384
//      8-warp blocks, streamed 2.5 TB/s where gate/up reached 3.5). Lost in session 15 (H200, 1-16 tokens: int8
//      4096 x 6144 1.49x -> 1.38x at one token, fp8 8192 x 8192 1.62x -> 1.56x).
//  64: block scales (fp8-block) at 9-16 tokens on the lean variant at every k, not only k <= kLeanBlockedMaxK.
// 128: block scales for FP8 codes and bf16 activations as before session 28 (kBlockAcc / the lean variant), not
//      folded into the decode (kBlockFold).
// 256: folded block scales at 1-8 tokens on 8-warp blocks always in 80 registers, three blocks per SM, as before
//      session 57 (fold_blocks_per_sm).
// Session 14's A/B made two former switches the defaults ("lean" register budgets where they cost no spills) and
// withdrew a third (one stripe at every n: -5-17% at <= 8 tokens on 28672 rows): kernels/NOTES.md "Session 14".
// Session 30 withdrew two more, more warps per SM with fewer tiles in flight each (kernels/NOTES.md "Session 30"):
// per-channel weights at 9-16 tokens in 48 registers (five blocks per SM) lost up to 15% on 8 of 8 shapes, the
// two-stripe kernels at 1-8 tokens in 80 registers (three blocks) lost 5-14% on the 28672-row layers.
// The lean block-scaled variant applies each tile's block scale to bf16 activations (x * scale in float32,
// rounded to bf16 once: an error random per element) instead of keeping a second accumulator per tile: what fits
// it in 80 registers (three blocks per SM; 98 without), +5-18% at <= 8 tokens.
// Block scales at 9-16 tokens run the lean variant (x scaled by each tile's block scale, as at 1-8 tokens: 80
// registers and three blocks per SM where the other takes 127 and two) up to this k. Session 22 (H200, graph replay,
// `dev/gemv_probe.py --switches 0,64`): at k = 4096 it won or tied on every shape (4096 x 6144 at 16 tokens 0.95x ->
// 1.14x bf16, 4096 x 14336 and 4096 x 28672 1.01-1.04x -> 1.06-1.07x), at k >= 8192 it lost on most (14336 x 4096
// 1.14x -> 1.05x, 28672 x 8192 1.10x -> 1.05x).
constexpr int kLeanBlockedMaxK = 4096;

int w8_gemv_switches() {
  static const int switches = [] {
    const char* env = std::getenv("QTOOL_W8_GEMV");
    return env ? std::atoi(env) : 0;
  }();
  return switches;
}

template <int S, int TT>
__device__ inline void scale_sums(float (&acc)[S][TT][4], float by) {
#pragma unroll
  for (int s = 0; s < S; ++s)
#pragma unroll
    for (int tt = 0; tt < TT; ++tt)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[s][tt][r] *= by;
}

// How the weight scales apply. kChannel: once per row at the end. kBlockAcc: per 64-k tile, to a second
// accumulator (or, Lean with bf16, to the tile's activations). kBlockFold (session 28): a 128 x 128 block's scale
// is one number for the warp's whole tile (its 16 rows and 64 k), so for FP8 codes and bf16 it joins the constant
// the decode already multiplies by (fp8_pair_bf16: 2^120 * scale, rounded to bf16 once per tile): no per-tile
// work beyond that, and the per-channel kernel's registers and launch shapes. The weight then enters the mma as
// bf16(code * bf16(scale)): the scale's rounding (2^-9 relative, one per block) is ~30x below E4M3's own.
// kBlockFoldGated: kBlockFold for the gated variant (a gate stripe and its up stripe in other row blocks, a scale
// each), its own instantiation so that the two-stripe kernel of large layers keeps its registers.
enum Scales : int { kChannel = 0, kBlockAcc = 1, kBlockFold = 2, kBlockFoldGated = 3 };

template <int TokenTiles, int Sc, int kStripes, int Warps, bool Lean, int Budget>
__host__ __device__ constexpr int min_blocks() {  // __launch_bounds__'s blocks per SM (lean budgets); 0: unset
  if (Budget) return Budget;  // a launch's own (fold_blocks_per_sm)
  if (Sc == kBlockFoldGated) return 2;  // 128 registers (160 unbounded; 20-26 bytes of spill)
  if (!Lean || kStripes != 1) return 0;
  if (Sc == kBlockFold)  // 64 / 85 registers; at two token tiles 64 (two tiles in flight, unroll_tiles)
    return TokenTiles == 1 ? (Warps == kWideWarps ? 2 : 3) : (Warps == kWideWarps ? 2 : 4);
  if (Warps == kWideWarps) return Sc == kChannel && TokenTiles == 2 ? 2 : 0;  // 64 registers
  return Sc == kBlockAcc ? (TokenTiles <= 2 ? 3 : 0) : (TokenTiles == 2 ? 4 : 0);
}

// Pdl (launched where the caller asks, p.pdl, or on every call with QTOOL_PDL=2): the first tiles' weight loads go
// out before griddepcontrol.wait and their x loads after it (pdl.cuh); the loop is otherwise the same. Session 18's first try, L2 prefetches of those
// tiles before the wait, made the kernel 5-30% slower even without PDL.
template <typename T, CodeFormat F, int TokenTiles, int Sc, int kStripes, int Warps, bool Lean = false,
          bool Pdl = false, int Budget = 0>
__global__ void __launch_bounds__(Warps * 32, (min_blocks<TokenTiles, Sc, kStripes, Warps, Lean, Budget>()))
    w8_gemv(W8GemvProblem p) {
  constexpr bool Blocked = Sc != kChannel, kFold = Sc == kBlockFold || Sc == kBlockFoldGated;
  constexpr int kScaleStripes = Sc == kBlockFoldGated ? kStripes : 1;  // restores per tile
  static_assert(!kFold || kFoldsScale<T, F>);
  static_assert(Sc != kBlockFoldGated || (kStripes == 2 && TokenTiles == 1));
  constexpr bool Pairs02 = kPairs02<T, F>;
  constexpr int kRowsPerBlock = 16 * kStripes;
  constexpr int kUnroll = unroll_tiles<TokenTiles, Sc == kBlockFold && TokenTiles == 2 && Lean>();
  __shared__ float partial[Warps][kStripes][TokenTiles][32][4];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  // Stripe s's first row: stripes adjacent, or (swiglu, the one variant that takes it) the gate stripe and its up
  // stripe n / 2 further. Every other variant compiles to the constant 16, as before. Block scales gate only when
  // folded (the up stripe lies in another row block: each stripe has its own scale per tile).
  constexpr bool kMayGate = kStripes == 2 && TokenTiles == 1 && (Sc == kChannel || Sc == kBlockFoldGated);
  const bool gated = kMayGate && p.swiglu;
  const int row0 = blockIdx.x * (gated ? 16 : kRowsPerBlock);
  const int stripe_step = gated ? p.n / 2 : 16;
  const int tiles = (p.k + kTileK - 1) / kTileK;
  const T* x = static_cast<const T*>(p.x);

  float acc[kStripes][TokenTiles][4] = {};
  bool waited = !Pdl;
  // The row block's scales; kFold: lane s * kUnroll + u loads stripe s's scale of tile u with the weights, shuffled
  // out at its math (stripes share a row block but for the gated variant's up stripe).
  const long long kblocks = Blocked ? (p.k + p.block_k - 1) / p.block_k : 0;
  const float* scale_row = p.scale + (Blocked ? row0 / p.block_n * kblocks : 0);
  const float* lane_scale_row =
      kFold ? p.scale + (row0 + stripe_step * (lane / kUnroll % kScaleStripes)) / p.block_n * kblocks : nullptr;
  // kFold: the k block of this lane's tile is its index shifted right, block_k / kTileK a power of two (the
  // launcher's condition; a signed division here cost ~12 instructions per group of tiles and, incrementally
  // kept, spilled the 16-warp launch). Tiles past the end read the last block, as the tile they clamp to would.
  const int block_shift = kFold ? __ffs(p.block_k / kTileK) - 1 : 0;
  for (int tile0 = warp; tile0 < tiles; tile0 += Warps * kUnroll) {
    uint4 w[kUnroll][kStripes][2];           // [tile][stripe][row g / g + 8]
    uint4 xv[kUnroll][TokenTiles][2];        // [tile][token tile][k 0..7 / 8..15]
    float lane_scale = 0.0f;
    if constexpr (kFold)
      lane_scale = __ldg(lane_scale_row + min((tile0 + lane % kUnroll * Warps) >> block_shift,
                                              static_cast<int>(kblocks) - 1));
    auto load_x = [&](int u) {  // tile u's activations, token tiles 0..TokenTiles-1
      const int k = (tile0 + u * Warps) * kTileK + 16 * t;
      const bool k_ok = tile0 + u * Warps < tiles && k < p.k;
#pragma unroll
      for (int tt = 0; tt < TokenTiles; ++tt) {
        const int token = tt * 8 + g;
        const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<long long>(token) * p.k + k);
        const bool ok = k_ok && token < p.m;
        xv[u][tt][0] = ok ? __ldg(src) : make_uint4(0, 0, 0, 0);
        xv[u][tt][1] = ok ? __ldg(src + 1) : make_uint4(0, 0, 0, 0);
      }
    };
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = (tile0 + u * Warps) * kTileK + 16 * t;
      const bool k_ok = tile0 + u * Warps < tiles && k < p.k;  // k % 16 == 0: a load is all in or out
#pragma unroll
      for (int s = 0; s < kStripes; ++s) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = row0 + stripe_step * s + g + 8 * h;
          w[u][s][h] = k_ok && row < p.n
                           ? load_streaming(reinterpret_cast<const uint4*>(p.w + static_cast<long long>(row) * p.k + k))
                           : make_uint4(0, 0, 0, 0);
        }
      }
      if constexpr (!Pdl) load_x(u);
    }
    if constexpr (Pdl) {
      if (!waited) {  // the first tiles' weights are in flight
        pdl_wait_then_release();
        waited = true;
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) load_x(u);
    }
    // kFold: 2^120 * scale overflows bf16 from scale = 2^6 (E4M3 weights past ~2^14, never seen in a model): then
    // every tile of this group runs 2^64 smaller and the sums around the group are scaled by 2^-64 and back, exact
    // powers of two (scales up to 2^71 stay exact). One vote per group of kUnroll tiles: every lane holds the
    // scale of one of the group's tiles and stripes, so the detour is warp-uniform and costs the common case one
    // compare, where a test per tile had ptxas predicate both rescalings into every tile (8 FMUL per tile).
    bool huge = false;
    if constexpr (kFold) {
      huge = __any_sync(~0u, !(lane_scale < 0x1p126f / kRestoreF<F>));  // 2^120 * sc overflows float32 from 2^8
      if (huge) scale_sums(acc, 0x1p-64f);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      constexpr bool kScaleX = Sc == kBlockAcc && Lean && std::is_same_v<T, __nv_bfloat16>;
      float tile_acc[kStripes][TokenTiles][4] = {};
      float(&dst)[kStripes][TokenTiles][4] = Sc == kBlockAcc && !kScaleX ? tile_acc : acc;
      uint32_t restore[kScaleStripes];  // the decode's multiplier (kFold: times the tile's block scale)
#pragma unroll
      for (int s = 0; s < kScaleStripes; ++s) restore[s] = kFoldsScale<T, F> ? kRestore<F> : 0u;
      if constexpr (kFold) {
#pragma unroll
        for (int s = 0; s < kScaleStripes; ++s) {
          const float folded = __shfl_sync(~0u, lane_scale, s * kUnroll + u) *
                               (huge ? kRestoreF<F> * 0x1p-64f : kRestoreF<F>);
          restore[s] = as_u32(__floats2bfloat162_rn(folded, folded));
        }
      }
      if constexpr (kScaleX) {
        const float sc = __ldg(scale_row + min(tile0 + u * Warps, tiles - 1) * kTileK / p.block_k);
#pragma unroll
        for (int tt = 0; tt < TokenTiles; ++tt)
#pragma unroll
          for (int i = 0; i < 8; ++i) {  // x * scale in float32, rounded once (a bf16 scale would bias the block)
            uint32_t& word = (&xv[u][tt][0].x)[i];
            const float2 v = pair_to_float2(word, T{});
            word = float2_to_pair(v.x * sc, v.y * sc, T{});
          }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t b[TokenTiles][2];  // x's words 2j, 2j + 1 = k +0,+1 and +2,+3 (Pairs02: +0,+2 and +1,+3)
#pragma unroll
        for (int tt = 0; tt < TokenTiles; ++tt) {
          const uint32_t* xw = &xv[u][tt][0].x;  // 8 words = 16 activations; word i = k 2i, 2i + 1
          b[tt][0] = Pairs02 ? __byte_perm(xw[2 * j], xw[2 * j + 1], 0x5410) : xw[2 * j];
          b[tt][1] = Pairs02 ? __byte_perm(xw[2 * j], xw[2 * j + 1], 0x7632) : xw[2 * j + 1];
        }
#pragma unroll
        for (int s = 0; s < kStripes; ++s) {
          const uint32_t lo_word = (&w[u][s][0].x)[j], hi_word = (&w[u][s][1].x)[j];
          uint32_t a[4];
          if constexpr (kFoldsScale<T, F>) {
            decode4<T, F>(lo_word, a[0], a[2], restore[kScaleStripes > 1 ? s : 0]);  // row g: k +0,+1 and +2,+3
            decode4<T, F>(hi_word, a[1], a[3], restore[kScaleStripes > 1 ? s : 0]);  // row g + 8
          } else {
            decode4<T, F>(lo_word, a[0], a[2]);
            decode4<T, F>(hi_word, a[1], a[3]);
          }
#pragma unroll
          for (int tt = 0; tt < TokenTiles; ++tt) mma_16816<T>(dst[s][tt], a, b[tt][0], b[tt][1]);
        }
      }
      if constexpr (Sc == kBlockAcc && !kScaleX) {
        const int tile = tile0 + u * Warps;
        if (tile < tiles) {
          const float sc = __ldg(scale_row + tile * kTileK / p.block_k);
#pragma unroll
          for (int s = 0; s < kStripes; ++s)
#pragma unroll
            for (int tt = 0; tt < TokenTiles; ++tt)
#pragma unroll
              for (int r = 0; r < 4; ++r) acc[s][tt][r] += tile_acc[s][tt][r] * sc;
        }
      }
    }
    if (huge) scale_sums(acc, 0x1p64f);
  }

  if (!waited) pdl_wait_then_release();  // a warp without tiles (y is written after the barrier below)
#pragma unroll
  for (int s = 0; s < kStripes; ++s)
#pragma unroll
    for (int tt = 0; tt < TokenTiles; ++tt)
#pragma unroll
      for (int r = 0; r < 4; ++r) partial[warp][s][tt][lane][r] = acc[s][tt][r];
  __syncthreads();
  prefetch_slice(p.prefetch, p.prefetch_bytes, Warps * 32);  // every warp of the block has its weights

  if constexpr (kMayGate) {
    if (gated) {  // gate stripe 0, up stripe 1: the same lane and element of each hold matching rows
      for (int e = threadIdx.x; e < TokenTiles * 32 * 4; e += Warps * 32) {
        const int r = e % 4, l = (e / 4) % 32, tt = e / 128;
        float gate = 0.0f, up = 0.0f;
#pragma unroll
        for (int wi = 0; wi < Warps; ++wi) {
          gate += partial[wi][0][tt][l][r];
          up += partial[wi][1][tt][l][r];
        }
        const int row = row0 + l / 4 + 8 * (r / 2), half = p.n / 2;
        const int token = tt * 8 + 2 * (l % 4) + (r % 2);
        if (row < half && token < p.m) {
          if constexpr (!Blocked) {  // folded block scales are in the sums already
            gate *= __ldg(p.scale + row);
            up *= __ldg(p.scale + row + half);
          }
          gate += bias_at(p.bias, row);
          up += bias_at(p.bias, row + half);
          store(static_cast<T*>(p.y) + static_cast<long long>(token) * half + row, activate(gate, Activation::kSilu) * up);
        }
      }
      return;
    }
  }
  constexpr int kOutputs = kStripes * TokenTiles * 32 * 4;
  for (int e = threadIdx.x; e < kOutputs; e += Warps * 32) {
    const int r = e % 4, l = (e / 4) % 32, tt = (e / 128) % TokenTiles, s = e / (128 * TokenTiles);
    float sum = 0.0f;
#pragma unroll
    for (int wi = 0; wi < Warps; ++wi) sum += partial[wi][s][tt][l][r];
    const int row = row0 + 16 * s + l / 4 + 8 * (r / 2);
    const int token = tt * 8 + 2 * (l % 4) + (r % 2);
    if (row < p.n && token < p.m) {
      const float v = (Blocked ? sum : sum * __ldg(p.scale + row)) + bias_at(p.bias, row);
      store(static_cast<T*>(p.y) + static_cast<long long>(token) * p.n + row, v);
    }
  }
}

// One variant's launch; its Pdl twin (bf16, up to 16 tokens: the A/B's cases, so that the build does not grow by
// more), launched with programmatic serialization, where the caller asks for it (p.pdl: static weights, and the
// shapes where session 19 measured it faster, scaled_mm.W8_GEMV_PDL) or QTOOL_PDL=2 (every call: the A/B).
template <typename T, CodeFormat F, int TokenTiles, int Sc, int Stripes, int Warps, bool Lean, int Budget = 0>
void launch_one(const W8GemvProblem& p, unsigned blocks, cudaStream_t stream) {
  if constexpr (TokenTiles <= 2 && std::is_same_v<T, __nv_bfloat16>) {
    if (pdl_level() >= 2 || (p.pdl && pdl_enabled())) {
      return launch_maybe_pdl(w8_gemv<T, F, TokenTiles, Sc, Stripes, Warps, Lean, true, Budget>, true,
                              dim3(blocks), dim3(Warps * 32), 0, stream, p);
    }
  }
  w8_gemv<T, F, TokenTiles, Sc, Stripes, Warps, Lean, false, Budget><<<blocks, Warps * 32, 0, stream>>>(p);
}

// Folded block scales at 1-8 tokens on 8-warp blocks: 80 registers and three blocks per SM, or 64 and four where
// only four put every block in one wave (8192 rows: 512 blocks, 396 slots at three on 132 SMs, 528 at four).
// Session 57 (H100, dev/gemv_probe.py, raw w8_gemv): 8192 x 8192 1.51-1.56x -> 1.77-1.78x bf16, 28672 x 8192
// 1.52-1.54x -> 1.93-1.94x at 1-8 tokens; where three already fit one wave (4096 x 6144) four lost 5%, and where
// neither does (4096 x 14336) 1-4%. The PDL twin keeps three: it spills 58 bytes in 64 registers.
int fold_blocks_per_sm(const W8GemvProblem& p, unsigned blocks, int switches) {
  int device = 0, sms = 0;
  if ((switches & 256) || p.pdl || cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return 3;
  return blocks > 3u * sms && blocks <= 4u * sms ? 4 : 3;
}

// The per-channel launch shapes, which the folded block scales share (the same registers).
template <typename T, CodeFormat F, int TokenTiles, int Stripes, int Sc>
void launch_channel_shapes(const W8GemvProblem& p, unsigned blocks, int switches, int wide_max_n,
                           cudaStream_t stream) {
  const bool wide = p.n <= wide_max_n && !(switches & 2);
  if constexpr (Stripes == 1 && TokenTiles == 1) {
    // 16 warps: m <= 8 only; the other variants take 74-128 registers, and a 16-warp block of them would hold an
    // SM alone (two waves of 256 blocks)
    constexpr bool kLean = Sc == kBlockFold;  // bounded: 2 or 3 blocks per SM (80 registers unbounded)
    if (wide) return launch_one<T, F, 1, Sc, 1, kWideWarps, kLean>(p, blocks, stream);
    if constexpr (Sc == kBlockFold) {
      if (fold_blocks_per_sm(p, blocks, switches) == 4)
        return launch_one<T, F, 1, Sc, 1, kWarps, kLean, 4>(p, blocks, stream);
    }
    return launch_one<T, F, 1, Sc, 1, kWarps, kLean>(p, blocks, stream);
  }
  else if constexpr (Stripes == 1 && TokenTiles == 2) {  // 64 registers: 9-16 tokens 1.1-1.4x -> 1.4-1.65x bf16
    // Folded scales too (two tiles in flight per warp, unroll_tiles). Session 29 (H200, raw w8_gemv at 9-16 tokens,
    // one build): against 128 registers with four tiles in flight, +1-23% on every shape (4096 x 4096 at 16 tokens
    // 1.27x -> 1.50x bf16, 14336 x 4096 1.18x -> 1.36x, 4096 x 6144 1.14x -> 1.27x, 8192 x 8192 1.21x -> 1.25x).
    constexpr bool kLean = Sc == kChannel || Sc == kBlockFold;
    if (wide)  // 16 warps: two blocks per SM, as at m <= 8
      launch_one<T, F, 2, Sc, 1, kWideWarps, kLean>(p, blocks, stream);
    else
      launch_one<T, F, 2, Sc, 1, kWarps, kLean>(p, blocks, stream);
  } else {
    launch_one<T, F, TokenTiles, Sc, Stripes, kWarps, false>(p, blocks, stream);
  }
}

// The folded kernels find a tile's k block by a shift: block_k / kTileK a power of two (128: 2 tiles).
bool folds_blocks(const W8GemvProblem& p) {
  const int tiles_per_block = p.block_k / kTileK;
  return tiles_per_block > 0 && (tiles_per_block & (tiles_per_block - 1)) == 0;
}

template <typename T, CodeFormat F, int TokenTiles, int Stripes>
void launch_stripes(const W8GemvProblem& p, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((p.n + 16 * Stripes - 1) / (16 * Stripes));
  const int switches = w8_gemv_switches();
  const int wide_max_n = switches & 16 ? 8192 : kWideMaxN;
  if (p.block_n == 0)
    return launch_channel_shapes<T, F, TokenTiles, Stripes, kChannel>(p, blocks, switches, wide_max_n, stream);
  if constexpr (kFoldsScale<T, F>) {
    // 9-16 tokens: folded in 64 registers on every shape (session 29: it beat the lean variant, x scaled per tile,
    // where that one had beaten session 28's 128-register fold: 4096 x 6144 at 16 tokens 1.14x -> 1.27x bf16).
    if (!(switches & 128) && folds_blocks(p))
      return launch_channel_shapes<T, F, TokenTiles, Stripes, kBlockFold>(p, blocks, switches, wide_max_n, stream);
  }
  if constexpr (Stripes == 1) {
    if (TokenTiles == 1) return launch_one<T, F, 1, kBlockAcc, 1, kWarps, true>(p, blocks, stream);  // 80 registers
    if constexpr (TokenTiles == 2 && std::is_same_v<T, __nv_bfloat16>) {
      // the same at 9-16 tokens where k <= kLeanBlockedMaxK (80 registers; e4m3, e5m2: no spills)
      if (p.k <= kLeanBlockedMaxK || (switches & 64))
        return launch_one<T, F, 2, kBlockAcc, 1, kWarps, true>(p, blocks, stream);
    }
  }
  launch_one<T, F, TokenTiles, kBlockAcc, Stripes, kWarps, false>(p, blocks, stream);
}

template <typename T, CodeFormat F, int TokenTiles>
void launch_tiles(const W8GemvProblem& p, cudaStream_t stream) {
  // two stripes: fewer, fuller blocks where rows are many; at 9-16 tokens one lean stripe measured faster
  if (p.n >= kTwoStripesMinN && TokenTiles != 2)
    launch_stripes<T, F, TokenTiles, 2>(p, stream);
  else
    launch_stripes<T, F, TokenTiles, 1>(p, stream);
}

template <typename T, CodeFormat F>
void launch_format(const W8GemvProblem& p, cudaStream_t stream) {
  if (p.swiglu) {  // m <= 8 (ops_w8a8.cpp): the two-stripe kernel, a gate stripe and its up stripe
    const unsigned blocks = static_cast<unsigned>((p.n / 2 + 15) / 16);
    if constexpr (kFoldsScale<T, F>) {
      if (p.block_n > 0) {
        return launch_one<T, F, 1, kBlockFoldGated, 2, kWarps, false>(p, blocks, stream);
      }
    }
    launch_one<T, F, 1, kChannel, 2, kWarps, false>(p, blocks, stream);  // blocks here: refused by ops_w8a8.cpp
    return;
  }
  if (p.m <= 8)
    launch_tiles<T, F, 1>(p, stream);
  else if (p.m <= 16)
    launch_tiles<T, F, 2>(p, stream);
  else  // 17-32 tokens: only where kernels/tuning.py measured it faster (dispatch rule: m <= 16)
    launch_tiles<T, F, 4>(p, stream);
}

template <typename T>
void launch_typed(const W8GemvProblem& p, cudaStream_t stream) {
  switch (p.format) {
    case CodeFormat::kInt8: launch_format<T, CodeFormat::kInt8>(p, stream); break;
    case CodeFormat::kE4M3: launch_format<T, CodeFormat::kE4M3>(p, stream); break;
    default: launch_format<T, CodeFormat::kE5M2>(p, stream); break;
  }
}

}  // namespace

void launch_w8_gemv(const W8GemvProblem& p, cudaStream_t stream) {
  if (p.m == 0 || p.n == 0) return;
  if (p.dtype == ScalarKind::kBFloat16)
    launch_typed<__nv_bfloat16>(p, stream);
  else
    launch_typed<__half>(p, stream);
}

}  // namespace qtool
