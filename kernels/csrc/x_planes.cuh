// x as two int8 planes, one value at a time: what x_planes (wo_planes.cu), the GEMVs that stage their own planes
// (wo_planes.cu, variants 4-6) and the RMSNorm's planes (norm_planes.cu) share. x = s hi + (s / 254) lo within
// s / 508 with s = max|x| / 127 per token (kernels/reference.py x_planes is the oracle).
#pragma once

#include <cstdint>

#include "wo_common.cuh"  // pair_to_float2, plane_slot

namespace qtool {

// Four int32 (their low bytes) packed into one word, byte i from v[i].
__device__ inline uint32_t pack_bytes(uint32_t v0, uint32_t v1, uint32_t v2, uint32_t v3) {
  return __byte_perm(__byte_perm(v0, v1, 0x0040), __byte_perm(v2, v3, 0x0040), 0x5410);
}

// One value of x as its two planes, each in the low byte of a float's bits: hi = round(x / s), lo = round((x -
// s hi) * 254 / s), by the 1.5 * 2^23 rounding trick (round to nearest even; the float's low byte is the integer's,
// two's complement). With s = max|x| / 127 neither needs a clamp: |x / s| <= 127, |x - s hi| <= s / 2.
constexpr float kRoundMagic = 12582912.0f;
__device__ inline void split_value(float x, float s, float inv_s, float inv_lo, uint32_t& hi, uint32_t& lo) {
  const float h = fmaf(x, inv_s, kRoundMagic);
  hi = __float_as_uint(h);
  lo = __float_as_uint(fmaf(fmaf(-(h - kRoundMagic), s, x), inv_lo, kRoundMagic));
}

// max |x| over one vector of 8 values of x.
template <typename T>
__device__ inline float vec_absmax(const uint4 val, float mx) {
  const uint32_t words[4] = {val.x, val.y, val.z, val.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = pair_to_float2(words[i], T{});
    mx = fmaxf(mx, fmaxf(fabsf(f.x), fabsf(f.y)));
  }
  return mx;
}

// One 16-k subtile j of a token (its vectors v0 = x[16j .. 16j + 7], v1 = the next 8) as its two planes at `out`
// (the high plane; the low one row_bytes after), s = the token's scale, inv = (1 / s, 254 / s). Slot order: lane t's
// word holds k = 2t, 2t + 8, 2t + 1, 2t + 9 = word t of each vector, words 16 bytes apart; natural order: word t holds
// k = 4t..4t+3, words 2t and 2t + 1 of the subtile's two vectors.
template <typename T, bool NATURAL>
__device__ inline void store_subtile(const uint4 v0, const uint4 v1, float s, float2 inv, uint8_t* out,
                                     int row_bytes) {
  const uint32_t first[4] = {v0.x, v0.y, v0.z, v0.w}, second[4] = {v1.x, v1.y, v1.z, v1.w};
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    const uint32_t w0 = NATURAL ? (t < 2 ? first[2 * t] : second[2 * t - 4]) : first[t];
    const uint32_t w1 = NATURAL ? (t < 2 ? first[2 * t + 1] : second[2 * t - 3]) : second[t];
    const float2 a = pair_to_float2(w0, T{}), b = pair_to_float2(w1, T{});
    uint32_t h[4], l[4];
    split_value(a.x, s, inv.x, inv.y, h[0], l[0]);
    split_value(NATURAL ? a.y : b.x, s, inv.x, inv.y, h[1], l[1]);
    split_value(NATURAL ? b.x : a.y, s, inv.x, inv.y, h[2], l[2]);
    split_value(b.y, s, inv.x, inv.y, h[3], l[3]);
    *reinterpret_cast<uint32_t*>(out + (NATURAL ? 4 : 16) * t) = pack_bytes(h[0], h[1], h[2], h[3]);
    *reinterpret_cast<uint32_t*>(out + row_bytes + (NATURAL ? 4 : 16) * t) = pack_bytes(l[0], l[1], l[2], l[3]);
  }
}

// s = max|x| / 127 (any scale for an all-zero token: its planes are zero) and (1 / s, 254 / s).
__device__ inline float token_scale(float mx, float2& inverse) {
  const float s = mx > 0.0f ? mx / 127.0f : 1.0f;
  inverse = make_float2(1.0f / s, 254.0f / s);
  return s;
}

// One token held in registers (SUBS 16-k subtiles per thread of THREADS: subtile threadIdx.x + i THREADS in v[i],
// its two vectors) with max|x| = mx, as its planes (rows 2r / 2r + 1 of planes [2m, k]) and its scale xscale[r].
template <typename T, bool NATURAL, int SUBS, int THREADS>
__device__ inline void store_token_planes(const uint4 (&v)[SUBS][2], float mx, int r, int k, int8_t* planes,
                                          float* xscale) {
  float2 inverse;
  const float s = token_scale(mx, inverse);
  if (threadIdx.x == 0) xscale[r] = s;
  uint8_t* dst = reinterpret_cast<uint8_t*>(planes) + 2 * static_cast<size_t>(r) * k;
#pragma unroll
  for (int i = 0; i < SUBS; ++i) {
    const int j = threadIdx.x + i * THREADS;
    if (j < k / 16) {
      store_subtile<T, NATURAL>(v[i][0], v[i][1], s, inverse, dst + (NATURAL ? 16 * j : plane_slot(16 * j)), k);
    }
  }
}

}  // namespace qtool
