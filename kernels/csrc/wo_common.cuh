// Device helpers shared by the weight-only kernels: memory access with cache hints, the
// tensor-core instructions (as inline PTX, sm_80+), dtype conversions and the epilogue.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "wo_decode.cuh"
#include "wo_kernels.h"

namespace qtool {

// The L2 prefetch size the weight loads ask for: 256 bytes around each load (0 none, 128; a build option through
// QTOOL_NVCC_EXTRA=-DQTOOL_L2_PREFETCH=0 for A/Bs). Session 59 (H100, two builds, each process's ratios to bf16):
// w8_gemv +1-5% on every W8A16 and W8A8 cell it runs at 1 and 16 tokens, the A/B's (fp8 8192 x 28672 at one token
// 1.89x -> 1.97x, int8 28672 x 8192 at 16 tokens 1.75x -> 1.89x); the 4-bit GEMVs and the split variant within +-1%.
#ifndef QTOOL_L2_PREFETCH
#define QTOOL_L2_PREFETCH 256
#endif
#if QTOOL_L2_PREFETCH == 256
#define QTOOL_L2_HINT ".L2::256B"
#elif QTOOL_L2_PREFETCH == 128
#define QTOOL_L2_HINT ".L2::128B"
#else
#define QTOOL_L2_HINT ""
#endif

// Weights are read exactly once per kernel: load them past L1 so they do not evict the
// activations, which every warp re-reads.
__device__ inline uint4 load_streaming(const uint4* ptr) {  // 16-byte aligned global address
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate" QTOOL_L2_HINT ".v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(ptr));
  return v;
}

// Asks for bytes [ptr, ptr + bytes) to be brought into L2 and returns at once: on sm_90 one bulk
// (TMA) prefetch per 4 KB piece, below it one prefetch per 128-byte line. `ptr` and `bytes` are
// multiples of 16. Nothing waits for it; a kernel may exit with it in flight.
__device__ inline void prefetch_l2_range(const char* ptr, long long bytes, int thread, int threads) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr long long kPiece = 4096;
  for (long long off = static_cast<long long>(thread) * kPiece; off < bytes; off += static_cast<long long>(threads) * kPiece) {
    const unsigned size = static_cast<unsigned>(bytes - off < kPiece ? bytes - off : kPiece);
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(ptr + off), "r"(size) : "memory");
  }
#else
  for (long long off = static_cast<long long>(thread) * 128; off < bytes; off += static_cast<long long>(threads) * 128) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(ptr + off));
  }
#endif
}

// Pulls the line holding `ptr` into L1 without waiting for it and without a register.
__device__ inline void prefetch_l1(const void* ptr) { asm volatile("prefetch.global.L1 [%0];" ::"l"(ptr)); }

// The 8-byte twin of load_streaming, for the high-bit plane of 3-bit chunks.
__device__ inline uint2 load_streaming(const uint2* ptr) {  // 8-byte aligned global address
  uint2 v;
  asm volatile("ld.global.nc.L1::no_allocate" QTOOL_L2_HINT ".v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(ptr));
  return v;
}

// One lane's chunk of any width: its 16 bytes (low bits for 2-/3-bit) and, for 3-bit, its 8 bytes of
// high bits (wo_kernels.h). `vecs` points at the stripe's chunk 0 without the lane offset.
template <int BITS>
struct LaneChunk {
  uint4 lo;
  uint2 hi;  // 3-bit only; the compiler drops it elsewhere

  __device__ inline void load(const uint4* vecs, int chunk, int lane) {
    load_lane(vecs + static_cast<uint32_t>(chunk) * static_cast<uint32_t>(chunk_vecs(BITS)) + lane, lane);
  }
  // The same from this lane's 16-byte address in the chunk (vecs + chunk * chunk_vecs + lane): the high bits of
  // 3-bit codes follow the chunk's 32 rows of low bits.
  __device__ inline void load_lane(const uint4* mine, int lane) {
    lo = load_streaming(mine);
    if constexpr (BITS == 3) hi = load_streaming(reinterpret_cast<const uint2*>(mine + (32 - lane)) + lane);
  }
  __device__ inline void clear() {  // wo_stream.cu: chunks past the end contribute zeros
    lo = make_uint4(0, 0, 0, 0);
    hi = make_uint2(0, 0);
  }
};

__device__ inline void words_of(const uint4& v,       // a 16-byte load
                                uint32_t (&w)[4]) {  // out: its words, for decode_chunk
  w[0] = v.x;
  w[1] = v.y;
  w[2] = v.z;
  w[3] = v.w;
}

// 16-byte asynchronous copy global -> shared; when `valid` is false, the 16 bytes are zero-filled
// (src-size 0) and `src` is not read.
__device__ inline void cp_async_16(void* smem,        // 16-byte aligned shared address
                                   const void* src,   // 16-byte aligned global address
                                   bool valid) {      // false: write zeros
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}

// The same to a shared-memory address already converted (__cvta_generic_to_shared, once per kernel: the conversion
// costs ~10 instructions per copy under a cluster launch), always valid.
__device__ inline void cp_async_shared_16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global" QTOOL_L2_HINT " [%0], [%1], 16;" ::"r"(dst), "l"(src));
}

