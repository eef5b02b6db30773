// W4A16 GEMV / skinny GEMM on row-major 4-bit codes, w8_gemv's design at half the bytes (session 18; written
// without a GPU, UNMEASURED: dev/session19.sh w4rows measures it against the dispatcher at 1-16 tokens).
//
// Why: w8_gemv streams 8-bit weights at ~3-3.5 TB/s at 1-16 tokens because each lane reads 16 codes and the 16
// activations of the same k with one 16-byte load each (the k order inside an mma is free), where the wo layout's
// GEMVs stage x (ring GEMV: all of x per 16-row block; variant 3: per warp) and run W4 at 2.2-2.9 TB/s at one
// token and ~1.5 TB/s at 16 (issue 19: W4 at 16 tokens 1.09-2.31x bf16, goal 2.5x).
//
// Layout (kernels/w4_rows.py): rows [n, k / 2] bytes; each 32-bit word holds the codes u = q + 8 of 8 consecutive
// k as nibbles in the order (k0, k2, k4, k6, k1, k3, k5, k7), so (word >> 4i) & 0x000f000f is the pair
// (k_2i, k_2i+1): an A register of mma.m16n8k16 after one LOP3 with the bf16 magic 128 (128 + u, exact), and the
// matching B register is x's own word for those two k, as loaded. Scales (and zero points) [n, k / group] float32,
// groups a multiple of 128 (one group per lane tile).
//
// Work split: a block of 8 warps (16 where the layer has few rows) owns one 16-row stripe; warps take 128-k tiles
// round-robin; lane (g, t) loads 32 codes of rows g and g + 8 at k0 + 32 t (16 bytes each) and token g's 32
// activations of the same k (64 bytes per token tile). A tile's 8 mma steps accumulate q - z into a tile sum,
// scaled per row into the float32 result (the group scale); partial sums meet in shared memory at the end.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "wo_common.cuh"
#include "wo_kernels.h"

