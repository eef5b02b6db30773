// Fused activation quantization: one kernel turns fp16/bf16 activations into 8-bit codes and float32
// scales, replacing the reference's several passes (abs, amax, divide, round, clamp, cast).
//
// Arithmetic is the reference's (quantize/primitives.py) bit for bit: scale = amax / D rounded once
// from double (D = 127.5 for int8, the format's largest finite value for FP8), an all-zero range gets
// scale 1, codes = round-half-even(x / scale) clamped to [-128, 127], or the saturating FP8 cast of
// x / scale (IEEE division: this file is compiled without fast-math).
//
//   per token / static   one block per row. Rows of up to kMaxHeldVecs x 2048 elements (K <= 32768) are held
//                        in registers: every 16-byte load of the row is issued before the first max, and the
//                        row is read from DRAM once. Longer or unaligned rows are read twice (the second read
//                        hits L2 while the rows in flight fit in it: at K = 28672, 8 rows per SM are 60 MB,
//                        the H200's whole L2, and that path streamed 2.0 TB/s where K = 4096 streamed 2.6).
//   1 x g groups         g / 8 consecutive lanes own one group, 8 elements each: one pass, registers only
//   split (int8x2)       per token, two int8 planes of each row (w8a8.h): the held-row kernel, k <= kMaxSplitK
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "pdl.cuh"
#include "w8a8.h"
#include "wo_common.cuh"  // to_float

namespace qtool {
namespace {

constexpr int kRowThreads = 256;
constexpr int kVec = 8;  // elements per 16-byte load of fp16/bf16

template <CodeFormat F>
__device__ inline double code_max();  // the divisor D of the module comment
template <>
__device__ inline double code_max<CodeFormat::kInt8>() { return 127.5; }
template <>
__device__ inline double code_max<CodeFormat::kE4M3>() { return 448.0; }
template <>
__device__ inline double code_max<CodeFormat::kE5M2>() { return 57344.0; }

template <CodeFormat F>
__device__ inline float scale_from_amax(float amax) {
  const float s = static_cast<float>(static_cast<double>(amax) / code_max<F>());
  return s > 0.0f ? s : 1.0f;  // all zeros (or NaN) -> 1, like the reference
}

template <CodeFormat F>
__device__ inline uint8_t encode(float v) {  // v = x / scale
  if constexpr (F == CodeFormat::kInt8) {
    // One conversion rounds half to even (torch.round) and clamps to [-128, 127] (a conversion to an integer type
    // saturates), where rintf, fmaxf, fminf and a conversion took four instructions, two of them at the quarter
    // rate of the conversion unit: int8 rows ran 2.7 TB/s against e4m3's 3.7 (H200, 8192 x 8192, session 20).
    uint32_t r;
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(r) : "f"(v));
    return static_cast<uint8_t>(r);
  } else if constexpr (F == CodeFormat::kE4M3) {
    return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
  } else {
    return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E5M2));
  }
}

// Loads elements [col, col + kVec) of a row as floats; with Vector, one 16-byte load.
template <typename T, bool Vector>
__device__ inline void load_vec(const T* row, int col, int k, float (&v)[kVec]) {
  if constexpr (Vector) {
    const uint4 raw = *reinterpret_cast<const uint4*>(row + col);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = to_float(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = col + i < k ? to_float(row[col + i]) : 0.0f;
  }
}

template <bool Vector>
__device__ inline void store_packed(uint8_t* row, int col, int k, const uint8_t (&c)[kVec]) {
  if constexpr (Vector) {
    uint2 packed;
    packed.x = c[0] | (c[1] << 8) | (c[2] << 16) | (static_cast<uint32_t>(c[3]) << 24);
    packed.y = c[4] | (c[5] << 8) | (c[6] << 16) | (static_cast<uint32_t>(c[7]) << 24);
    *reinterpret_cast<uint2*>(row + col) = packed;
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i)
      if (col + i < k) row[col + i] = c[i];
  }
}

template <CodeFormat F, bool Vector>
__device__ inline void store_codes(uint8_t* row, int col, int k, const float (&v)[kVec], float scale) {
  uint8_t c[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) c[i] = encode<F>(v[i] / scale);
  store_packed<Vector>(row, col, k, c);
}

// The two int8 planes of a split row (w8a8.h, ActQuantProblem::split): hi = codes of v / scale, lo = codes of the
// residual v - hi * scale over lo_scale. The residual is rounded as the reference computes it (a product, then a
// difference: no fused multiply-add), so the codes match it bit for bit.
__device__ inline void store_split(uint8_t* hi_row, uint8_t* lo_row, int col, const float (&v)[kVec], float scale,
                                   float lo_scale) {
  uint8_t hi[kVec], lo[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    hi[i] = encode<CodeFormat::kInt8>(v[i] / scale);
    const float rest = __fsub_rn(v[i], __fmul_rn(static_cast<float>(static_cast<int8_t>(hi[i])), scale));
    lo[i] = encode<CodeFormat::kInt8>(rest / lo_scale);
  }
  store_packed<true>(hi_row, col, 0, hi);
  store_packed<true>(lo_row, col, 0, lo);
}

