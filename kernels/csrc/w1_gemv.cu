// UNTESTED DRAFT (issue 21): written on a machine without a GPU and never compiled or run. It is not in
// build.py's SOURCES and no op is registered for it, so neither the CPU nor the CUDA build sees it; the
// w1a16 layers run the reference (qtool_kernels.reference.weight_only_linear) until this is finished,
// registered in ops.cpp and checked against that reference (tests/test_kernels_gpu.py's sweep).
//
// GEMV for 1-bit weights with 16-bit activations, y[m, n] = sum_k x[m, k] * sign(k, n) * scale[n, k / g],
// for m <= kMaxTokens tokens: "select and add". The weight is the checkpoint's layout as it is
// (quantize/primitives.py): qweight [n, ceil(k / 32)] int32 row-major, bit j of word w is the code of
// input 32 w + j, set for +1 and clear for -1; scale [n, ceil(k / g)] float32, g a multiple of 32
// (or -1: one scale per row, scale [n, 1]).
//
// Why this shape. A 1-bit weight is 16x smaller than bf16, so at M = 1 the activations (2 bytes per k)
// weigh as much as 16 rows of weights: each block keeps its tokens' activations in shared memory once and
// serves kRowsPerBlock rows from them. Each warp owns rows; each lane reads one 32-bit word (32 codes) of
// its row per step, so a warp reads 128 contiguous bytes per row (one memory transaction), and adds or
// subtracts 32 activations: sum = 2 * sum(x where bit set) - sum(x), with sum(x) over the group computed
// once per group and token and shared by all rows. Group sums are float32; a group's partial is scaled
// once. The bound: 8192 x 8192 is 8 MB of codes + 1 MB of g64 scales; at ~4 TB/s that is ~2.3 us,
// against bf16's 134 MB (~34 us): the >= 4x goal leaves room for launch and reduction overheads.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace qtool {
namespace {

constexpr int kWarps = 8;          // warps per block
constexpr int kRowsPerWarp = 2;    // rows each warp reduces (reuses the lane's activation registers)
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kMaxTokens = 8;      // m of the decode path; larger m belongs to a GEMM
constexpr int kStageTokens = 1;    // tokens staged in shared memory at a time (float32 activations)
constexpr int kMaxK = 12288;       // kStageTokens * kMaxK * 4 B = 48 KB, the static shared memory limit

template <typename T>
__device__ inline float to_float(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}

template <typename T>
__device__ inline T from_float(float v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else return __float2bfloat16_rn(v);
}

struct W1GemvProblem {
  const void* x;          // [m, k] fp16/bf16 activations, row-major
  const int32_t* qweight; // [n, words] 1-bit codes, words = ceil(k / 32)
  const float* scale;     // [n, groups] float32; groups = 1 when group_size < 0
  const void* bias;       // [n] in the activation dtype, or nullptr
  void* y;                // [m, n] in the activation dtype
  int m, n, k;            // tokens, output features, input features
  int words;              // ceil(k / 32)
  int group_size;         // multiple of 32, or -1 for one scale per row
  int groups;             // ceil(k / group_size), or 1
};

// One block: kRowsPerBlock rows, all m tokens (kStageTokens at a time through shared memory).
template <typename T>
__global__ void __launch_bounds__(kWarps * 32) w1_gemv(W1GemvProblem p) {
  __shared__ float xs[kStageTokens][kMaxK];                  // staged activations, float32
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = blockIdx.x * kRowsPerBlock + warp * kRowsPerWarp;
  const int words_per_group = p.group_size < 0 ? p.words : p.group_size / 32;
  const T* x = static_cast<const T*>(p.x);

  for (int t0 = 0; t0 < p.m; t0 += kStageTokens) {
    const int tokens = min(kStageTokens, p.m - t0);
    __syncthreads();  // the previous stage's readers are done
    for (int i = threadIdx.x; i < tokens * p.k; i += blockDim.x) {
      xs[i / p.k][i % p.k] = to_float(x[(t0 + i / p.k) * p.k + i % p.k]);
    }
    __syncthreads();

    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = row0 + r;
      if (row >= p.n) break;
      float acc[kStageTokens] = {};
      // Lanes walk the row's words in 32-word (128-byte) strides; each word covers k = 32 w .. 32 w + 31.
      for (int w = lane; w < p.words; w += 32) {
        const uint32_t bits = static_cast<uint32_t>(p.qweight[static_cast<int64_t>(row) * p.words + w]);
        const float s = p.scale[static_cast<int64_t>(row) * p.groups + w / words_per_group];
        const int kbase = w * 32;
        const int valid = min(32, p.k - kbase);           // the last word of a row may be partial
        for (int tok = 0; tok < tokens; ++tok) {
          float set = 0.f, all = 0.f;
#pragma unroll 8
          for (int j = 0; j < valid; ++j) {
            const float v = xs[tok][kbase + j];
            all += v;
            set += (bits >> j) & 1u ? v : 0.f;            // select
          }
          acc[tok] += s * (2.f * set - all);              // sum of +-x, scaled once per word
        }
      }
      for (int tok = 0; tok < tokens; ++tok) {
        float v = acc[tok];
#pragma unroll
        for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (lane == 0) {
          if (p.bias != nullptr) v += to_float(static_cast<const T*>(p.bias)[row]);
          static_cast<T*>(p.y)[static_cast<int64_t>(t0 + tok) * p.n + row] = from_float<T>(v);
        }
      }
    }
  }
}

}  // namespace

// Host launcher (to be declared in wo_kernels.h and wrapped in ops.cpp as qtool_cuda::w1_gemv when the
// kernel is finished): checks what the kernel assumes and names the shapes that break it.
template <typename T>
cudaError_t launch_w1_gemv(const W1GemvProblem& p, cudaStream_t stream) {
  if (p.m < 1 || p.m > kMaxTokens || p.k > kMaxK || p.words != (p.k + 31) / 32 ||
      (p.group_size > 0 && p.group_size % 32 != 0)) {
    return cudaErrorInvalidValue;  // the caller falls back to the reference
  }
  const dim3 grid((p.n + kRowsPerBlock - 1) / kRowsPerBlock);
  w1_gemv<T><<<grid, kWarps * 32, 0, stream>>>(p);
  return cudaGetLastError();
}

template cudaError_t launch_w1_gemv<__half>(const W1GemvProblem&, cudaStream_t);
template cudaError_t launch_w1_gemv<__nv_bfloat16>(const W1GemvProblem&, cudaStream_t);

}  // namespace qtool
