// The 8-bit code decode of w8_gemv.cu (int8, FP8 E4M3 / E5M2 -> fp16 / bf16 pairs), in registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "w8a8.h"
#include "wo_common.cuh"
#include "wo_decode.cuh"

namespace qtool {

// Four codes (one 32-bit word) -> two packed pairs of T: (c0, c1) and (c2, c3), exactly, with few
// conversion instructions (they issue at a fraction of the ALU rate, and at 1-16 tokens the decode, not the
// tensor cores, is the work that competes with the weight stream).
// int8 for fp16: flipping the sign bit gives u = c + 128 in 0..255, which placed in the low mantissa bits of
// 1024 + u (0x64uu) is one subtraction away from c. int8 for bf16: int8_pair_bf16_signed (wo_decode.cuh) gives the
// pairs (c0, c2) and (c1, c3) with two LOP3 and one bf16x2 subtraction, and x's pairs are permuted to the same k
// order (session 18: 29.6 -> 23.6 instructions per mma; +1-13% at 1-16 tokens, no shape slower beyond noise).
// FP8 for bf16: the code's exponent and mantissa bits, moved to the top of a bf16's fields, give the same value
// times 2^-(127 - bias) (subnormals included); one bf16x2 multiply by 2^(127 - bias) restores it. Weight codes
// are finite: the NaN codes of E4M3 (and Inf / NaN of E5M2) would decode as finite numbers.
template <CodeFormat F>
constexpr uint32_t kRestore = F == CodeFormat::kE4M3 ? 0x7B807B80u : 0x77807780u;  // (2^120, 2^120) / 2^112
template <CodeFormat F>
constexpr float kRestoreF = F == CodeFormat::kE4M3 ? 0x1p120f : 0x1p112f;

template <CodeFormat F>
__device__ inline uint32_t fp8_pair_bf16(uint32_t word, uint32_t selector,
                                         uint32_t restore) {  // kRestore<F>, or it times a block scale (bf16x2)
  constexpr int kShift = F == CodeFormat::kE4M3 ? 4 : 3;                         // 8 - exponent bits - 1
  constexpr uint32_t kFields = F == CodeFormat::kE4M3 ? 0x07F007F0u : 0x0FE00FE0u;  // exponent | mantissa
  const uint32_t bytes = __byte_perm(word, 0u, selector);  // the two codes in bits 15:8 and 31:24
  const uint32_t bits = (bytes & 0x80008000u) | ((bytes >> kShift) & kFields);
  return as_u32(__hmul2(as_pair<__nv_bfloat162>(bits), as_pair<__nv_bfloat162>(restore)));
}

// int8 codes for bf16 come out as (c0, c2) and (c1, c3): kPairs02, x's pairs are permuted to match.
template <typename T, CodeFormat F>
constexpr bool kPairs02 = F == CodeFormat::kInt8 && std::is_same_v<T, __nv_bfloat16>;

// FP8 codes for bf16 can take a block scale in the decode's own multiply (Scales == kBlockFold, below).
template <typename T, CodeFormat F>
constexpr bool kFoldsScale = std::is_same_v<T, __nv_bfloat16> && F != CodeFormat::kInt8;

template <typename T, CodeFormat F>
__device__ inline void decode4(uint32_t word, uint32_t& lo, uint32_t& hi, uint32_t restore = kRestore<F>) {
  if constexpr (kPairs02<T, F>) {
    lo = int8_pair_bf16_signed(word);
    hi = int8_pair_bf16_signed(word >> 8);
  } else if constexpr (F == CodeFormat::kInt8) {  // fp16
    const uint32_t u = word ^ 0x80808080u;
    const uint32_t bias = 0x64806480u;  // (1024 + 128, 1024 + 128)
    lo = sub_pair(__byte_perm(u, 0x64646464u, 0x5140), bias, __half{});
    hi = sub_pair(__byte_perm(u, 0x64646464u, 0x7362), bias, __half{});
  } else if constexpr (std::is_same_v<T, __half>) {
    constexpr __nv_fp8_interpretation_t kind = F == CodeFormat::kE4M3 ? __NV_E4M3 : __NV_E5M2;
    lo = as_u32(__half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(word & 0xffff), kind)));
    hi = as_u32(__half2(__nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(word >> 16), kind)));
  } else {  // selectors: zero, code 0 (2), zero, code 1 (3)
    lo = fp8_pair_bf16<F>(word, 0x1404, restore);
    hi = fp8_pair_bf16<F>(word, 0x3424, restore);
  }
}

}  // namespace qtool
