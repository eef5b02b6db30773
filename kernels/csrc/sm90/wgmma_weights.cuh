// The weights of the wgmma weight-only GEMM (wo_wgmma_sm90.cu) into wgmma's register A: 16 bf16 pairs per lane for
// a 64-k chunk, four k16 steps of four registers. Register p of step j holds the pair at row lane / 4 + 8 (p % 2)
// of the warp's 16 rows and k 16 j + 2 (lane % 4) + 8 (p / 2) + {0, 1} (mma.m16n8k16's A, which wgmma repeats
// per warp of the warpgroup).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "wgmma_async.cuh"

namespace qtool::wgmma {

// Weight kinds (a kernel template argument): 4-bit codes of the kernel layout (kernels/layout.py), symmetric or
// with zero points, scaled per group in the mainloop; 8-bit codes row-major (layout.pack_rows, the W8A8 layers'
// weight), int8, FP8 E4M3 or E5M2, scaled per channel (or per tensor) after the sum, or E4M3 with a scale per
// 128 x 128 block (fp8-block), applied to A in the mainloop (a warpgroup's 64 rows lie in one block row).
enum Kind : int { kW4 = 0, kW4Asym = 1, kI8Rows = 2, kE4m3Rows = 3, kE4m3Blocks = 4, kE5m2Rows = 5 };
template <int W>
constexpr bool kRows = W >= kI8Rows;

// One chunk's 16-byte word of the 4-bit kernel layout -> the 16 A registers. Word j holds step j; nibble p + 4h
// the element h of register p. 0x4300 | u is the bf16 128 + u, so v - (136 + z) is the exact small integer q - z
// (u = q + 8) and one multiply by the bf16 scale rounds once; Scaled false: the codes q - z alone (exact for
// symmetric weights), the group's scale applied to its float32 partial sums after the MMA (the post-scale form,
// wgmma_groups.cuh).
template <bool Scaled = true>
__device__ inline void dequant(const uint4& w, __nv_bfloat162 s0, __nv_bfloat162 s8, __nv_bfloat162 z0,
                               __nv_bfloat162 z8, uint32_t (&a)[16]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int p = 0; p < 4; ++p) {
      uint32_t v;
      asm("lop3.b32 %0, %1, 0x000F000F, 0x43004300, 0xEA;" : "=r"(v) : "r"(words[j] >> (4 * p)));
      const __nv_bfloat162 t = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&v), p % 2 ? z8 : z0);
      const __nv_bfloat162 r = Scaled ? __hmul2(t, p % 2 ? s8 : s0) : t;
      a[4 * j + p] = *reinterpret_cast<const uint32_t*>(&r);
    }
  }
}

__device__ inline uint32_t prmt(uint32_t a, uint32_t b, uint32_t selector) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(selector));
  return d;
}
__device__ inline uint32_t lop3_ea(uint32_t a, uint32_t b, uint32_t c) {  // (a & b) | c
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

// Two 8-bit codes (bytes 0, 1 of `e` for hi = false, bytes 2, 3 for hi = true) -> a bf16 pair, exactly.
// int8 b = v - 128 b7 (v its low 7 bits): the bf16 0x4300 | v is 128 + v, and 0x4300 | (b & 0x80) is 128 + 128 b7,
// so one bf16 subtraction gives b. E4M3 s eeee mmm: moved to the bf16 fields (sign at bit 15, eeeemmm at bits
// 4..10) it reads as the number times 2^-120, subnormals included, and one bf16 multiply by 2^120 is exact; E5M2
// s eeeee mm likewise (eeeeemm at bits 5..11, times 2^112).
template <int W>
__device__ inline uint32_t codes_to_bf16(uint32_t e, bool hi, __nv_bfloat162 block_scale) {
  __nv_bfloat162 r;
  if constexpr (W == kI8Rows) {
    const uint32_t v = prmt(e, 0, hi ? 0x4342 : 0x4140);  // byte i at bits 16 i .. 16 i + 7
    const uint32_t low = lop3_ea(v, 0x007F007F, 0x43004300), sub = lop3_ea(v, 0x00800080, 0x43004300);
    r = __hsub2(*reinterpret_cast<const __nv_bfloat162*>(&low), *reinterpret_cast<const __nv_bfloat162*>(&sub));
  } else {
    const uint32_t v = prmt(e, 0, hi ? 0x3424 : 0x1404);  // byte i at bits 16 i + 8 .. 16 i + 15
    constexpr bool e5m2 = W == kE5m2Rows;
    const uint32_t bits = lop3_ea(v >> (e5m2 ? 3 : 4), e5m2 ? 0x0FE00FE0 : 0x07F007F0, v & 0x80008000);
    const uint32_t rebias = e5m2 ? 0x77807780 : 0x7B807B80;  // 2^112, 2^120
    r = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&bits), *reinterpret_cast<const __nv_bfloat162*>(&rebias));
    if constexpr (W == kE4m3Blocks) r = __hmul2(r, block_scale);  // the block's bf16 scale: one rounding
  }
  return *reinterpret_cast<const uint32_t*>(&r);
}

// Row-major 8-bit codes -> the 16 A registers of a 64-k chunk. Lane (r = lane / 4, q = lane % 4) copied 16 bytes
// of rows r and r + 8 (w0, w1): step q of both. A wants, of each step, bytes {2q', 2q' + 1, 2q' + 8, 2q' + 9} in
// lane q' of the quad: each lane regroups its bytes into those four words (prmt), stores them to its warp's 1 KB
// `xpose` buffer, and one ldmatrix per row half hands every lane its word of each step (a 4 x 4 transpose of words
// within each quad). Buffer: [half][step][row] of 16 bytes, rows XOR-swizzled by 2 step so that the stores and the
// ldmatrix reads both fall in distinct banks.
template <int W>
__device__ inline void rows_to_a(const uint4& w0, const uint4& w1, uint32_t xpose, int lane, __nv_bfloat162 block_scale,
                                 uint32_t (&a)[16]) {
  const int q = lane % 4, r = lane / 4;
  const uint32_t at = xpose + q * 128 + ((r ^ (2 * q)) & 7) * 16;
  __syncwarp();  // every lane's ldmatrix of the previous chunk has read the buffer
  sts128(at, prmt(w0.x, w0.z, 0x5410), prmt(w0.x, w0.z, 0x7632), prmt(w0.y, w0.w, 0x5410), prmt(w0.y, w0.w, 0x7632));
  sts128(at + 512, prmt(w1.x, w1.z, 0x5410), prmt(w1.x, w1.z, 0x7632), prmt(w1.y, w1.w, 0x5410),
         prmt(w1.y, w1.w, 0x7632));
  __syncwarp();
  const int mat = lane / 8, row = lane % 8;
  const uint32_t from = xpose + mat * 128 + ((row ^ (2 * mat)) & 7) * 16;
  uint32_t e0[4], e1[4];  // e0[j]: row r, step j; e1[j]: row r + 8
  ldmatrix_x4(from, e0);
  ldmatrix_x4(from + 512, e1);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    a[4 * j] = codes_to_bf16<W>(e0[j], false, block_scale);
    a[4 * j + 1] = codes_to_bf16<W>(e1[j], false, block_scale);
    a[4 * j + 2] = codes_to_bf16<W>(e0[j], true, block_scale);
    a[4 * j + 3] = codes_to_bf16<W>(e1[j], true, block_scale);
  }
}

}  // namespace qtool::wgmma
