// Decoding packed integer codes into floating point with bit tricks instead of int->float
// conversions. Everything here is __host__ __device__ so tests/kernels_host_check.cu can run it
// on the CPU against kernels/layout.py.
//
// Where codes sit (one lane's 16-byte chunk = words w[0..3], see wo_kernels.h):
//   int4: word j is 16x16 subtile j; its nibble s (bits 4s..4s+3) is register p = s % 4, half
//         h = s / 4. So a shift by 4p puts the pair (p, h=0) at bits 0..3 and (p, h=1) at 16..19,
//         which is exactly what the packed-pair trick below needs.
//   int8: subtile j is words 2j (registers 0, 1) and 2j + 1 (registers 2, 3); byte
//         b = 2 * (p % 2) + h of its word holds register p, half h.
//   2-bit: word w holds subtiles 2w (bits 0..1 of each nibble) and 2w + 1 (bits 2..3); nibble i = p + 4h
//         as for int4. 3-bit: the same for the low 2 bits, and the high bits in two more words, merged
//         into one word of 3-bit nibbles per subtile by low_bit_nibbles, which then decodes like int4.
// Codes are unsigned: u = q + 2^(bits - 1) (q + 8 for int4, q + 128 for int8), q the signed code.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

// `#pragma unroll` for loops that must unroll on the GPU (so arrays stay in registers), hidden from
// the host compiler, which has its own spelling.
#ifdef __CUDA_ARCH__
#define QTOOL_UNROLL _Pragma("unroll")
#else
#define QTOOL_UNROLL
#endif

