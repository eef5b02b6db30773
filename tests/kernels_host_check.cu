// Runs the kernels' decode helpers (kernels/csrc/wo_decode.cuh, all __host__ __device__) on the
// CPU, so tests/test_kernels.py can check them against kernels/layout.py without a GPU.
// stdin: "bits lanes" then 4 unsigned words per lane (one lane's 16 bytes of a chunk each), 6 for 3-bit
// (the 16 bytes of low bits, then the lane's 8 bytes of high bits).
// stdout: one line per code: lane j p h row col f32 bf16 fp16, where (row, col) is the code's place
// in its 16 x chunk tile by frag_row/frag_col, f32 the decode_chunk value (128 + u or 256 + u) and
// bf16/fp16 the int4_pair_biased values (base + u). For int8 (the GEMV's decodes): bf16 = u from
// int8_f32_magic (2^23 + u, minus 2^23) and fp16 = the int8_pair_biased_half value (1024 + u). 2- and
// 3-bit: f32 from decode_low_chunk (128 + u), bf16/fp16 from nibble_pair_biased on low_bit_nibbles.
#include <cstdio>

#include "wo_decode.cuh"
#include "wo_kernels.h"

using namespace qtool;

template <int BITS>
void decode_lane(int lane, const uint32_t (&w)[4]) {
  float v[16 / BITS][4][2];
  decode_chunk<BITS>(w, v);
  for (int j = 0; j < 16 / BITS; ++j)
    for (int p = 0; p < 4; ++p)
      for (int h = 0; h < 2; ++h) {
        float bf = 0.0f, hf = 0.0f;
        if (BITS == 4) {
          const uint32_t b = int4_pair_biased<__nv_bfloat16>(w[j], p), f = int4_pair_biased<__half>(w[j], p);
          __nv_bfloat16_raw braw;
          braw.x = static_cast<unsigned short>(h ? b >> 16 : b & 0xFFFFu);
          __half_raw hraw;
          hraw.x = static_cast<unsigned short>(h ? f >> 16 : f & 0xFFFFu);
          bf = __bfloat162float(__nv_bfloat16(braw));
          hf = __half2float(__half(hraw));
        } else {
          const uint32_t word = w[2 * j + p / 2];
          bf = int8_f32_magic(word, 2 * (p % 2) + h) - kInt8Magic;
          const uint32_t f = int8_pair_biased_half(word, p);
          __half_raw hraw;
          hraw.x = static_cast<unsigned short>(h ? f >> 16 : f & 0xFFFFu);
          hf = __half2float(__half(hraw));
        }
        std::printf("%d %d %d %d %d %d %.1f %.1f %.1f\n", lane, j, p, h, frag_row(lane % 32, p),
                    16 * j + frag_col(lane % 32, p) + h, v[j][p][h], bf, hf);
      }
}

float half_of(uint32_t pair, int h, __nv_bfloat16) {
  __nv_bfloat16_raw raw;
  raw.x = static_cast<unsigned short>(h ? pair >> 16 : pair & 0xFFFFu);
  return __bfloat162float(__nv_bfloat16(raw));
}

float half_of(uint32_t pair, int h, __half) {
  __half_raw raw;
  raw.x = static_cast<unsigned short>(h ? pair >> 16 : pair & 0xFFFFu);
  return __half2float(__half(raw));
}

template <int BITS>  // 2 or 3
void decode_low_lane(int lane, const uint32_t (&lo)[4], const uint32_t (&hi)[2]) {
  float v[8][4][2];
  decode_low_chunk<BITS>(lo, hi, v);
  for (int j = 0; j < 8; ++j)
    for (int p = 0; p < 4; ++p)
      for (int h = 0; h < 2; ++h) {
        const uint32_t nib = low_bit_nibbles<BITS>(lo, hi, j);
        const float bf = half_of(nibble_pair_biased<__nv_bfloat16, BITS>(nib, p), h, __nv_bfloat16{});
        const float hf = half_of(nibble_pair_biased<__half, BITS>(nib, p), h, __half{});
        std::printf("%d %d %d %d %d %d %.1f %.1f %.1f\n", lane, j, p, h, frag_row(lane % 32, p),
                    16 * j + frag_col(lane % 32, p) + h, v[j][p][h], bf, hf);
      }
}

// "0 0": every pair of signed int8 codes through int8_pair_bf16_signed, with garbage in the bytes it must ignore;
// prints the number of pairs whose bf16 halves differ from the codes.
int check_signed_pairs() {
  int wrong = 0;
  for (int lo = -128; lo < 128; ++lo)
    for (int hi = -128; hi < 128; ++hi) {
      const uint32_t garbage = static_cast<uint32_t>((lo * 131 + hi * 7919) & 0xFF);
      const uint32_t bytes = (static_cast<uint32_t>(lo) & 0xFFu) | ((static_cast<uint32_t>(hi) & 0xFFu) << 16) |
                             (garbage << 8) | ((garbage ^ 0x5Au) << 24);
      const uint32_t pair = int8_pair_bf16_signed(bytes);
      wrong += half_of(pair, 0, __nv_bfloat16{}) != static_cast<float>(lo) ||
               half_of(pair, 1, __nv_bfloat16{}) != static_cast<float>(hi);
    }
  std::printf("%d\n", wrong);
  return 0;
}

int8_t byte_of(uint32_t word, int i) { return static_cast<int8_t>((word >> (8 * i)) & 0xFFu); }

