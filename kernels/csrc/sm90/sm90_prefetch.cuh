// What the Hopper GEMMs' schedulers (sm90_scheduler.cuh) may do from the kernel's prologue, before its producer
// waits on the grid before it (griddepcontrol.wait) and before its pipeline's first load: prefetch the weights of the
// CTA's first tile into L2, and release the next grid (PDL) early. Both off unless asked (session 45, unmeasured).
//
// Why: on the small layers at 9-64 tokens every Hopper GEMM sits on a ~10 us floor that more CTAs do not shorten
// (session 44), while the weights stream in 2-8 us. A pipeline keeps only a few stages of weights in flight per CTA;
// a prefetch puts a tile's first `cap` bytes in flight at once, and under PDL it overlaps the kernel before (act_quant
// before a W8A8 GEMM; the layer before in a model). A prefetch into L2 moves no data into registers or L1, and L2 is
// where the GPU's global memory is coherent, so it cannot make a later load see stale bytes: it is safe even for data
// the kernel before writes.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "cute/tensor.hpp"
#include "cutlass/arch/grid_dependency_control.h"
#include "cutlass/cutlass.h"

namespace qtool::sm90 {

enum class WeightLayout : int32_t {
  kOff = 0,
  kShuffled = 1,  // the mixed-input GEMM's codes (mixed_mm_sm90.cu ShuffledLayout): atoms of 16 rows x 16 k, tiled
                  // along the rows first, so one atom column of a tile's rows is one contiguous run; 16-bit scale
                  // and zero rows per group, [groups, n]
  kRows = 2,      // 8-bit codes, [n, k] row-major (the W8A8 GEMMs): each row's k range is one contiguous run
};

struct WeightPrefetch {
  WeightLayout layout = WeightLayout::kOff;
  bool weight_is_a = true;       // the weight is CUTLASS's A (its tile rows are the tile's m); else B (n)
  const char* codes = nullptr;
  const char* scales = nullptr;  // kShuffled: [groups, n] 16-bit
  const char* zeros = nullptr;   // kShuffled: [groups, n] 16-bit, or nullptr
  int64_t column_bytes = 0;      // kShuffled: bytes from one 16-k atom column to the next (n rows x 16 codes)
  int64_t row_bytes = 0;         // kShuffled: one row's 16 codes; kRows: one row's k codes
  int n = 0;                     // weight rows
  int k = 0;                     // codes per row
  int atoms_per_group = 1;       // kShuffled: 16-k atom columns per scale group
  int budget = 0;                // kShuffled: atom columns per CTA; kRows: bytes per row (a multiple of 16)
};

// What both schedulers add to CUTLASS's Arguments and Params.
struct LaunchKnobs {
  WeightPrefetch prefetch;
  bool early_release = false;  // release the next grid from the prologue, not after the last tile's MMAs
};

// Bytes of weights each CTA prefetches (0: off): QTOOL_GEMM_PREFETCH at load, qtool_sm90_set_prefetch later.
inline std::atomic<uint32_t>& prefetch_cap() {
  static std::atomic<uint32_t> cap([] {
    const char* env = std::getenv("QTOOL_GEMM_PREFETCH");
    return env == nullptr ? 0u : static_cast<uint32_t>(std::strtoul(env, nullptr, 10));
  }());
  return cap;
}

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// The prefetch of an [n, k] row-major 8-bit weight by CTAs of `tile_rows` weight rows (off where the cap is 0 or the
// rows are not 16-byte aligned, as cp.async.bulk.prefetch needs).
inline WeightPrefetch row_prefetch(const void* codes, int n, int k, bool weight_is_a, int tile_rows) {
  WeightPrefetch out;
  const uint32_t per_row = prefetch_cap().load(std::memory_order_relaxed) / static_cast<uint32_t>(tile_rows) / 16 * 16;
  if (per_row == 0 || k % 16 != 0 || !aligned16(codes)) return out;
  out.layout = WeightLayout::kRows;
  out.weight_is_a = weight_is_a;
  out.codes = static_cast<const char*>(codes);
  out.row_bytes = k;
  out.n = n;
  out.k = k;
  out.budget = static_cast<int>(std::min<uint32_t>(per_row, 1u << 30));
  return out;
}

CUTLASS_DEVICE void prefetch_l2(const char* address, uint32_t bytes) {  // 16-byte aligned, a multiple of 16
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(address), "r"(bytes) : "memory");
#endif
}