namespace qtool {

__host__ __device__ inline float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// --- to float32: "biased" values 128 + u (int4) and 256 + u (int8) -----------------------
// A float32 in [2^e, 2^(e+1)) has a mantissa step of 2^(e-23). With exponent 7 (128.0f =
// 0x43000000) the step is 2^-16, so a nibble OR-ed into mantissa bits 16..19 reads as 128 + u.
// With exponent 8 (256.0f = 0x43800000) the step is 2^-15: a byte at bits 15..22 reads as
// 256 + u. One shift and one AND-OR (a single LOP3 on the GPU) per value, exact.
constexpr float kInt4Bias = 128.0f + 8.0f;    // biased value of q = 0
constexpr float kInt8Bias = 256.0f + 128.0f;  // biased value of q = 0

// Biased value 128 + u of q = 0 for codes of BITS <= 4 (all go under the same float exponent).
template <int BITS>
constexpr float kNibbleBias = 128.0f + (1 << (BITS - 1));

// The low BITS bits of nibble `slot` as 128 + u (2- and 3-bit codes: a word from low_bit_nibbles).
template <int BITS>  // 2, 3 or 4
__host__ __device__ inline float nibble_biased(uint32_t word,  // eight nibbles
                                               int slot) {     // nibble 0..7
  const uint32_t moved = slot <= 4 ? word << (16 - 4 * slot) : word >> (4 * slot - 16);
  return bits_to_float((moved & (((1u << BITS) - 1) << 16)) | 0x43000000u);
}

__host__ __device__ inline float int4_biased(uint32_t word,  // eight nibbles
                                             int slot) {     // nibble 0..7
  return nibble_biased<4>(word, slot);
}

// --- 2- and 3-bit: one word of nibbles per subtile -----------------------------------------
// Subtile j of a chunk as a word whose nibble p + 4h holds register p, half h in its low BITS bits (the
// bits above are other codes: every decode masks them off). 2-bit: low word j / 2, shifted right by 2
// for odd j. 3-bit: the same low bits and the high bits in one LOP3, (lo & 0x33333333) | (hi & ~..):
// layout.py puts subtile j's high bits at nibble bit 2 of high word j / 4 after a left shift by 2 for
// odd j / 2 and a right shift by 1 for odd j (bits 2, 3, 0, 1 of each nibble hold subtiles 4v + 0..3).
template <int BITS>  // 2 or 3
__host__ __device__ inline uint32_t low_bit_nibbles(const uint32_t (&lo)[4],  // the lane's 16 bytes
                                                    const uint32_t (&hi)[2],  // its high bits (3-bit only)
                                                    int j) {                  // subtile 0..7
  constexpr uint32_t kLowBits = 0x33333333u;
  const uint32_t w = lo[j / 2] >> (2 * (j % 2));
  if (BITS == 2) return w;
  const uint32_t h = (hi[j / 4] << (2 * ((j / 2) % 2))) >> (j % 2);
  return (w & kLowBits) | (h & ~kLowBits);
}

__host__ __device__ inline float int8_biased(uint32_t word,  // four bytes
                                             int byte) {     // byte 0..3
  const uint32_t moved = byte == 0 ? word << 15 : byte == 1 ? word << 7 : word >> (8 * byte - 15);
  return bits_to_float((moved & 0x007F8000u) | 0x43800000u);
}

// Biased values of one lane's chunk in fragment order: v[j][p][h] = subtile j, register p, half h.
// (2- and 3-bit chunks: decode_low_chunk.)
template <int BITS>  // 4 or 8
__host__ __device__ inline void decode_chunk(const uint32_t (&w)[4],         // the lane's 16 bytes
                                             float (&v)[16 / BITS][4][2]) {  // out: 4 (int4) / 2 (int8) subtiles
  QTOOL_UNROLL
  for (int j = 0; j < 16 / BITS; ++j)
    QTOOL_UNROLL
    for (int p = 0; p < 4; ++p)
      QTOOL_UNROLL
      for (int h = 0; h < 2; ++h)
        v[j][p][h] = BITS == 4 ? int4_biased(w[j], p + 4 * h) : int8_biased(w[2 * j + p / 2], 2 * (p % 2) + h);
}

// The same for a 2- or 3-bit chunk: v[j][p][h] = 128 + u (kNibbleBias<BITS> for q = 0).
template <int BITS>  // 2 or 3
__host__ __device__ inline void decode_low_chunk(const uint32_t (&lo)[4],  // the lane's 16 bytes
                                                 const uint32_t (&hi)[2],  // its high bits (3-bit only)
                                                 float (&v)[8][4][2]) {    // out: 8 subtiles
  QTOOL_UNROLL
  for (int j = 0; j < 8; ++j) {
    const uint32_t nib = low_bit_nibbles<BITS>(lo, hi, j);
    QTOOL_UNROLL
    for (int p = 0; p < 4; ++p)
      QTOOL_UNROLL
      for (int h = 0; h < 2; ++h) v[j][p][h] = nibble_biased<BITS>(nib, p + 4 * h);
  }
}

// --- int4 straight to a packed pair of halves / bfloat16s ----------------------------------
// The same trick in 16 bits: bf16 128.0 = 0x4300 has a mantissa step of 1 (7 mantissa bits), and
// fp16 1024.0 = 0x6400 has a step of 1 (10 bits). (word >> 4p) & 0x000F000F leaves register p's
// two nibbles at the bottom of each 16-bit half; OR-ing the magic gives (base + u_lo, base + u_hi),
// and one packed subtraction of (base + 8 + zero point) yields q - zero_point exactly.
template <typename T>  // __half or __nv_bfloat16
struct PairTraits;

template <>
struct PairTraits<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static constexpr uint32_t kMagic = 0x43004300u;  // (128, 128)
  static constexpr float kBase = 128.0f;
};

template <>
struct PairTraits<__half> {
  using T2 = __half2;
  static constexpr uint32_t kMagic = 0x64006400u;  // (1024, 1024)
  static constexpr float kBase = 1024.0f;
};

// 2- and 3-bit codes: the same with a 2- or 3-bit mask on a word from low_bit_nibbles.
template <typename T,  // __half or __nv_bfloat16
          int BITS>    // 2, 3 or 4