__device__ inline float block_max(float v, float* shared) {  // shared: kRowThreads / 32 floats
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < kRowThreads / 32 ? shared[lane] : 0.0f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One block per row: amax over the row (skipped for a static scale), then the codes.
template <typename T, CodeFormat F, bool Vector>
__global__ void __launch_bounds__(kRowThreads) quantize_rows(ActQuantProblem p) {
  qtool::pdl_release();  // the GEMM after this waits for all of it; its launch need not
  __shared__ float partial[kRowThreads / 32];
  const int row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride;
  uint8_t* q = static_cast<uint8_t*>(p.q) + static_cast<long long>(row) * p.k;
  float v[kVec];
  float scale;
  if (p.static_scale != nullptr) {
    scale = __ldg(p.static_scale);
    if (threadIdx.x == 0) p.scale[row] = scale;
  } else {
    float amax = 0.0f;
    for (int col = threadIdx.x * kVec; col < p.k; col += kRowThreads * kVec) {
      load_vec<T, Vector>(x, col, p.k, v);
#pragma unroll
      for (int i = 0; i < kVec; ++i) amax = fmaxf(amax, fabsf(v[i]));
    }
    scale = scale_from_amax<F>(block_max(amax, partial));
    if (threadIdx.x == 0) p.scale[row] = scale;
  }
  for (int col = threadIdx.x * kVec; col < p.k; col += kRowThreads * kVec) {
    load_vec<T, Vector>(x, col, p.k, v);
    store_codes<F, Vector>(q, col, p.k, v, scale);
  }
}

// Lanes = group_size / 8 consecutive threads per group; a thread's global index picks (row, group, lane).
template <typename T, CodeFormat F, int Lanes>
__global__ void __launch_bounds__(kRowThreads) quantize_groups(ActQuantProblem p) {
  qtool::pdl_release();  // the GEMM after this waits for all of it; its launch need not
  constexpr int kGroup = Lanes * kVec;
  const int groups = (p.k + kGroup - 1) / kGroup;
  const long long slot = (static_cast<long long>(blockIdx.x) * kRowThreads + threadIdx.x) / Lanes;
  const int lane = threadIdx.x % Lanes;
  const bool live = slot < static_cast<long long>(p.m) * groups;  // dead lanes still join the shuffles
  const int row = live ? static_cast<int>(slot / groups) : 0;
  const int grp = live ? static_cast<int>(slot % groups) : 0;
  const int col = grp * kGroup + lane * kVec;
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride;
  float v[kVec];
  const bool in_row = live && col < p.k;  // k % 8 == 0 here: a vector is all in or all out
  if (in_row) {
    load_vec<T, true>(x, col, p.k, v);
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = 0.0f;
  }
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kVec; ++i) amax = fmaxf(amax, fabsf(v[i]));
#pragma unroll
  for (int o = Lanes / 2; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o, Lanes));
  const float scale = scale_from_amax<F>(amax);
  if (live && lane == 0) p.scale[row * p.s_row + grp * p.s_col] = scale;
  if (in_row) store_codes<F, true>(static_cast<uint8_t*>(p.q) + static_cast<long long>(row) * p.k, col, p.k, v, scale);
}

constexpr int kMaxHeldVecs = 16;  // 16-byte vectors per thread held in registers: 64 registers at most

// quantize_rows for rows of at most HELD x kRowThreads x kVec elements (k % 8 == 0, 16-byte aligned): the row's
// raw 16-byte vectors stay in registers between the max and the codes. Split: int8's two planes (store_split), the
// second scale scale / 255 (the residual is at most scale / 2 = 127.5 of it).
template <typename T, CodeFormat F, int HELD, bool Split = false>
__global__ void __launch_bounds__(kRowThreads) quantize_held_rows(ActQuantProblem p) {
  qtool::pdl_release();  // the GEMM after this waits for all of it; its launch need not
  __shared__ float partial[kRowThreads / 32];
  const int row = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + row * p.x_stride;
  uint8_t* q = static_cast<uint8_t*>(p.q) + static_cast<long long>(row) * p.k;
  uint4 raw[HELD];
#pragma unroll
  for (int i = 0; i < HELD; ++i) {  // all loads first: HELD x 16 bytes in flight per thread
    const int col = (threadIdx.x + i * kRowThreads) * kVec;
    raw[i] = col < p.k ? *reinterpret_cast<const uint4*>(x + col) : make_uint4(0, 0, 0, 0);
  }
  float scale;
  if (p.static_scale != nullptr) {
    scale = __ldg(p.static_scale);
  } else {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < HELD; ++i) {
      const T* e = reinterpret_cast<const T*>(&raw[i]);
#pragma unroll
      for (int j = 0; j < kVec; ++j) amax = fmaxf(amax, fabsf(to_float(e[j])));
    }
    scale = scale_from_amax<F>(block_max(amax, partial));
  }
  const float lo_scale = scale / 255.0f;
  if (threadIdx.x == 0) {
    p.scale[row] = scale;
    if constexpr (Split) p.scale[p.m + row] = lo_scale;
  }
