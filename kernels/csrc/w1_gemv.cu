// GEMV for 1-bit weights with 16-bit activations, m <= 8 tokens (W1A16, issue 21):
// y[m, n] = sum_k x[m, k] * code[n, k] * scale[n, group(k)] with code = +-1.
//
// Bandwidth. 8192 x 8192 is 8.4 MB of sign bits plus 4.2 MB of float32 g64 scales, ~3 us at the H200's
// 4.3 TB/s, against the 134 MB of the bf16 weight. So the kernel must keep many bytes in flight and
// spend few instructions per bit: a CUDA-core "select and add" costs about one instruction per bit
// and token, which at 8192 x 8192 is ~2 us of issue per token on 132 SMs.
//
// Select and add on the tensor cores. +1 and -1 are exact in bf16 and fp16 and differ only in the
// sign bit, so a code becomes its 16-bit value with one shift and one LOP3: the layout
// (kernels/binary.py) puts the codes of register p of step j at bits 15 - s and 31 - s of word j / 4
// (s = 4 (j % 4) + p), and ((word << s) & 0x80008000) ^ (-1, -1) is the pair. mma.m16n8k16 then adds
// the 16 x 16 x (up to 8 tokens) products in float32: the cost per bit does not grow with m.
// The k order inside a step is permuted so that lane t's four B values (logical k 2t, 2t+1, 2t+8,
// 2t+9) are the physical k 4t..4t+3: one 8-byte shared-memory load per step.
//
// Work split. A block owns two 16-row stripes (x staged once for 32 rows); its 8 warps take the
// 256-k chunks round-robin and serve both stripes from each B load. The weight stream goes through a
// per-warp ring of kW1Ring chunk slots in shared memory, filled with cp.async (16 bytes of codes per lane
// and stripe, then the chunk's fragment-ordered scales), so the loads in flight cost no registers: at
// K = 8192 every warp asks for all of its chunks before any math (the register ring it replaced kept two,
// and paid a DRAM round trip per refill; kernels/NOTES.md). Per-group partial sums are scaled in float32
// once per group; one scale per row is applied in the epilogue. Launch plan: w1_gemv_plan.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "pdl.cuh"
#include "w1_gemv_plan.h"
#include "w1_kernels.h"
#include "wo_common.cuh"

namespace qtool {
namespace {

constexpr int kWarps = kW1Warps;
constexpr int kStripes = 2;        // 16-row stripes per block
constexpr int kSteps = 16;         // 16-k mma steps per chunk
static_assert(kW1PlanRows == kW1GemvRows && kW1PlanTokens == kMaxW1GemvTokens, "w1_gemv_plan.h is out of date");

__host__ __device__ constexpr int xs_row_words(int k_padded) { return w1_xs_row_bytes(k_padded) / 4; }

template <typename T>
constexpr uint32_t kMinusOnes = std::is_same_v<T, __half> ? 0xBC00BC00u : 0xBF80BF80u;  // (-1, -1)

// The A register for the codes at bits 15 - s and 31 - s of `word`: the pair `base` (as T) with its sign flipped
// where the bit is set, so base = (-1, -1) gives +-1 for codes +-1 (sign_pair) and base = (v, v) gives -code * v.
// One shift and one LOP3. Written as C++, nvcc emits the AND and the XOR as two LOP3 (each takes one immediate):
// 3 instructions per register, 12 per mma, and Nsight found the kernel issue-bound (session 17: "wait", "not
// selected", "math pipe throttle" the largest stalls, 5.6 cycles per instruction). With both constants as operands
// of one lop3 the two fold into one instruction: 10.0 us instead of 11.6 at one token on 8192 x 8192.
__device__ inline uint32_t signed_pair(uint32_t word, int s, uint32_t base) {
  uint32_t pair;
  asm("lop3.b32 %0, %1, %2, %3, 0x6A;"  // (a & b) ^ c
      : "=r"(pair)
      : "r"(word << s), "r"(0x80008000u), "r"(base));
  return pair;
}

template <typename T>
__device__ inline uint32_t sign_pair(uint32_t word, int s) {  // +-1
  return signed_pair(word, s, kMinusOnes<T>);
}

// This lane's words of one chunk (both stripes) and its rows' scales of the chunk's groups, from a ring slot.
template <int GPC>
struct ChunkRegs {
  static constexpr int NS = GPC == 0 ? 1 : GPC;
  uint32_t w[kStripes][4];
  float sc[kStripes][2 * NS];  // [stripe][row g: groups 0..NS-1, row g + 8: groups]

