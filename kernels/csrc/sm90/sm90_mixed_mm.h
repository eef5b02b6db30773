// C interface of libqtool_sm90_mixed (mixed_mm_sm90.cu): 4-bit weights x 16-bit activations on
// Hopper tensor cores. kernels/mixed_mm.py loads the library with ctypes and calls these by name.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

namespace qtool::sm90 {

struct MixedMmArgs {
  const void* w;          // [n, k / 2] bytes: signed int4 codes, row-major, two per byte, even k in the low nibble
  const void* x;          // [m, k] bf16 activations, row-major
  const void* scale;      // [ceil(k / group), n] bf16, group-major
  const void* zero;       // [ceil(k / group), n] bf16: w = q * scale + zero
  void* y;                // [m, n] bf16 out, row-major
  void* workspace;        // qtool_sm90_mixed_workspace() bytes of device memory (nullptr when 0)
  size_t workspace_bytes;
  int m, n, k;            // k % 64 == 0, n % 8 == 0
  int group;              // k (one scale per row) or a multiple of 64
  int split;              // 0: split-K when the output tiles leave SMs idle; 1: none; > 1: that many; -1: stream-K
  int pingpong;           // 1: 64-row tiles, two warpgroups in ping-pong (m <= 64); 0: 128-row cooperative tiles
};

}  // namespace qtool::sm90

extern "C" {
size_t qtool_sm90_mixed_workspace(const qtool::sm90::MixedMmArgs* p);
const char* qtool_sm90_mixed_mm(const qtool::sm90::MixedMmArgs* p, cudaStream_t stream);
}
