// C interface of libqtool_sm90_block (block_mm_sm90.cu): FP8 E4M3 GEMM with 1 x 128 activation scales and
// 128 x 128 weight-block scales on Hopper. kernels/block_mm.py loads it with ctypes and calls these by name.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

#ifndef QTOOL_SM90_API  // exported entry points: sm90_scaled_mm.h says why
#define QTOOL_SM90_API __attribute__((visibility("default")))
#endif

namespace qtool::sm90 {

constexpr int kBlockConfigPdl = 8;
constexpr int kBlockConfigOverlap = 16;  // sm90_block_overlap.cuh

struct BlockMmArgs {
  const void* a;          // [m, k] float8_e4m3fn activation codes, row-major, 16-byte aligned
  const void* b;          // [n, k] float8_e4m3fn weight codes, row-major (B^T)
  const float* a_scale;   // [m, k / 128] per (token, 128-k group), column-major: a_scale[g * m + i]; m % 4 == 0
  const float* b_scale;   // [ceil(n / 128), k / 128] per 128 x 128 weight block, row-major; config 4: [ceil(n / 64),
                          // k / 128], each block's scale on two rows (one per 64 rows)
  void* d;                // [m, n] bf16 out, row-major
  void* workspace;        // qtool_sm90_block_workspace() bytes of device memory (nullptr when 0)
  size_t workspace_bytes;
  int m, n, k;            // k % 128 == 0, n % 8 == 0, m % 4 == 0 (the caller pads with zero codes)
  int config;             // 0: skinny (64 x 128 ping-pong); 1: split (128 x 128 cooperative, split-K over the SMs
                          // its tiles leave idle); 2: large (128 x 128 cooperative, clusters of two along n);
                          // 3: swapped (weight rows x tokens in 128 x 64 tiles, split-K like 1); 4: narrow (64 x 64
                          // ping-pong, weight scales per 64 rows); 5: large in 2 x 2 clusters (both operands
                          // multicast); 6: skinny in 2 x 2 clusters; plus kBlockConfigOverlap: each promotion overlapped with the next k tile's
                          // wgmma (sm90_block_overlap.cuh); plus kBlockConfigPdl: launched with programmatic
                          // serialization (it waits for the kernel before, act_quant, before any global access)
  int split;              // configs 1, 3: 0 fills the SMs, 1 none, s > 1 that many parts, -1 stream-K
};

}  // namespace qtool::sm90

extern "C" {
QTOOL_SM90_API size_t qtool_sm90_block_workspace(const qtool::sm90::BlockMmArgs* p);
QTOOL_SM90_API const char* qtool_sm90_block_mm(const qtool::sm90::BlockMmArgs* p, cudaStream_t stream);
}