__host__ __device__ inline uint32_t nibble_pair_biased(uint32_t word,  // eight nibbles of one subtile
                                                       int p) {        // register 0..3
  constexpr uint32_t kMask = ((1u << BITS) - 1) * 0x00010001u;
#ifdef __CUDA_ARCH__
  // One LOP3 for (a & mask) | magic: written as C++, the compiler keeps both constants as
  // immediates, and LOP3 takes only one, so it emits an AND and an OR.
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(word >> (4 * p)), "r"(kMask), "r"(PairTraits<T>::kMagic));
  return r;
#else
  return ((word >> (4 * p)) & kMask) | PairTraits<T>::kMagic;
#endif
}

template <typename T>  // __half or __nv_bfloat16
__host__ __device__ inline uint32_t int4_pair_biased(uint32_t word,  // eight nibbles of one subtile
                                                     int p) {        // register 0..3
  return nibble_pair_biased<T, 4>(word, p);
}

// --- int8 with one byte permute (PRMT) per register or value ---------------------------------
// PRMT builds a word from any four bytes of two words: byte i of the result is byte sel[4i+2..4i] of
// (b:a), bytes 0..3 from a and 4..7 from b. With the magic in b, one PRMT places a code byte under a
// float exponent, which shifts and masks would take two or three instructions to do.
__host__ __device__ inline uint32_t byte_perm(uint32_t a, uint32_t b, uint32_t sel) {
#ifdef __CUDA_ARCH__
  return __byte_perm(a, b, sel);
#else
  const uint64_t ab = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>((ab >> (8 * ((sel >> (4 * i)) & 7))) & 0xFFu) << (8 * i);
  return r;
#endif
}

// int8 register p (0..3) of a subtile as the fp16 pair (1024 + u_lo, 1024 + u_hi): its two bytes
// 2 * (p % 2) + h of word 2j + p / 2 go under fp16 1024.0 = 0x6400 (step 1, so any byte fits).
// bf16 has no such magic for 8-bit codes (7 mantissa bits): see int8_f32_magic.
__host__ __device__ inline uint32_t int8_pair_biased_half(uint32_t word,  // word 2j + p / 2 of the chunk
                                                          int p) {        // register 0..3
  return byte_perm(word, 0x64646464u, p % 2 ? 0x4342u : 0x4140u);
}

// One byte as the float32 2^23 + u (0x4B0000uu: mantissa step 1 at exponent 23), exact.
constexpr float kInt8Magic = 8388608.0f;
__host__ __device__ inline float int8_f32_magic(uint32_t word,  // four bytes
                                                int byte) {     // byte 0..3
  return bits_to_float(byte_perm(word, 0x4B000000u, 0x7440u | static_cast<uint32_t>(byte)));
}

// Two signed int8 codes at bits 7:0 and 23:16 of `bytes` (the other bits are ignored) -> their bf16 pair, exactly,
// in two LOP3 and one bf16x2 subtraction: (128 + the low 7 bits) - (128 + 128 * sign bit), where 0x4300 | low7 is
// 128 + low7 (bf16's mantissa step is 1 in [128, 256)) and 0x4300 | (sign << 7) is 128 or 256. A word of four
// codes gives its pairs (c0, c2) and (c1, c3) from `word` and `word >> 8`: 7 instructions per two registers where
// the float32 magic (int8_f32_magic, then a byte permute per pair) takes 10-11. The k order inside the word is
// then 0, 2 / 1, 3: w8_gemv permutes x's pairs the same way (its switch 32; unmeasured).
__host__ __device__ inline uint32_t int8_pair_bf16_signed(uint32_t bytes) {
#ifdef __CUDA_ARCH__
  uint32_t v, s;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(v) : "r"(bytes), "r"(0x007F007Fu), "r"(0x43004300u));  // (a & b) | c
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(s) : "r"(bytes), "r"(0x00800080u), "r"(0x43004300u));
  __nv_bfloat162 a2, b2;
  std::memcpy(&a2, &v, 4);
  std::memcpy(&b2, &s, 4);
  const __nv_bfloat162 d = __hsub2(a2, b2);
  uint32_t out;
  std::memcpy(&out, &d, 4);
  return out;