namespace qtool {
namespace {

constexpr int kTileK = 128;
constexpr int kWarps = 8;
constexpr int kWideWarps = 16;
constexpr int kWideMaxN = 4096;  // w8_gemv's measured rule: 16-warp blocks where rows are few

template <typename T, int TokenTiles, int Warps, bool Asym>
__global__ void __launch_bounds__(Warps * 32, Warps == kWideWarps ? 2 : 3) w4_gemv_kernel(const W4GemvProblem p) {
  constexpr int kUnroll = TokenTiles > 1 ? 1 : 2;  // tiles in flight per lane: x takes 16 registers per token tile
  __shared__ float partial[Warps][TokenTiles][32][4];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int row0 = blockIdx.x * 16;
  const int tiles = p.k / kTileK;
  const int groups = p.k / p.group_size;
  const int row_bytes = p.k / 2;
  const T* x = static_cast<const T*>(p.x);
  // Symmetric: every row's offset is 128 + 8 (bias and the code offset); asymmetric adds z per row and group.
  const float base = PairTraits<T>::kBase + 8.0f;

  float acc[TokenTiles][4] = {};
  for (int tile0 = warp; tile0 < tiles; tile0 += Warps * kUnroll) {
    uint4 w[kUnroll][2];              // [tile][row g / g + 8]: 32 codes each
    uint4 xv[kUnroll][TokenTiles][4];  // [tile][token tile][k 0..7, 8..15, 16..23, 24..31]
    float sc[kUnroll][2], zo[kUnroll][2];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int tile = tile0 + u * Warps;
      const bool ok = tile < tiles;
      const int k = tile * kTileK + 32 * t;
      const int grp = ok ? tile * kTileK / p.group_size : 0;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + g + 8 * h;  // n % 16 == 0: every row exists
        w[u][h] = ok ? load_streaming(reinterpret_cast<const uint4*>(p.w + static_cast<long long>(row) * row_bytes +
                                                                     k / 2))
                     : make_uint4(0x88888888u, 0x88888888u, 0x88888888u, 0x88888888u);  // q = 0
        sc[u][h] = ok ? __ldg(p.scale + static_cast<long long>(row) * groups + grp) : 0.0f;
        zo[u][h] = base + (Asym && ok ? __ldg(p.zero + static_cast<long long>(row) * groups + grp) : 0.0f);
      }
#pragma unroll
      for (int tt = 0; tt < TokenTiles; ++tt) {
        const int token = tt * 8 + g;
        const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<long long>(token) * p.k + k);
        const bool x_ok = ok && token < p.m;
#pragma unroll
        for (int q = 0; q < 4; ++q) xv[u][tt][q] = x_ok ? __ldg(src + q) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint32_t zp[2] = {float_to_pair(zo[u][0], T{}), float_to_pair(zo[u][1], T{})};
      float d[TokenTiles][4] = {};
#pragma unroll
      for (int wi = 0; wi < 4; ++wi) {  // word wi: k 8 wi .. 8 wi + 7 of this lane's 32
        const uint32_t lo = (&w[u][0].x)[wi], hi = (&w[u][1].x)[wi];
#pragma unroll
        for (int step = 0; step < 2; ++step) {  // pairs (2 step, 2 step + 1) of the word: k +4 step .. +4 step + 3
          uint32_t a[4];  // int4_pair_biased: pair p of a word, (k_2p, k_2p+1) as 128 + u, one LOP3
          a[0] = sub_pair(int4_pair_biased<T>(lo, 2 * step), zp[0], T{});      // row g, logical k 2t, 2t + 1
          a[1] = sub_pair(int4_pair_biased<T>(hi, 2 * step), zp[1], T{});      // row g + 8
          a[2] = sub_pair(int4_pair_biased<T>(lo, 2 * step + 1), zp[0], T{});  // row g, logical k 2t + 8, 2t + 9
          a[3] = sub_pair(int4_pair_biased<T>(hi, 2 * step + 1), zp[1], T{});
#pragma unroll
          for (int tt = 0; tt < TokenTiles; ++tt) {
            const uint32_t* xw = &xv[u][tt][0].x;  // 16 words = 32 activations; word i = k 2i, 2i + 1
            mma_16816<T>(d[tt], a, xw[4 * wi + 2 * step], xw[4 * wi + 2 * step + 1]);
          }
        }
      }
#pragma unroll
      for (int tt = 0; tt < TokenTiles; ++tt) {  // the group scale per row: (g, g, g + 8, g + 8)
        acc[tt][0] = fmaf(sc[u][0], d[tt][0], acc[tt][0]);
        acc[tt][1] = fmaf(sc[u][0], d[tt][1], acc[tt][1]);
        acc[tt][2] = fmaf(sc[u][1], d[tt][2], acc[tt][2]);
        acc[tt][3] = fmaf(sc[u][1], d[tt][3], acc[tt][3]);
      }
    }
  }

#pragma unroll
  for (int tt = 0; tt < TokenTiles; ++tt)
#pragma unroll
    for (int r = 0; r < 4; ++r) partial[warp][tt][lane][r] = acc[tt][r];
  __syncthreads();
  constexpr int kOutputs = TokenTiles * 32 * 4;
  for (int e = threadIdx.x; e < kOutputs; e += Warps * 32) {
    const int r = e % 4, l = (e / 4) % 32, tt = e / 128;
    float sum = 0.0f;
#pragma unroll
    for (int wi = 0; wi < Warps; ++wi) sum += partial[wi][tt][l][r];
    const int row = row0 + l / 4 + 8 * (r / 2);
    const int token = tt * 8 + 2 * (l % 4) + (r % 2);
    if (token < p.m) {
      store(static_cast<T*>(p.y) + static_cast<long long>(token) * p.n + row, sum + bias_at(p.bias, row));
    }
  }
}

template <typename T, int TokenTiles, bool Asym>
void launch_tiles(const W4GemvProblem& p, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(p.n / 16);
  if (p.n <= kWideMaxN)
    w4_gemv_kernel<T, TokenTiles, kWideWarps, Asym><<<blocks, kWideWarps * 32, 0, stream>>>(p);
  else
    w4_gemv_kernel<T, TokenTiles, kWarps, Asym><<<blocks, kWarps * 32, 0, stream>>>(p);
}

template <typename T, bool Asym>
void launch_typed(const W4GemvProblem& p, cudaStream_t stream) {
  p.m <= 8 ? launch_tiles<T, 1, Asym>(p, stream) : launch_tiles<T, 2, Asym>(p, stream);
}

}  // namespace

void launch_w4_gemv(const W4GemvProblem& p, cudaStream_t stream) {
  if (p.m == 0 || p.n == 0) return;
  const bool asym = p.zero != nullptr;
  if (p.dtype == ScalarKind::kBFloat16)
    asym ? launch_typed<__nv_bfloat16, true>(p, stream) : launch_typed<__nv_bfloat16, false>(p, stream);
  else
    asym ? launch_typed<__half, true>(p, stream) : launch_typed<__half, false>(p, stream);
}

}  // namespace qtool
