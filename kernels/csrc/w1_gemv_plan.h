// Launch plan of the W1A16 GEMV (w1_gemv.cu): grid, shared-memory layout and whether the launch must
// opt in to more than 48 KB. Plain C++ (no CUDA runtime calls), so tests/w1_gemv_plan_check.cu can print
// it on a machine without a GPU and tests/test_binary_layout.py can check it against the hardware limits.
//
// Every byte of the kernel's shared memory is dynamic and counted here. (The first GPU run failed at
// K = 4096, m = 5: 41 KB of staged x passed the "> 48 KB needs the opt-in" test, but a static 8 KB array
// of partial sums brought the block to 49.3 KB, and the launch was refused.)
#pragma once

#ifdef __CUDACC__
#define QTOOL_HD __host__ __device__
#else
#define QTOOL_HD
#endif

namespace qtool {

constexpr int kW1Warps = 8;                 // warps per block
constexpr int kW1PlanRows = 32;             // rows per block: w1_kernels.h kW1GemvRows
constexpr int kW1PlanTokens = 8;            // kMaxW1GemvTokens
constexpr int kW1XsPadBytes = 32;           // per staged row: the 8-byte B loads of lanes (g, t) hit distinct banks
constexpr int kW1XsMaxBytes = 96 << 10;     // stage x only while it is this small (else B reads global memory)
constexpr int kW1DefaultSmemBytes = 48 << 10;  // above this a kernel must opt in (cudaFuncSetAttribute)
// Cross-warp partial sums, float [kW1Warps][kW1PlanRows][kW1PlanTokens].
constexpr int kW1PartialBytes = kW1Warps * kW1PlanRows * kW1PlanTokens * 4;

QTOOL_HD constexpr int w1_xs_row_bytes(int k_padded) { return 2 * k_padded + kW1XsPadBytes; }

// Per warp, a ring of kW1Ring chunk slots filled by cp.async: both stripes' 16-byte lane words of one chunk,
// then (grouped scales) both stripes' [8, 2, gpc] float scales of that chunk.
constexpr int kW1Ring = 4;
QTOOL_HD constexpr int w1_slot_bytes(int gpc) { return 2 * 32 * 16 + (gpc > 0 ? 2 * 8 * 2 * gpc * 4 : 0); }
QTOOL_HD constexpr int w1_ring_bytes(int gpc) { return kW1Warps * kW1Ring * w1_slot_bytes(gpc); }

// Shared memory: [x staged, if xs: m rows][rings][partial sums]; byte offsets.
QTOOL_HD constexpr int w1_ring_offset(bool xs, int m, int k_padded) { return xs ? m * w1_xs_row_bytes(k_padded) : 0; }
QTOOL_HD constexpr int w1_partial_offset(bool xs, int m, int k_padded, int gpc) {
  return w1_ring_offset(xs, m, k_padded) + w1_ring_bytes(gpc);
}

struct W1GemvPlan {
  int blocks;          // grid.x: one per kW1PlanRows rows
  int threads;         // block size
  bool xs;             // x staged in shared memory
  int ring_offset;     // bytes
  int partial_offset;  // bytes
  int smem_bytes;      // dynamic shared memory: all of the kernel's shared memory
  bool opt_in;         // smem_bytes > 48 KB: raise cudaFuncAttributeMaxDynamicSharedMemorySize first
};

// smem_optin_bytes: the device's cudaDevAttrMaxSharedMemoryPerBlockOptin (227 KB on H100/H200, 99 KB on sm_89).
// x is staged only while two blocks still fit an SM (about optin / 2 each, 1 KB reserved per block): one
// block per SM would halve the loads in flight, which costs more than reading B through L1.
QTOOL_HD constexpr W1GemvPlan plan_w1_gemv(int m, int n_padded, int k_padded, int gpc, int smem_optin_bytes) {
  const long long xs_bytes = static_cast<long long>(m) * w1_xs_row_bytes(k_padded);
  const int base = w1_ring_bytes(gpc) + kW1PartialBytes;
  const bool xs = xs_bytes <= kW1XsMaxBytes && base + xs_bytes <= smem_optin_bytes / 2 - 1024;
  const int ring = w1_ring_offset(xs, m, k_padded), partial = w1_partial_offset(xs, m, k_padded, gpc);
  const int smem = partial + kW1PartialBytes;
  return W1GemvPlan{n_padded / kW1PlanRows, kW1Warps * 32, xs, ring, partial, smem, smem > kW1DefaultSmemBytes};
}

}  // namespace qtool