// 4 bytes (cp.async's .ca form: the only one below 16 bytes); the reader is the copying thread after cp_async_wait.
__device__ inline void cp_async_shared_4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(dst), "l"(src));
}

__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int N>  // groups allowed to stay in flight
__device__ inline void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// A pointer whose value the compiler cannot know before this point: loads through the result cannot
// be hoisted above it, not even __ldg loads, which the compiler may treat as loads of invariant
// memory and move freely. The kernels use it to keep their activation loads behind the weight loads
// they issue first (the order every measurement in kernels/NOTES.md ran with).
template <typename P>
__device__ inline P* opaque(P* ptr) {
  asm volatile("" : "+l"(ptr));
  return ptr;
}

// Four 8x8 b16 matrices from shared memory; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ inline void ldmatrix_x4(uint32_t (&r)[4],   // out: r[i] = this lane's pair of matrix i
                                   const void* row) {  // 16-byte aligned shared address of this lane's row
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// Two 8x8 matrices; lanes 0..15 give the row addresses.
__device__ inline void ldmatrix_x2(uint32_t (&r)[2],   // out: r[i] = this lane's pair of matrix i
                                   const void* row) {  // 16-byte aligned shared address (lanes 0..15)
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
}

// d += A (16x16, row-major) * B (16x8, column-major), float32 accumulation. Fragments as in the
// PTX ISA for mma.m16n8k16: a = 4 registers of 2 elements, b0/b1 = k 0..7 / 8..15 of column lane / 4.
template <typename T>  // element type of A and B: __half or __nv_bfloat16
__device__ inline void mma_16816(float (&d)[4],            // C fragment, accumulated in place
                                 const uint32_t (&a)[4],   // A fragment
                                 uint32_t b0, uint32_t b1);  // B fragment

template <>
__device__ inline void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ inline void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// --- conversions between 32-bit registers, pairs and floats -------------------------------
template <typename T2>  // __half2 or __nv_bfloat162
__device__ inline uint32_t as_u32(T2 v) {
  return *reinterpret_cast<uint32_t*>(&v);
}

template <typename T2>  // __half2 or __nv_bfloat162
__device__ inline T2 as_pair(uint32_t u) {
  return *reinterpret_cast<T2*>(&u);
}

__device__ inline float2 pair_to_float2(uint32_t u, __nv_bfloat16) {
  return __bfloat1622float2(as_pair<__nv_bfloat162>(u));
}
__device__ inline float2 pair_to_float2(uint32_t u, __half) { return __half22float2(as_pair<__half2>(u)); }

__device__ inline uint32_t float2_to_pair(float lo, float hi, __nv_bfloat16) {
  return as_u32(__floats2bfloat162_rn(lo, hi));
}
__device__ inline uint32_t float2_to_pair(float lo, float hi, __half) { return as_u32(__floats2half2_rn(lo, hi)); }

// A gated MLP's SiLU-and-multiply in float32 (silu_mul.cu, and x_planes' gated form in wo_planes.cu).
__device__ inline float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// v rounded to T, as a float.
template <typename T>
__device__ inline float round_to(float v) {
  return pair_to_float2(float2_to_pair(v, 0.0f, T{}), T{}).x;
}

// f(a_i, b_i) in float32 for the eight values of two vectors of T, each rounded once to T.
template <typename T, class F>
__device__ inline uint4 zip_vec(const uint4 a, const uint4 b, F&& f) {
  uint4 out;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 x = pair_to_float2((&a.x)[j], T{}), y = pair_to_float2((&b.x)[j], T{});
    (&out.x)[j] = float2_to_pair(f(x.x, y.x), f(x.y, y.y), T{});
  }
  return out;
}