  __device__ void read(const uint4* slot, int lane) {
#pragma unroll
    for (int s = 0; s < kStripes; ++s) words_of(slot[s * 32 + lane], w[s]);
    if constexpr (GPC > 0) {
      const float* f = reinterpret_cast<const float*>(slot + kStripes * 32) + (lane / 4) * 2 * NS;
#pragma unroll
      for (int s = 0; s < kStripes; ++s) {
        if constexpr (NS == 1) {
          const float2 v = *reinterpret_cast<const float2*>(f + s * 16 * NS);
          sc[s][0] = v.x;
          sc[s][1] = v.y;
        } else {
#pragma unroll
          for (int i = 0; i < NS / 2; ++i) {
            const float4 v = *reinterpret_cast<const float4*>(f + s * 16 * NS + 4 * i);
            sc[s][4 * i] = v.x;
            sc[s][4 * i + 1] = v.y;
            sc[s][4 * i + 2] = v.z;
            sc[s][4 * i + 3] = v.w;
          }
        }
      }
    }
  }
};

// B words of step j of a chunk: x staged in shared memory or read through L1.
template <bool XS>
__device__ inline uint2 b_words(const uint32_t* xc, int j) {
  if constexpr (XS) return *reinterpret_cast<const uint2*>(xc + 8 * j);
  return __ldg(reinterpret_cast<const uint2*>(xc + 8 * j));
}

// SA (grouped scales; the default since session 18): the group scale rounded to T is the A values' magnitude, +-s
// instead of +-1, so the mma accumulates the scaled sums directly and the 32 FFMA per chunk that scale each group's
// sum go (the same LOP3 per register, 16 conversions per chunk in their place: 382 -> 356 instructions per chunk,
// 112 -> 80 registers). The pair (s, s) with a set bit's sign flipped is -code * s: the kernel negates the sum once
// at the end instead of each pair. T's rounding of s (2^-9 relative for bf16) is the dequantize-to-T semantics of
// any dequant + GEMM path. Two accumulators take the steps in turn: the mma chain of a chunk is 8 deep, not 16.
// Measured (H200, session 18, graph replay, same build): 8192 x 8192 9.1 -> 8.3 us at one token (3.79x -> 4.08x
// bf16), 28672 x 8192 at 2-8 tokens 42.3-55.1 -> 27.5-33.7 us; faster on every shape and batch of 1-8 tokens.
template <typename T, int GPC, bool XS>
__device__ inline void chunk_math_scaled(const ChunkRegs<GPC>& cr, const uint32_t* xc, float (&acc)[2][kStripes][4]) {
  constexpr int NS = ChunkRegs<GPC>::NS, SPG = kSteps / NS;
  uint32_t pos[kStripes][2][NS];  // (s, s) as T: [stripe][row g, row g + 8][group]
#pragma unroll
  for (int s = 0; s < kStripes; ++s) {
#pragma unroll
    for (int q = 0; q < NS; ++q) {
      pos[s][0][q] = float2_to_pair(cr.sc[s][q], cr.sc[s][q], T{});  // one F2FP (float_to_pair: F2F + PRMT)
      pos[s][1][q] = float2_to_pair(cr.sc[s][NS + q], cr.sc[s][NS + q], T{});
    }
  }
#pragma unroll
  for (int j = 0; j < kSteps; ++j) {
    const uint2 b = b_words<XS>(xc, j);
#pragma unroll
    for (int s = 0; s < kStripes; ++s) {
      uint32_t a[4];  // registers 0, 2: row g; 1, 3: row g + 8
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = signed_pair(cr.w[s][j / 4], 4 * (j % 4) + r, pos[s][r % 2][j / SPG]);
      mma_16816<T>(acc[j % 2][s], a, b.x, b.y);
    }
  }
}

// One chunk's 16 mma steps for both stripes, scaled per group into acc. xc: this lane's B words of the chunk.
template <typename T, int GPC, bool XS>
__device__ inline void chunk_math(const ChunkRegs<GPC>& cr, const uint32_t* xc, float (&acc)[kStripes][4]) {
  constexpr int NS = ChunkRegs<GPC>::NS, SPG = kSteps / NS;
#pragma unroll
  for (int q = 0; q < NS; ++q) {
    float d[kStripes][4] = {};
#pragma unroll
    for (int jj = 0; jj < SPG; ++jj) {
      const int j = q * SPG + jj;
      const uint2 b = b_words<XS>(xc, j);
#pragma unroll
      for (int s = 0; s < kStripes; ++s) {
        uint32_t a[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) a[r] = sign_pair<T>(cr.w[s][j / 4], 4 * (j % 4) + r);
        mma_16816<T>(d[s], a, b.x, b.y);
      }
    }
#pragma unroll
    for (int s = 0; s < kStripes; ++s) {
      if constexpr (GPC > 0) {
        acc[s][0] = fmaf(cr.sc[s][q], d[s][0], acc[s][0]);
        acc[s][1] = fmaf(cr.sc[s][q], d[s][1], acc[s][1]);
        acc[s][2] = fmaf(cr.sc[s][NS + q], d[s][2], acc[s][2]);
        acc[s][3] = fmaf(cr.sc[s][NS + q], d[s][3], acc[s][3]);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[s][i] += d[s][i];
      }
    }
  }
}

// B: token g (token 0 for g >= m: those mma columns are never stored), words 2t, 2t + 1 of each step. XS: all of x
// copied into shared memory first (`copy` moves one 16-byte piece: cp.async, or a plain load and store); else read
// through L1. Returns this lane's first B word.
template <bool XS, typename Copy>
__device__ inline const uint32_t* stage_x(const W1GemvProblem& p, uint4* smem, int g, int t, Copy copy) {
  if constexpr (XS) {
    const int vecs = p.k_padded / 8, row_vecs = xs_row_words(p.k_padded) / 4;
    const uint4* xg = opaque(static_cast<const uint4*>(p.x));
#pragma unroll 4
    for (int i = threadIdx.x; i < p.m * vecs; i += kWarps * 32) {
      const int tok = i / vecs;
      copy(smem + tok * row_vecs + (i - tok * vecs), xg + i);
    }
    return reinterpret_cast<const uint32_t*>(smem) + (g < p.m ? g : 0) * xs_row_words(p.k_padded) + 2 * t;
  }
  return opaque(static_cast<const uint32_t*>(p.x)) + (g < p.m ? g : 0) * (p.k_padded / 2) + 2 * t;
}

template <typename T,    // activation and output type: __half or __nv_bfloat16
          int GPC,       // scale groups per chunk: 1, 2, 4, 8; 0: one scale per row (applied at the end)
          bool XS,       // x staged in shared memory (else its B loads go to global memory through L1)
          bool SA = false,  // grouped scales as the A values' magnitude (chunk_math_scaled)
          bool Pdl = false>  // QTOOL_PDL=2 (unmeasured): the ring's copies before griddepcontrol.wait, x after it
__global__ void __launch_bounds__(kWarps * 32) w1_gemv_kernel(const W1GemvProblem p) {
  static_assert(!SA || GPC > 0, "per-channel scales are applied once at the end");
  extern __shared__ uint4 smem[];  // all shared memory, laid out by w1_gemv_plan.h
  constexpr int NS = ChunkRegs<GPC>::NS;  // scale groups per chunk held per row
  constexpr int kSlotVecs = w1_slot_bytes(GPC) / 16;
  constexpr int kScaleVecs = GPC == 0 ? 0 : kStripes * 4 * NS;  // 16-byte pieces of a chunk's scales, both stripes
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;   // A: rows g, g + 8; B and C: token g / tokens 2t, 2t + 1
  const int stripe0 = blockIdx.x * kStripes;
  const int nchunks = p.k_padded / kW1ChunkK;
  const size_t stripe_vecs = static_cast<size_t>(nchunks) * 32;  // uint4 per stripe
  const uint4* wq = reinterpret_cast<const uint4*>(p.qweight) + stripe0 * stripe_vecs + lane;
  // Grouped scales [stripe, chunk, 8, 2, NS] floats: 4 NS uint4 per (stripe, chunk).
  const uint4* sq = reinterpret_cast<const uint4*>(p.scale) + static_cast<size_t>(stripe0) * nchunks * 4 * NS;
  uint4* ring = smem + w1_ring_offset(XS, p.m, p.k_padded) / 16 + warp * kW1Ring * kSlotVecs;

  // Chunk c into ring slot `slot`, by this warp's lanes; one cp.async group per call (empty past the end, so
  // that "all but the newest kW1Ring - 1 groups" is always the oldest chunk).
  auto issue = [&](int slot, int c) {
    if (c < nchunks) {
      uint4* dst = ring + slot * kSlotVecs;
#pragma unroll
      for (int s = 0; s < kStripes; ++s) cp_async_16(dst + s * 32 + lane, wq + s * stripe_vecs + c * 32, true);
#pragma unroll
      for (int i = lane; i < kScaleVecs; i += 32) {
        const int s = i / (4 * NS);
        cp_async_16(dst + kStripes * 32 + i, sq + (static_cast<size_t>(s) * nchunks + c) * 4 * NS + (i - s * 4 * NS),
                    true);
      }
    }
    cp_async_commit();
  };

  // x goes first (one small cp.async group, mostly L2 hits), then every warp asks for its first kW1Ring chunks: at
  // K = 8192 that is all of them, 48 KB per block at g64, before any math.
  const uint32_t* x;
  if constexpr (Pdl) {  // the ring first, then (once the kernel before has finished) x with plain loads
#pragma unroll
    for (int r = 0; r < kW1Ring; ++r) issue(r, warp + r * kWarps);
    pdl_wait_then_release();
    x = stage_x<XS>(p, smem, g, t, [](uint4* dst, const uint4* src) { *dst = *src; });
    if constexpr (XS) __syncthreads();
  } else {
    x = stage_x<XS>(p, smem, g, t, [](uint4* dst, const uint4* src) { cp_async_16(dst, src, true); });
    if constexpr (XS) cp_async_commit();
#pragma unroll
    for (int r = 0; r < kW1Ring; ++r) issue(r, warp + r * kWarps);
    if constexpr (XS) {
      cp_async_wait<kW1Ring>();  // the x group, the oldest
      __syncthreads();
    }
  }

  float acc[kStripes][4] = {};  // C fragments: (row g, token 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
  float acc2[2][kStripes][4] = {};  // SA: the even and odd steps
  int slot = 0;
  for (int c = warp; c < nchunks; c += kWarps) {  // warp-uniform
    cp_async_wait<kW1Ring - 1>();  // chunk c has landed (this lane's copies) ...
    __syncwarp();                  // ... and every lane's (the scales are copied by a few lanes)
    ChunkRegs<GPC> cr;
    cr.read(ring + slot * kSlotVecs, lane);
    __syncwarp();  // every lane holds its slot data: refill the slot now, a whole ring ahead
    issue(slot, c + kW1Ring * kWarps);
    slot = slot + 1 == kW1Ring ? 0 : slot + 1;

    if constexpr (SA) {
      chunk_math_scaled<T, GPC, XS>(cr, x + c * (kW1ChunkK / 2), acc2);
    } else {
      chunk_math<T, GPC, XS>(cr, x + c * (kW1ChunkK / 2), acc);  // step j of chunk c at words 8j + 2t, +1
    }
  }
  cp_async_wait<0>();  // no copy may still be writing shared memory when the block exits
  if constexpr (SA) {
#pragma unroll
    for (int s = 0; s < kStripes; ++s) {
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[s][i] = -(acc2[0][s][i] + acc2[1][s][i]);  // the pairs' signs were flipped
    }
  }

  // Sum the warps (each holds every row and token of both stripes for its chunks), then the epilogue.
  auto& partial = *reinterpret_cast<float(*)[kWarps][kW1GemvRows][kMaxW1GemvTokens]>(
      reinterpret_cast<char*>(smem) + w1_partial_offset(XS, p.m, p.k_padded, GPC));
#pragma unroll
  for (int s = 0; s < kStripes; ++s) {
    partial[warp][16 * s + g][2 * t] = acc[s][0];
    partial[warp][16 * s + g][2 * t + 1] = acc[s][1];
    partial[warp][16 * s + g + 8][2 * t] = acc[s][2];
    partial[warp][16 * s + g + 8][2 * t + 1] = acc[s][3];
  }
  __syncthreads();
  if (threadIdx.x < p.m * kW1GemvRows) {
    const int m = threadIdx.x / kW1GemvRows, r = threadIdx.x % kW1GemvRows;
    const int n = stripe0 * 16 + r;
    if (n < p.n) {
      float v = 0.0f;
#pragma unroll
      for (int i = 0; i < kWarps; ++i) v += partial[i][r][m];
      if constexpr (GPC == 0) v *= __ldg(p.scale + n);
      v += bias_at(p.bias, n);
      store(static_cast<T*>(p.y) + static_cast<size_t>(m) * p.n + n, v);
    }
  }
}

int smem_optin_bytes() {  // per device; cheap (a cached attribute), so asked at every launch
  int device = 0, bytes = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  return bytes;
}

// Grouped scales as the A values' magnitude (chunk_math_scaled); QTOOL_W1_GEMV=fma restores the float32 FFMA per
// group for an A/B (read once).
bool scales_in_a() {
  static const bool on = [] {
    const char* env = std::getenv("QTOOL_W1_GEMV");
    return env == nullptr || std::strcmp(env, "fma") != 0;
  }();
  return on;
}

template <typename T, int GPC>
void launch_variant(const W1GemvProblem& p, cudaStream_t stream) {
  const W1GemvPlan plan = plan_w1_gemv(p.m, p.n_padded, p.k_padded, GPC, smem_optin_bytes());
  bool pdl = false;  // only a Pdl kernel may be launched with programmatic serialization (it waits on its own)
  auto kernel = plan.xs ? w1_gemv_kernel<T, GPC, true> : w1_gemv_kernel<T, GPC, false>;
  if constexpr (GPC > 0) {
    if (scales_in_a()) kernel = plan.xs ? w1_gemv_kernel<T, GPC, true, true> : w1_gemv_kernel<T, GPC, false, true>;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      if (scales_in_a() && pdl_level() >= 2) {  // bf16 with grouped scales: the A/B's case
        kernel = plan.xs ? w1_gemv_kernel<T, GPC, true, true, true> : w1_gemv_kernel<T, GPC, false, true, true>;
        pdl = true;
      }
    }
  }
  if (plan.opt_in) {  // per device and cheap, so every time; an error here is reported by the launch check
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, plan.smem_bytes);
  }
  launch_maybe_pdl(kernel, pdl, dim3(plan.blocks), dim3(plan.threads), plan.smem_bytes, stream, p);
}

template <typename T>
void launch_typed(const W1GemvProblem& p, cudaStream_t stream) {
  switch (p.gpc) {
    case 0: return launch_variant<T, 0>(p, stream);
    case 1: return launch_variant<T, 1>(p, stream);
    case 2: return launch_variant<T, 2>(p, stream);
    case 4: return launch_variant<T, 4>(p, stream);
    default: return launch_variant<T, 8>(p, stream);  // ops_w1.cpp admits 0, 1, 2, 4, 8
  }
}

}  // namespace

void launch_w1_gemv(const W1GemvProblem& p, cudaStream_t stream) {
  p.dtype == ScalarKind::kBFloat16 ? launch_typed<__nv_bfloat16>(p, stream) : launch_typed<__half>(p, stream);
}

}  // namespace qtool