#pragma unroll
  for (int i = 0; i < HELD; ++i) {
    const int col = (threadIdx.x + i * kRowThreads) * kVec;
    if (col >= p.k) break;
    const T* e = reinterpret_cast<const T*>(&raw[i]);
    float v[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = to_float(e[j]);
    if constexpr (Split)
      store_split(q, q + static_cast<long long>(p.m) * p.k, col, v, scale, lo_scale);
    else
      store_codes<F, true>(q, col, p.k, v, scale);
  }
}

// The held-row kernel for k elements: the smallest power-of-two count of vectors per thread that covers it.
template <typename T, CodeFormat F, bool Split = false>
bool launch_held_rows(const ActQuantProblem& p, cudaStream_t stream) {
  static_assert(kMaxHeldVecs * kRowThreads * kVec == kMaxSplitK, "w8a8.h's kMaxSplitK is the held rows' limit");
  const int vecs = (p.k + kRowThreads * kVec - 1) / (kRowThreads * kVec);
  if (vecs <= 1) return quantize_held_rows<T, F, 1, Split><<<p.m, kRowThreads, 0, stream>>>(p), true;
  if (vecs <= 2) return quantize_held_rows<T, F, 2, Split><<<p.m, kRowThreads, 0, stream>>>(p), true;
  if (vecs <= 4) return quantize_held_rows<T, F, 4, Split><<<p.m, kRowThreads, 0, stream>>>(p), true;
  if (vecs <= 8) return quantize_held_rows<T, F, 8, Split><<<p.m, kRowThreads, 0, stream>>>(p), true;
  if (vecs <= kMaxHeldVecs)
    return quantize_held_rows<T, F, kMaxHeldVecs, Split><<<p.m, kRowThreads, 0, stream>>>(p), true;
  return false;
}

template <typename T, CodeFormat F>
void launch_typed(const ActQuantProblem& p, cudaStream_t stream) {
  if constexpr (F == CodeFormat::kInt8) {
    if (p.split) {  // ops_w8a8.cpp checked k <= kMaxSplitK, k % 8 == 0 and aligned rows
      launch_held_rows<T, F, true>(p, stream);
      return;
    }
  }
  if (p.group_size == 0) {
    const bool vector = p.k % kVec == 0 && p.x_stride % kVec == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0;
    if (vector && launch_held_rows<T, F>(p, stream)) return;
    if (vector)
      quantize_rows<T, F, true><<<p.m, kRowThreads, 0, stream>>>(p);
    else
      quantize_rows<T, F, false><<<p.m, kRowThreads, 0, stream>>>(p);
    return;
  }
  const int lanes = p.group_size / kVec;
  const long long groups = (p.k + p.group_size - 1) / p.group_size;
  const long long threads = static_cast<long long>(p.m) * groups * lanes;
  const unsigned blocks = static_cast<unsigned>((threads + kRowThreads - 1) / kRowThreads);
  switch (lanes) {
    case 1: quantize_groups<T, F, 1><<<blocks, kRowThreads, 0, stream>>>(p); break;
    case 2: quantize_groups<T, F, 2><<<blocks, kRowThreads, 0, stream>>>(p); break;
    case 4: quantize_groups<T, F, 4><<<blocks, kRowThreads, 0, stream>>>(p); break;
    case 8: quantize_groups<T, F, 8><<<blocks, kRowThreads, 0, stream>>>(p); break;
    case 16: quantize_groups<T, F, 16><<<blocks, kRowThreads, 0, stream>>>(p); break;
    default: quantize_groups<T, F, 32><<<blocks, kRowThreads, 0, stream>>>(p); break;
  }
}

template <typename T>
void launch_format(const ActQuantProblem& p, cudaStream_t stream) {
  switch (p.format) {
    case CodeFormat::kInt8: launch_typed<T, CodeFormat::kInt8>(p, stream); break;
    case CodeFormat::kE4M3: launch_typed<T, CodeFormat::kE4M3>(p, stream); break;
    default: launch_typed<T, CodeFormat::kE5M2>(p, stream); break;
  }
}

}  // namespace

void launch_act_quant(const ActQuantProblem& p, cudaStream_t stream) {
  if (p.m == 0 || p.k == 0) return;
  if (p.dtype == ScalarKind::kBFloat16)
    launch_format<__nv_bfloat16>(p, stream);
  else
    launch_format<__half>(p, stream);
}

}  // namespace qtool
