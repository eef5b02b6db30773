// x staged in shared memory for the GEMVs that share a block's activations (wo_gemv.cu's ring GEMV),
// and the sum of one group's subtiles against it.
#pragma once

#include <cstdint>

#include "wo_common.cuh"

namespace qtool {

// v4: the block stages all m tokens of x in shared memory (stage_x_fragment_order, right after the
// first weight ring is issued), when that takes at most this many bytes; above it the v2 path reads x from
// global memory per subtile. ncu on the H100 (v2) showed why: x loads issued after the weights
// arrived stalled each warp once per chunk on an L2 round trip (L1 hit rate 18-31%, 0.2-0.8
// eligible warps per scheduler, DRAM at 7-53% of peak), so the kernel was latency-bound on x; on the H200
// (session 27, `dev/gemv_xs_ab.py`) the L1 path ran 4096 x 28672 at one token at 2.08x bf16 against 2.56x staged.
// Rows are padded by 4 words: token g's row then starts in bank 4g, and the 16-byte B loads of a
// quarter warp (two token rows, lanes t = 0..3) fall in distinct banks.
constexpr int kXsPadWords = 4;

__host__ __device__ constexpr int xs_row_words(int k_padded) { return k_padded / 2 + kXsPadWords; }

// x staged in fragment order (session 27): word q = 8j + t + 4h of a chunk's x row (subtile j, B register h of lane t) is
// stored at t * 2 * SUB + 2j + h, so lane t finds its B registers for the whole chunk in 2 * SUB consecutive words
// and reads them with SUB / 2 16-byte loads instead of 2 * SUB 4-byte ones. A 16-byte vector of x (words 4a ..
// 4a + 3 of its chunk) then lands at a, a + 2 * SUB, a + 4 * SUB, a + 6 * SUB.
// The m rows go through registers: R 16-byte loads per thread in flight, then their words stored (a 4-byte cp.async
// per word would take four copies per vector). Rows keep xs_row_words' padding, so the B loads of 8 token rows
// stay conflict-free.
template <int SUB, int WARPS>  // 16x16 subtiles per chunk; warps per block
__device__ inline void stage_x_fragment_order(const WoProblem& p,  // x: [m, k_padded], rows contiguous
                                              uint4* xs) {         // out: m * xs_row_words(k_padded) words
  constexpr unsigned CV = 2 * SUB, R = 4, THREADS = WARPS * 32;  // 16-byte vectors per chunk; loads in flight
  const unsigned vecs = p.w.k_padded / 8, total = p.m * vecs, row_words = xs_row_words(p.w.k_padded);
  const uint4* xg = opaque(static_cast<const uint4*>(p.x));
  uint32_t* words = reinterpret_cast<uint32_t*>(xs);
  for (unsigned i0 = threadIdx.x; i0 < total; i0 += R * THREADS) {
    uint4 val[R];
#pragma unroll
    for (unsigned r = 0; r < R; ++r) {
      if (i0 + r * THREADS < total) val[r] = __ldg(xg + i0 + r * THREADS);
    }
#pragma unroll
    for (unsigned r = 0; r < R; ++r) {
      const unsigned i = i0 + r * THREADS;
      if (i < total) {
        unsigned tok = 0;  // i / vecs for m <= 8 tokens, without a division
#pragma unroll 1
        for (int j = 1; j < p.m; ++j) tok += i >= j * vecs;
        const unsigned v = i - tok * vecs;
        uint32_t* dst = words + tok * row_words + 4 * CV * (v / CV) + v % CV;
        dst[0] = val[r].x;
        dst[2 * SUB] = val[r].y;
        dst[4 * SUB] = val[r].z;
        dst[6 * SUB] = val[r].w;
      }
    }
  }
}

// d += sum over the group's SPG subtiles (j = gi * SPG ..) of (q - z) * x: A fragments from the lane's codes (w, and
// hi for 3-bit), B from x staged in fragment order at xc (the chunk's words of this lane's token row, offset by
// t * 2 * SUB). One 16-byte load per two subtiles, made where it is used (fewer live registers); bv carries it to
// the odd subtile, which may belong to the next group (SPG = 1).
template <typename T, int BITS, int SPG>
__device__ inline void staged_group_sum(const uint32_t (&w)[4],   // the lane's 16 bytes of codes
                                        const uint32_t (&hi)[2],  // its high bits (3-bit)
                                        int gi,                   // group within the chunk
                                        const float (&zf)[2],     // rows g / g + 8: kCodeOffset + z
                                        const uint32_t (&zp)[2],  // same, packed
                                        const uint32_t* xc,       // staged x of the chunk (shared memory)
                                        uint4& bv,                // B words of the current subtile pair
                                        float (&d)[4]) {          // C fragment, accumulated in place
#pragma unroll
  for (int jj = 0; jj < SPG; ++jj) {
    const int j = gi * SPG + jj;
    uint32_t a[4];
    a_fragment_any<T, BITS>(w, hi, j, zf, zp, a);
    if (j % 2 == 0) bv = reinterpret_cast<const uint4*>(xc)[j / 2];
    mma_16816<T>(d, a, j % 2 ? bv.z : bv.x, j % 2 ? bv.w : bv.y);
  }
}

}  // namespace qtool