// "-4 chunks": per chunk, 32 lanes' 4 words of int4 codes (the wo layout) and 64 int8 values of x; the chunk's
// product as wo_planes.cu computes it (mma.m16n8k32.s8, fragments as in the PTX ISA): A from int4_word_s8x16, B
// from x staged at plane_slot. Prints the 16 row sums (16 q . x) per chunk.
int check_planes(int chunks) {
  for (int c = 0; c < chunks; ++c) {
    uint32_t w[32][4];
    for (auto& lane : w)
      for (auto& x : lane)
        if (std::scanf("%u", &x) != 1) return 2;
    int x[64];
    uint8_t row[64] = {};
    for (int k = 0; k < 64; ++k) {
      if (std::scanf("%d", &x[k]) != 1) return 2;
      row[plane_slot(k)] = static_cast<uint8_t>(x[k]);
    }
    long long d[16] = {};
    for (int tile = 0; tile < 2; ++tile) {
      int a[16][32] = {}, b[32] = {};
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const uint64_t lo = int4_word_s8x16(w[lane][2 * tile]), hi = int4_word_s8x16(w[lane][2 * tile + 1]);
        for (int i = 0; i < 4; ++i) {
          a[g][4 * t + i] = byte_of(static_cast<uint32_t>(lo), i);
          a[g + 8][4 * t + i] = byte_of(static_cast<uint32_t>(lo >> 32), i);
          a[g][16 + 4 * t + i] = byte_of(static_cast<uint32_t>(hi), i);
          a[g + 8][16 + 4 * t + i] = byte_of(static_cast<uint32_t>(hi >> 32), i);
          b[4 * t + i] = static_cast<int8_t>(row[16 * t + 8 * tile + i]);  // b0 of lane t (every column alike)
          b[16 + 4 * t + i] = static_cast<int8_t>(row[16 * t + 8 * tile + 4 + i]);  // b1
        }
      }
      for (int r = 0; r < 16; ++r)
        for (int k = 0; k < 32; ++k) d[r] += a[r][k] * b[k];
    }
    for (int r = 0; r < 16; ++r) std::printf("%lld%c", d[r], r == 15 ? '\n' : ' ');
  }
  return 0;
}

// "-2 chunks" / "-3 chunks": per 128-k chunk, 32 lanes' 4 words of low bits (and, for 3 bits, 2 words of high bits)
// and 128 int8 values of x; the chunk's product as wo_planes_low.cu computes it: subtile j's word from
// low_bit_nibbles, A from low_word_s8, B from x at plane_slot (two 64-k halves). Prints 2^(8 - bits) q . x per row.
template <int BITS>
int check_low_planes(int chunks) {
  for (int c = 0; c < chunks; ++c) {
    uint32_t w[32][4], hw[32][2] = {};
    for (int lane = 0; lane < 32; ++lane) {
      for (auto& x : w[lane])
        if (std::scanf("%u", &x) != 1) return 2;
      if (BITS == 3)
        for (auto& x : hw[lane])
          if (std::scanf("%u", &x) != 1) return 2;
    }
    uint8_t row[128] = {};
    for (int k = 0; k < 128; ++k) {
      int x = 0;
      if (std::scanf("%d", &x) != 1) return 2;
      row[plane_slot(k)] = static_cast<uint8_t>(x);  // plane_slot(64 + k') = 64 + plane_slot(k')
    }
    long long d[16] = {};
    for (int tile = 0; tile < 4; ++tile) {
      int a[16][32] = {}, b[32] = {};
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        const uint64_t lo = low_word_s8<BITS>(low_bit_nibbles<BITS>(w[lane], hw[lane], 2 * tile));
        const uint64_t hi = low_word_s8<BITS>(low_bit_nibbles<BITS>(w[lane], hw[lane], 2 * tile + 1));
        const uint8_t* half = row + 64 * (tile / 2);
        const int q = tile % 2;  // the tile's words in the lane's 16 bytes of its half: 2q, 2q + 1
        for (int i = 0; i < 4; ++i) {
          a[g][4 * t + i] = byte_of(static_cast<uint32_t>(lo), i);
          a[g + 8][4 * t + i] = byte_of(static_cast<uint32_t>(lo >> 32), i);
          a[g][16 + 4 * t + i] = byte_of(static_cast<uint32_t>(hi), i);
          a[g + 8][16 + 4 * t + i] = byte_of(static_cast<uint32_t>(hi >> 32), i);
          b[4 * t + i] = static_cast<int8_t>(half[16 * t + 8 * q + i]);
          b[16 + 4 * t + i] = static_cast<int8_t>(half[16 * t + 8 * q + 4 + i]);
        }
      }
      for (int r = 0; r < 16; ++r)
        for (int k = 0; k < 32; ++k) d[r] += a[r][k] * b[k];
    }
    for (int r = 0; r < 16; ++r) std::printf("%lld%c", d[r], r == 15 ? '\n' : ' ');
  }
  return 0;
}

int main() {
  int bits = 0, lanes = 0;
  if (std::scanf("%d %d", &bits, &lanes) != 2) return 2;
  if (bits == 0) return check_signed_pairs();
  if (bits == -4) return check_planes(lanes);
  if (bits == -2) return check_low_planes<2>(lanes);
  if (bits == -3) return check_low_planes<3>(lanes);
  for (int lane = 0; lane < lanes; ++lane) {
    uint32_t w[4], hi[2] = {0u, 0u};
    for (auto& x : w)
      if (std::scanf("%u", &x) != 1) return 2;
    if (bits == 3)
      for (auto& x : hi)
        if (std::scanf("%u", &x) != 1) return 2;
    if (bits == 2) {
      decode_low_lane<2>(lane, w, hi);
    } else if (bits == 3) {
      decode_low_lane<3>(lane, w, hi);
    } else {
      bits == 4 ? decode_lane<4>(lane, w) : decode_lane<8>(lane, w);
    }
  }
  return 0;
}