// silu(g) * u of the eight values in each of gate / up, rounded once to T (as silu_mul writes them).
template <typename T>
__device__ inline uint4 silu_times_vec(const uint4 gate, const uint4 up) {
  return zip_vec<T>(gate, up, silu_times);
}

__device__ inline uint32_t float_to_pair(float v, __nv_bfloat16) { return as_u32(__float2bfloat162_rn(v)); }
__device__ inline uint32_t float_to_pair(float v, __half) { return as_u32(__float2half2_rn(v)); }

__device__ inline uint32_t sub_pair(uint32_t a, uint32_t b, __nv_bfloat16) {
  return as_u32(__hsub2(as_pair<__nv_bfloat162>(a), as_pair<__nv_bfloat162>(b)));
}
__device__ inline uint32_t sub_pair(uint32_t a, uint32_t b, __half) {
  return as_u32(__hsub2(as_pair<__half2>(a), as_pair<__half2>(b)));
}

__device__ inline void store(__nv_bfloat16* y, float v) { *y = __float2bfloat16_rn(v); }
__device__ inline void store(__half* y, float v) { *y = __float2half_rn(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline float to_float(__half v) { return __half2float(v); }

// --- epilogue ------------------------------------------------------------------------------
__device__ inline float activate(float v,            // the biased output
                                 Activation act) {  // which function
  switch (act) {
    case Activation::kSilu:
      return v / (1.0f + __expf(-v));
    case Activation::kGelu:  // the exact (erf) GELU, as torch.nn.functional.gelu by default
      return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    default:
      return v;
  }
}

__device__ inline float bias_at(const float* bias, int n) { return bias == nullptr ? 0.0f : __ldg(bias + n); }

// Scale and zero point of `row` for group `grp`; the zero point is 0 when symmetric.
__device__ inline float2 group_params(const PackedWeightView& w,  // the weight
                                     int grp,                     // group index along k
                                     int row) {                   // weight row < n_padded
  const size_t i = static_cast<size_t>(grp) * w.n_padded + row;
  return make_float2(__ldg(w.scale + i), w.zero == nullptr ? 0.0f : __ldg(w.zero + i));
}

// --- A fragments (q - zero_point) of one lane's chunk, shared by wo_gemv and wo_gemm_v3 ----------
// bf16 holds integers exactly only up to 256 and has no "magic + byte" form with step 1, so int8
// codes for bf16 go through float32 (2^23 + u, minus 2^23 + 128 + z, exact). q - z is an integer with at most 8
// significant bits (|q - z| <= 255 for integer zero points, which checkpoints store), so the upper half of that
// float32 already is its bf16, exactly: one byte permute packs two (as w8_gemv does), no conversion.
template <typename T, int BITS>
constexpr bool kViaFloat = BITS == 8 && std::is_same_v<T, __nv_bfloat16>;

// What is subtracted from a biased code to leave q - zero_point (the zero point is added per group):
// int4: base + 8 (PairTraits); int8 fp16: 1024 + 128; int8 bf16 (float32): 2^23 + 128.
// 2-/3-bit: base + 2 / base + 4.
template <typename T, int BITS>
constexpr float kCodeOffset = BITS <= 4 ? PairTraits<T>::kBase + (1 << (BITS - 1))
                              : kViaFloat<T, BITS> ? kInt8Magic + 128.0f : 1152.0f;

// A fragment (q - z, one pair per register) of subtile j of a lane's chunk. zf: the row's
// kCodeOffset + z as float32 (exact: a small integer); zp: the same as a pair of T.
template <typename T, int BITS>
__device__ inline void a_fragment(const uint32_t (&w)[4],    // the lane's 16 bytes
                                  int j,                     // subtile
                                  const float (&zf)[2],      // rows g / g + 8 (register p: row p % 2)
                                  const uint32_t (&zp)[2],   // same, packed
                                  uint32_t (&a)[4]) {        // out
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    if constexpr (BITS == 4) {
      a[r] = sub_pair(int4_pair_biased<T>(w[j], r), zp[r % 2], T{});
    } else if constexpr (!kViaFloat<T, BITS>) {
      a[r] = sub_pair(int8_pair_biased_half(w[2 * j + r / 2], r), zp[r % 2], T{});
    } else {
      const uint32_t word = w[2 * j + r / 2];
      const int b = 2 * (r % 2);
      const float lo = int8_f32_magic(word, b) - zf[r % 2], hi = int8_f32_magic(word, b + 1) - zf[r % 2];
      a[r] = byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632);
    }
  }
}

