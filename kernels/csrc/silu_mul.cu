// SiLU-and-multiply of a gated MLP in one pass: y [m, i] = silu(g) * u for x [m, 2i] = [g | u], the output of
// a fused gate/up projection (quantize/mlp.py). transformers runs it as two kernels over strided halves (silu
// writes a temporary, the product reads it back): 5 passes of m x i elements where this reads 2 and writes 1.
// The arithmetic is the reference's (qtool_kernels/mlp.py): float32, g / (1 + e^-g) * u, rounded once.
//
//   torch.ops.qtool_cuda.silu_mul(Tensor x, int pdl=0) -> Tensor     x: CUDA fp16/bf16 [m, 2i], unit column stride
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "mlp.h"
#include "pdl.cuh"
#include "wo_common.cuh"  // pair_to_float2, float2_to_pair, store, to_float

namespace qtool {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // fp16/bf16 elements per 16-byte access


// grid (m, ceil(i / (kThreads * kVec))): each thread owns kVec consecutive outputs of one row.
// Pdl (where the caller asks, p.pdl, or QTOOL_PDL=2; unmeasured): waits for the gate/up GEMV before its first read
// and lets the down projection's GEMV launch at once, so that GEMV's first weight loads overlap this kernel (pdl.cuh).
// Interleaved (x's gate and up by 8 columns, [g 8 | u 8] per 16: quantize/mlp.py): the kVec outputs from col are
// gate columns 2 col .. + 7 and up columns 2 col + 8 .. + 15 (col a multiple of kVec = 8; vectorized only).
template <typename T, bool Vectorized, bool Pdl = false, bool Interleaved = false>
__global__ void __launch_bounds__(kThreads) silu_mul_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t inner,
                                                            int64_t x_row_stride) {
  static_assert(Vectorized || !Interleaved, "the interleaved layout is read in vectors of 8");
  if constexpr (Pdl) pdl_wait_then_release();
  const int64_t row = blockIdx.x;
  const int64_t col = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * kVec;
  if (col >= inner) return;
  const T* gate = x + row * x_row_stride + (Interleaved ? col : 0);  // (interleaved: gate column 2 col is col + col)
  const T* up = Interleaved ? gate + kVec : gate + inner;
  T* out = y + row * inner;
  if constexpr (Vectorized) {  // inner % kVec == 0 and 16-byte aligned rows: one load per half, one store
    *reinterpret_cast<uint4*>(out + col) = silu_times_vec<T>(*reinterpret_cast<const uint4*>(gate + col),
                                                             *reinterpret_cast<const uint4*>(up + col));
  } else {
    for (int64_t c = col; c < col + kVec && c < inner; ++c)
      store(out + c, silu_times(to_float(gate[c]), to_float(up[c])));
  }
}

template <typename T>
void launch(const SiluMulProblem& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.rows), static_cast<unsigned>((p.inner + kThreads * kVec - 1) / (kThreads * kVec)));
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const bool aligned = p.inner % kVec == 0 && p.x_row_stride % kVec == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(y) % 16 == 0;
  if (p.interleaved) {  // (inner % kVec == 0: ops.cpp); x and y from the allocator, aligned
    launch_maybe_pdl(silu_mul_kernel<T, true, true, true>, p.pdl || pdl_level() >= 2, grid, dim3(kThreads), 0, stream,
                     x, y, p.inner, p.x_row_stride);
  } else if (aligned && (p.pdl || pdl_level() >= 2))
    launch_maybe_pdl(silu_mul_kernel<T, true, true>, true, grid, dim3(kThreads), 0, stream, x, y, p.inner,
                     p.x_row_stride);
  else if (aligned)
    silu_mul_kernel<T, true><<<grid, kThreads, 0, stream>>>(x, y, p.inner, p.x_row_stride);
  else
    silu_mul_kernel<T, false><<<grid, kThreads, 0, stream>>>(x, y, p.inner, p.x_row_stride);
}

}  // namespace

void launch_silu_mul(const SiluMulProblem& p, cudaStream_t stream) {
  if (p.rows == 0 || p.inner == 0) return;
  if (p.dtype == ScalarKind::kHalf)
    launch<__half>(p, stream);
  else
    launch<__nv_bfloat16>(p, stream);
}

}  // namespace qtool