// Rows [row0, row0 + rows) of the weight over k in [k0, k1), within the budget, spread over the first warpgroup's
// 128 threads. Not inlined: a kernel asks for its first work from two or three places, and one copy is enough code.
static __noinline__ __device__ void prefetch_weights(WeightPrefetch const& p, int row0, int rows, int k0, int k1) {
  const int t = static_cast<int>(threadIdx.x);
  if (p.layout == WeightLayout::kRows) {
    const uint32_t run = static_cast<uint32_t>(min(k1 - k0, p.budget));
    if (run == 0) return;
#pragma unroll 1
    for (int r = t; r < rows; r += cutlass::NumThreadsPerWarpGroup) {
      prefetch_l2(p.codes + (row0 + r) * p.row_bytes + k0, run);
    }
    return;
  }
  const int a0 = k0 / 16, runs = min((k1 - k0) / 16, p.budget);
  if (runs <= 0) return;
  const uint32_t run = static_cast<uint32_t>(rows * p.row_bytes);
  const char* first = p.codes + row0 * p.row_bytes + a0 * p.column_bytes;
#pragma unroll 1
  for (int a = t; a < runs; a += cutlass::NumThreadsPerWarpGroup) prefetch_l2(first + a * p.column_bytes, run);
  const int g0 = a0 / p.atoms_per_group + t, g1 = (a0 + runs - 1) / p.atoms_per_group;
#pragma unroll 1
  for (int g = g0; g <= g1; g += cutlass::NumThreadsPerWarpGroup) {
    const int64_t offset = (static_cast<int64_t>(g) * p.n + row0) * 2;
    prefetch_l2(p.scales + offset, static_cast<uint32_t>(rows * 2));
    if (p.zeros != nullptr) prefetch_l2(p.zeros + offset, static_cast<uint32_t>(rows * 2));
  }
}

// The hooks on a CTA's first unit of work (tile m_idx, n_idx of TileShape; k tiles [k_tile0, k_tile0 + k_tiles)):
// early release from every thread that asks, the prefetch from the first warpgroup (the producer of the cooperative
// and ping-pong kernels). Early release: the next kernel's CTAs may take the SMs this grid leaves idle (a persistent
// grid is never larger than the SMs, so all of it is resident by then) and run their prologue and prefetch there,
// while their grid-dependency wait still holds every dependent read until this grid has finished and flushed.
// CUTLASS releases after the last tile's MMAs, leaving the epilogue and teardown to overlap; session 19 saw W8A8
// slow down at 256 tokens where a released grid met a multi-tile grid's last wave, so it is an A/B for small grids.
template <class TileShape>
CUTLASS_DEVICE void on_first_work(LaunchKnobs const& knobs, bool valid, int m_idx, int n_idx, int k_tile0,
                                  int k_tiles) {
  if (knobs.early_release) cutlass::arch::launch_dependent_grids();
  const WeightPrefetch& p = knobs.prefetch;
  if (p.layout == WeightLayout::kOff || !valid || threadIdx.x >= cutlass::NumThreadsPerWarpGroup) return;
  constexpr int kTileM = cute::size<0>(TileShape{}), kTileN = cute::size<1>(TileShape{});
  constexpr int kTileK = cute::size<2>(TileShape{});
  const int tile_rows = p.weight_is_a ? kTileM : kTileN;
  const int row0 = (p.weight_is_a ? m_idx : n_idx) * tile_rows;
  if (row0 >= p.n) return;
  const int k0 = k_tile0 * kTileK;
  const int k1 = static_cast<int>(min(static_cast<int64_t>(p.k), k0 + static_cast<int64_t>(k_tiles) * kTileK));
  prefetch_weights(p, row0, min(tile_rows, p.n - row0), k0, k1);
}

}  // namespace qtool::sm90

// Exported by each library (defined here, not inline: each library is one translation unit including this header):
// the bytes of weights each CTA of its later calls prefetches into L2 (0: off).
extern "C" __attribute__((visibility("default"))) void qtool_sm90_set_prefetch(uint32_t bytes) {
  qtool::sm90::prefetch_cap().store(bytes, std::memory_order_relaxed);
}
