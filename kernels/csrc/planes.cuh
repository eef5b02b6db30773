// What the int8-planes GEMVs share (wo_planes.cu for 4-bit codes, w8_planes.cu for int8 rows): x as two int8 planes
// (x_planes, wo_kernels.h) on mma.m16n8k32.s8, the mma's 8 columns holding up to 4 tokens' high and low planes.
#pragma once

#include <cstdint>

namespace qtool {

// D += A B on the int8 tensor cores (PTX ISA, "mma.m16n8k32"): lane (g, t) holds A rows g / g + 8 at k 4t..4t+3
// (a0 / a1) and 16+4t..16+4t+3 (a2 / a3), B column g at k 4t..4t+3 (b0) and 16+4t..16+4t+3 (b1), and D rows g /
// g + 8 at columns 2t, 2t + 1 (d0, d1 / d2, d3).
__device__ inline void mma_s8_16832(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace qtool
