// C interface of libqtool_sm90_mixed and libqtool_sm90_mixed8 (mixed_mm_sm90.cu, one per code width):
// 4- or 8-bit weights x 16-bit activations on Hopper tensor cores. kernels/mixed_mm.py loads each
// library with ctypes (RTLD_LOCAL: both export the same names) and calls these by name.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

#ifndef QTOOL_SM90_API  // exported entry points: sm90_scaled_mm.h says why
#define QTOOL_SM90_API __attribute__((visibility("default")))
#endif

namespace qtool::sm90 {

struct MixedMmArgs {
  const void* w;          // signed codes: int4 [n, k / 2] bytes, two per byte, even offset in the low nibble
                          // (libqtool_sm90_mixed); int8 [n, k] (libqtool_sm90_mixed8); in the shuffled layout
                          // of qtool_sm90_mixed_shuffle
  const void* x;          // [m, k] bf16 activations, row-major
  const void* scale;      // [ceil(k / group), n] bf16, group-major
  const void* zero;       // [ceil(k / group), n] bf16: w = q * scale + zero
  void* y;                // [m, n] bf16 out, row-major
  void* workspace;        // qtool_sm90_mixed_workspace() bytes of device memory (nullptr when 0)
  size_t workspace_bytes;
  int m, n, k;            // k % 64 == 0, n % 8 == 0
  int group;              // k (one scale per row) or a multiple of 64 (of ktile)
  int split;              // 0: split-K when the output tiles leave SMs idle; 1: none; > 1: that many; -1: stream-K
  int pingpong;           // 1: 64-row tiles, two warpgroups in ping-pong (m <= 64); 0: 128-row cooperative tiles
  int ktile;              // k per pipeline stage: 64, or 128 (token tile <= 128, cooperative; group a multiple of 128)
  int variant;            // 0: 128-row tiles; 1: 256-row tiles (ktile 128, token tile <= 64); 2: 128-row tiles in
                          // clusters of two along the rows, sharing each token tile's loads (ktile 64, cooperative)
  int token_tile;         // tokens per tile: 0 takes the smallest built tile that holds m; t > 0 the smallest that
                          // holds t (more tiles of fewer tokens fill more SMs without splitting k)
  int launch;             // bit 0: launch with PDL (as QTOOL_GEMM_PDL=1 does for every call); bit 1: release the
                          // next grid from the prologue (as QTOOL_GEMM_EARLY_RELEASE=1; sm90_prefetch.cuh)
};

}  // namespace qtool::sm90

extern "C" {
QTOOL_SM90_API size_t qtool_sm90_mixed_workspace(const qtool::sm90::MixedMmArgs* p);
QTOOL_SM90_API const char* qtool_sm90_mixed_mm(const qtool::sm90::MixedMmArgs* p, cudaStream_t stream);
QTOOL_SM90_API const char* qtool_sm90_mixed_shuffle(const void* codes, void* out, int n, int k, cudaStream_t stream);
}