#else
  const uint32_t v = (bytes & 0x007F007Fu) | 0x43004300u, s = (bytes & 0x00800080u) | 0x43004300u;
  uint32_t out = 0;
  for (int h = 0; h < 2; ++h) {  // bf16 -> float is a shift; the difference is a small integer, exact in bf16
    const float d = bits_to_float(((v >> (16 * h)) & 0xFFFFu) << 16) - bits_to_float(((s >> (16 * h)) & 0xFFFFu) << 16);
    uint32_t bits = 0;
    std::memcpy(&bits, &d, 4);
    out |= (bits >> 16) << (16 * h);
  }
  return out;
#endif
}

// 2- or 3-bit subtile word (from low_bit_nibbles) -> two int8 A registers of mma.m16n8k32 (wo_planes_low.cu), as
// int4_word_s8x16: the even nibbles are row g, the odd ones row g + 8, each code shifted to the top of its byte
// (2^(8 - BITS) u) and the top bit flipped: 2^(8 - BITS) (u - 2^(BITS - 1)) = 2^(8 - BITS) q, signed. The bits above
// each code (other subtiles' codes) fall off the mask. Row g's register in the low word, row g + 8's in the high one.
template <int BITS>  // 2 or 3
__host__ __device__ inline uint64_t low_word_s8(uint32_t nibbles) {
  constexpr uint32_t kMask = BITS == 2 ? 0xC0C0C0C0u : 0xE0E0E0E0u;
  const uint32_t row_g = ((nibbles << (8 - BITS)) & kMask) ^ 0x80808080u;
  const uint32_t row_g8 = ((nibbles << (4 - BITS)) & kMask) ^ 0x80808080u;
  return (static_cast<uint64_t>(row_g8) << 32) | row_g;
}

// int4 subtile word (the wo layout) -> two int8 A registers of mma.m16n8k32 (wo_planes.cu): the even nibbles are
// row g at k = 2t, 2t + 8, 2t + 1, 2t + 9 of the subtile, the odd ones row g + 8 at the same k, so masking puts
// each row's four codes in four bytes as 16 u, and flipping the top bit makes that 16 (u - 8) = 16 q, signed.
// Returns row g's register in the low word, row g + 8's in the high one.
__host__ __device__ inline uint64_t int4_word_s8x16(uint32_t word) {
#ifdef __CUDA_ARCH__
  // (a & b) ^ c as one LOP3 each: written as C++, the compiler emits an AND and an XOR (one immediate per LOP3)
  uint32_t row_g, row_g8;
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(row_g) : "r"(word << 4), "r"(0xF0F0F0F0u), "r"(0x80808080u));
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;" : "=r"(row_g8) : "r"(word), "r"(0xF0F0F0F0u), "r"(0x80808080u));
#else
  const uint32_t row_g = ((word << 4) & 0xF0F0F0F0u) ^ 0x80808080u, row_g8 = (word & 0xF0F0F0F0u) ^ 0x80808080u;
#endif
  return (static_cast<uint64_t>(row_g8) << 32) | row_g;
}

// A-fragment coordinates of mma.m16n8k16 (row-major A, 16-bit types): the first element of
// register p of `lane` sits at (frag_row, frag_col); the second is one column to the right.
__host__ __device__ constexpr int frag_row(int lane, int p) { return lane / 4 + 8 * (p % 2); }
__host__ __device__ constexpr int frag_col(int lane, int p) { return 2 * (lane % 4) + 8 * (p / 2); }

}  // namespace qtool
