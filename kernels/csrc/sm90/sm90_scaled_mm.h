// C interface of libqtool_sm90 (scaled_mm_sm90.cu), shared with ops_w8a8.cpp, which looks the two
// functions up by name (dlsym) once kernels/build.py has loaded the library: the PyTorch extension
// neither links against it nor needs CUTLASS to build.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

// The libraries are compiled with hidden visibility (sm90.py): only these C entry points are exported. Session 13
// found why: CUTLASS's header-only host functions (cutlass::ClusterLauncher::launch among them) were exported by
// every library, and libqtool_sm90, loaded RTLD_GLOBAL, then served the later libraries' calls with its own copy,
// whose statically linked CUDA runtime does not know their kernels: every 2-CTA cluster launch of the mixed GEMM
// failed once a W8A8 layer had loaded libqtool_sm90 in the process.
#ifndef QTOOL_SM90_API
#define QTOOL_SM90_API __attribute__((visibility("default")))
#endif

namespace qtool::sm90 {

struct ScaledMmArgs {
  const void* a;          // [m, k] int8 or float8_e4m3fn codes, row-major, 16-byte aligned
  const void* b;          // [n, k] codes of the same type, row-major (B^T), 16-byte aligned
  const float* a_scale;   // [m] per-token scales
  const float* b_scale;   // [n] per-channel scales
  const float* bias;      // [n] float32, or nullptr
  void* d;                // [m, n] bf16 or fp16 out, row-major
  void* workspace;        // qtool_sm90_workspace() bytes of device memory (may be nullptr when 0)
  size_t workspace_bytes;
  int m, n, k;            // k % 16 == 0, n % 8 == 0
  int fp8;                // 1: float8_e4m3fn, 0: int8
  int out_half;           // 1: fp16 out, 0: bf16 out
  int config;             // 0: by m (kSkinnyMaxM); 1: skinny (64 x 128 ping-pong); 2: large (2-CTA clusters);
                          // 3: split (128 x 128 cooperative, k split over the SMs the output tiles leave idle);
                          // 4: narrow (64 x 64 ping-pong: twice the skinny tiles); 5: large ping-pong (128 x 128
                          // tiles, 2-CTA clusters, a tile per consumer warpgroup); 6: skinny-pair (skinny tiles
                          // in 2-CTA clusters along m, the weight tile multicast); 7 / 8: large ping-pong / large
                          // in 2 x 2 clusters (both operands multicast); plus kConfigPdl: launched with programmatic dependent launch (sm90_common.cuh)
};
constexpr int kConfigPdl = 16;

}  // namespace qtool::sm90

extern "C" {
typedef size_t (*QtoolSm90Workspace)(const qtool::sm90::ScaledMmArgs*);
typedef const char* (*QtoolSm90ScaledMm)(const qtool::sm90::ScaledMmArgs*, cudaStream_t);
QTOOL_SM90_API size_t qtool_sm90_workspace(const qtool::sm90::ScaledMmArgs* p);
QTOOL_SM90_API const char* qtool_sm90_scaled_mm(const qtool::sm90::ScaledMmArgs* p, cudaStream_t stream);
}