// The same for subtile j of a 2- or 3-bit chunk: a word of nibbles (low_bit_nibbles), then as int4.
template <typename T, int BITS>  // BITS 2 or 3
__device__ inline void a_fragment_low(const uint32_t (&lo)[4],   // the lane's 16 bytes of low bits
                                      const uint32_t (&hi)[2],   // its 8 bytes of high bits (3-bit)
                                      int j,                     // subtile 0..7
                                      const uint32_t (&zp)[2],   // rows g / g + 8: kCodeOffset + z, packed
                                      uint32_t (&a)[4]) {        // out
  const uint32_t nib = low_bit_nibbles<BITS>(lo, hi, j);
#pragma unroll
  for (int r = 0; r < 4; ++r) a[r] = sub_pair(nibble_pair_biased<T, BITS>(nib, r), zp[r % 2], T{});
}

// The A fragment of subtile j of a lane's chunk, any width: a_fragment_low for 2- and 3-bit codes (hi: their
// high bits, 3-bit only), a_fragment for 4- and 8-bit ones.
template <typename T, int BITS>
__device__ inline void a_fragment_any(const uint32_t (&w)[4],    // the lane's 16 bytes
                                      const uint32_t (&hi)[2],   // its 8 bytes of high bits (3-bit)
                                      int j,                     // subtile
                                      const float (&zf)[2],      // rows g / g + 8: kCodeOffset + z
                                      const uint32_t (&zp)[2],   // same, packed
                                      uint32_t (&a)[4]) {        // out
  if constexpr (is_low_bits(BITS)) {
    a_fragment_low<T, BITS>(w, hi, j, zp, a);
  } else {
    a_fragment<T, BITS>(w, j, zf, zp, a);
  }
}

// Block b of the grid asks for the b-th slice of bytes [ptr, ptr + bytes) to be brought into L2 (nothing when
// ptr is null). A GEMV calls it once its own weight loads have landed, with the next layer's weight: that weight's
// DRAM traffic then overlaps this kernel's tail and the small kernels (norm, attention) between the two GEMVs,
// when DRAM would otherwise sit idle. How much to ask for is the caller's (quantize/linear.py, link_prefetch).
__device__ inline void prefetch_slice(const void* ptr, long long bytes, int threads) {
  if (ptr == nullptr) return;
  const long long slice = ((bytes + gridDim.x - 1) / gridDim.x + 15) & ~15LL;
  const long long begin = slice * blockIdx.x;
  if (begin < bytes) {
    const long long size = bytes - begin < slice ? bytes - begin : slice;
    prefetch_l2_range(static_cast<const char*>(ptr) + begin, size, threadIdx.x, threads);
  }
}

__device__ inline void prefetch_next_layer(const WoProblem& p, int threads) {
  prefetch_slice(p.prefetch, p.prefetch_bytes, threads);
}

}  // namespace qtool
