// binarize, the first half of a W1A1 layer (w1a1.cu has the GEMM): one warp per row of x, one pass: the sign bits
// (bit set where x >= 0), mean |x| and the popcount of each weight group, so the GEMM needs no other look at x.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w1_kernels.h"
#include "wo_common.cuh"

namespace qtool {
namespace {

template <typename T>
__global__ void __launch_bounds__(256) binarize_kernel(const BinarizeProblem p) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * 8 + threadIdx.x / 32;
  if (row >= p.m_padded) return;
  const bool live = row < p.m;
  const T* x = static_cast<const T*>(p.x) + static_cast<long long>(live ? row : 0) * p.x_stride;
  uint8_t* out = reinterpret_cast<uint8_t*>(p.bits) + static_cast<size_t>(row) * (p.k_padded / 8);
  const bool vec = (p.k % 8 == 0) && (p.x_stride % 8 == 0) && (reinterpret_cast<uintptr_t>(p.x) % 16 == 0);
  const int gs = p.group_size > 0 ? p.group_size : p.k_padded;  // one group spans the row
  float asum = 0.0f;
  int run = 0;  // set bits of this lane in the current group (groups >= 256)
  // The row in passes of kUnroll x 256 elements: the pass's 16-byte loads are issued before any of them is used
  // (session 16, 4096 x 8192 bf16, eager: one load in flight per lane 38 us, four 30 us, eight 30 us).
  constexpr int kUnroll = 4;
  for (int pass = 0; pass < p.k_padded; pass += 256 * kUnroll) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k0 = pass + 256 * u + 8 * lane;
      raw[u] = live && vec && k0 + 8 <= p.k ? __ldg(reinterpret_cast<const uint4*>(x + k0)) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int base = pass + 256 * u;
      if (base >= p.k_padded) break;
      const int k0 = base + 8 * lane;  // this lane's 8 elements: one byte of bits
      uint32_t byte = 0;
      if (live && vec && k0 + 8 <= p.k) {  // all 8 in range: no per-element test (they were most of its SASS)
        const uint32_t w[4] = {raw[u].x, raw[u].y, raw[u].z, raw[u].w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float2 f = pair_to_float2(w[i], T{});
          byte |= (f.x >= 0.0f ? 1u : 0u) << (2 * i);
          byte |= (f.y >= 0.0f ? 1u : 0u) << (2 * i + 1);
          asum += fabsf(f.x) + fabsf(f.y);
        }
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          if (live && k0 + e < p.k) {
            const float v = pair_to_float2(static_cast<uint32_t>(*reinterpret_cast<const uint16_t*>(x + k0 + e)), T{}).x;
            byte |= (v >= 0.0f ? 1u : 0u) << e;
            asum += fabsf(v);
          }
        }
      }
      out[k0 / 8] = static_cast<uint8_t>(byte);
      int pc = __popc(byte);
      if (gs < 256) {  // several groups per 256 k: reduce over the gs / 8 lanes of each
        for (int off = 1; off < gs / 8; off *= 2) pc += __shfl_xor_sync(0xffffffffu, pc, off);
        const int grp = k0 / gs;
        if (lane % (gs / 8) == 0 && grp < p.groups) p.popc[static_cast<size_t>(grp) * p.m_padded + row] = pc;
      } else {
        run += pc;
        if ((base + 256) % gs == 0 || base + 256 >= p.k_padded) {
          const int total = __reduce_add_sync(0xffffffffu, run);
          const int grp = base / gs;
          if (lane == 0 && grp < p.groups) p.popc[static_cast<size_t>(grp) * p.m_padded + row] = total;
          run = 0;
        }
      }
    }
  }
  for (int off = 16; off > 0; off /= 2) asum += __shfl_xor_sync(0xffffffffu, asum, off);
  if (lane == 0) {
    const float mean = live ? asum / static_cast<float>(p.k) : 0.0f;
    p.scale[row] = mean > 0.0f ? mean : 1.0f;
  }
}

}  // namespace

void launch_binarize(const BinarizeProblem& p, cudaStream_t stream) {
  const dim3 grid((p.m_padded + 7) / 8);
  if (p.dtype == ScalarKind::kBFloat16) {
    binarize_kernel<__nv_bfloat16><<<grid, 256, 0, stream>>>(p);
  } else {
    binarize_kernel<__half><<<grid, 256, 0, stream>>>(p);
  }
}

}  // namespace qtool
