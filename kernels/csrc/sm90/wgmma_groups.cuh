// The 4-bit weights' scales after the MMA (wgmma_consumer.cuh): at <= 32 tokens a chunk's conversion is the
// mainloop's chain (session 67's SASS: ~220 instructions a warp a chunk), and of each bf16 pair's lop3, HSUB2 and HMUL2
// the multiply by the group's scale (with the scales' F2F conversions) can move out of it. The wgmma then sums the
// codes q - z (exact in bf16 for symmetric weights) times the activations into float32 partial sums a group, and
// those are scaled in float32 into the stripe's accumulator: T / 2 FFMAs a thread a group in place of 16 HMUL2 a
// chunk. g128: two sets of partial sums alternate group by group, a set folded behind wgmma_wait<0> once the next
// group's first chunk is converted (so the conversion still overlaps the wgmmas before it). Per channel: one group,
// the scales applied once after the loop.
// A kernel of its own (`Post`, launch bit 2) that a route names where it measures faster ("wgmma w1 s2 post" in
// kernels/tuning.py), since its registers (127-156 against 76-80) change which schedules fit one wave.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "wgmma_async.cuh"
#include "wgmma_lanes.cuh"
#include "wgmma_ops.cuh"

namespace qtool::wgmma {

template <int T>
__device__ inline void mma(float (&d)[T / 2], const uint32_t (&a)[4], uint64_t desc, int accumulate = 1) {
  if constexpr (T == 16) mma_m64n16(d, a, desc, accumulate);
  if constexpr (T == 32) mma_m64n32(d, a, desc, accumulate);
  if constexpr (T == 64) mma_m64n64(d, a, desc, accumulate);
  if constexpr (T == 128) mma_m64n128(d, a, desc, accumulate);
}

// A chunk's four k16 steps: d += A . B (accumulate 0: d = A . B), the tall tile's second stripe into d1 on the
// same B descriptors.
template <int T, bool Tall>
__device__ inline void mma_chunk(float (&d)[T / 2], float (&d1)[Tall ? T / 2 : 1], const uint32_t (&a)[16],
                                 const uint32_t (&b)[16], uint32_t stage, int accumulate) {
  // step kk's descriptor is the stage's plus 2 kk: the stage is 1024-byte aligned, so its start field (address / 16)
  // takes the 32 kk bytes without a carry (one descriptor a chunk, not four)
  const uint64_t desc = b_desc(stage);
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    const uint32_t step[4] = {a[4 * kk], a[4 * kk + 1], a[4 * kk + 2], a[4 * kk + 3]};
    mma<T>(d, step, desc + 2 * kk, kk == 0 ? accumulate : 1);
    if constexpr (Tall) {
      const uint32_t step1[4] = {b[4 * kk], b[4 * kk + 1], b[4 * kk + 2], b[4 * kk + 3]};
      mma<T>(d1, step1, desc + 2 * kk, kk == 0 ? accumulate : 1);
    }
  }
}

// Which kernels have the post-scale form: 4-bit weights at <= 32 tokens on 1-2 warpgroups, not the tall tile; and
// whether a call's groups take its group loop (g128 on an even count of chunks: the CTAs' K ranges are then cut at
// whole groups, wo_wgmma_kernel; per-channel weights take the scales after the loop, other groups the mainloop's).
// Four warpgroups at 16-32 tokens and the tall tile's two at 16 have too few registers for the second set (ptxas
// serialized their wgmmas: C7511 / C7512); the tall tile's one at 16 took 231-240 registers (120-126 without), left
// its cells' schedules two waves and ran 4096 x 4096 at 16 tokens 1.13x bf16 against 2.19x (session 71, H100).
template <int T, int WG, int W, bool Tall>
constexpr bool kHasPost = (W == kW4 || W == kW4Asym) && !Tall && T <= 32 && WG <= 2;
__host__ __device__ inline bool post_groups(int group, int k_pad) {
  return group == 2 * kChunkK && (k_pad / kChunkK) % 2 == 0;
}

// acc += g * s: a thread's accumulators hold rows lane / 4 (s.x) and lane / 4 + 8 (s.y) of its warp's 16.
template <int T>
__device__ inline void fold(float (&acc)[T / 2], const float (&g)[T / 2], float2 s) {
#pragma unroll
  for (int i = 0; i < T / 2; ++i) acc[i] = fmaf(g[i], i % 4 < 2 ? s.x : s.y, acc[i]);
}
template <int T>
__device__ inline void scale_rows(float (&acc)[T / 2], float2 s) {  // acc *= s, rows as fold's
#pragma unroll
  for (int i = 0; i < T / 2; ++i) acc[i] *= i % 4 < 2 ? s.x : s.y;
}

// A stripe's partial sums of two groups, set 0 and set 1, and their scales; the mainloop names the sets statically
// (a runtime set index branched around the wgmmas, and ptxas serialized them: C7520).
template <int T>
struct GroupSums {
  float g[2][T / 2] = {};
  float2 s[2] = {};  // zero until a group fills the set: folding it adds nothing
  template <int Set>
  __device__ void fold_into(float (&acc)[T / 2], float keep = 1.0f) {  // set Set, its scales times keep (0 or 1)
    fold<T>(acc, g[Set], make_float2(s[Set].x * keep, s[Set].y * keep));
  }
};

}  // namespace qtool::wgmma
