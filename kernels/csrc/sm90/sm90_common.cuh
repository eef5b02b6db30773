// What the Hopper GEMM libraries (scaled_mm_sm90.cu, mixed_mm_sm90.cu, block_mm_sm90.cu) share: the SM count
// (queried once, not by CUTLASS on every call), the order their persistent schedulers hand out tiles in, the checks
// around one CUTLASS 3.x GEMM launch, and (through sm90_scheduler.cuh) the schedulers their kernels name: split-K /
// stream-K, and the static persistent one, both with the first-work hooks of sm90_prefetch.cuh.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <type_traits>

#include <cuda_runtime.h>

#include "cutlass/cutlass.h"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/kernel_hardware_info.h"
#include "sm90_scheduler.cuh"

namespace qtool::sm90 {

inline int sm_count() {
  static const int count = [] {
    int device = 0;
    cudaGetDevice(&device);
    return cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  }();
  return count;
}

// Programmatic dependent launch for every Hopper GEMM (QTOOL_GEMM_PDL=1; read once per process). The libraries are
// built with CUTLASS_ENABLE_GDC_FOR_SM90 (kernels/sm90.py FLAGS), so the kernels' producer and epilogue-load warps
// execute griddepcontrol.wait before their first global access and the consumers release the next grid at their
// last tile; a launch without the attribute makes the wait a no-op. With it the GEMM's launch, shared-memory and
// barrier setup and tensor-map prefetch overlap the tail of the kernel before (session 19: W8A8 up to 14% faster
// at 32-64 tokens; the mixed-input GEMM unchanged: its split launches follow CUTLASS's memset of the split flags,
// which PDL cannot overlap; the kept flags remove it, sm90_scheduler.cuh). Any input is safe: nothing is
// read before the wait.
inline bool gemm_pdl() {
  static const bool on = [] {
    const char* env = std::getenv("QTOOL_GEMM_PDL");
    return env != nullptr && env[0] == '1';
  }();
  return on;
}

// QTOOL_GEMM_EARLY_RELEASE=1 (read once per process; matters only under PDL): every GEMM on our schedulers releases
// the next grid from its prologue (sm90_prefetch.cuh, on_first_work). Off: CUTLASS's release after the last tile's
// MMAs. An A/B (dev/session45.sh prefetchab), unmeasured.
inline bool gemm_early_release() {
  static const bool on = [] {
    const char* env = std::getenv("QTOOL_GEMM_EARLY_RELEASE");
    return env != nullptr && env[0] == '1';
  }();
  return on;
}

// The order in which the persistent schedulers hand out output tiles (A/B knobs until measured; CUTLASS's defaults
// when unset). Why: CUTLASS walks the tile grid along its shorter side first, so on 8192 x 28672 at 8192 tokens a
// wave of 132 tiles covers two columns of 64 tiles and streams all 64 MB of 8-bit activations through the 60 MB L2
// again, ~110 times per GEMM; with a swizzle of s a wave covers s columns of 132 / s tiles, and the waves that follow
// reuse the same s weight bands from L2.
//   QTOOL_GEMM_SWIZZLE=1|2|4|8   tiles per swizzle group (CUTLASS: 1)
//   QTOOL_GEMM_RASTER=m|n        walk along m or along n first (CUTLASS: along m where the grid is wider than tall)
// qtool_sm90_set_tile_order() changes both in a running process (dev/order_ab.py: the settings timed in one run);
// a CUDA graph keeps the order it was captured with.
struct TileOrder {
  int swizzle;  // 1, 2, 4 or 8
  int raster;   // 0: CUTLASS's heuristic; 1: along m; 2: along n
};

inline std::atomic<int>& tile_order_word() {  // swizzle | raster << 8
  static std::atomic<int> word([] {
    const char* swizzle = std::getenv("QTOOL_GEMM_SWIZZLE");
    const char* raster = std::getenv("QTOOL_GEMM_RASTER");
    const int s = swizzle == nullptr ? 1 : std::atoi(swizzle);
    const int r = raster == nullptr ? 0 : raster[0] == 'm' ? 1 : raster[0] == 'n' ? 2 : 0;
    return (s == 2 || s == 4 || s == 8 ? s : 1) | r << 8;
  }());
  return word;
}

inline TileOrder tile_order() {
  const int word = tile_order_word().load(std::memory_order_relaxed);
  return {word & 0xff, word >> 8};
}

// Added to a GEMM's configuration (libqtool_sm90's and libqtool_sm90_block's `config`): the tile order of that call,
// in place of the process's. Session 43 (dev/order_ab.py): a swizzle of 8 was 4-19% faster on the int8 / FP8 GEMMs
// of most shapes at 8192 tokens and up to 2x slower at 1024, so the order is a measured route (kernels/tuning.py),
// not a setting.
constexpr int kConfigSwizzle8 = 32;  // tiles handed out in swizzle groups of 8
constexpr int kConfigAlongN = 64;    // the tile grid walked along n first
constexpr int kConfigOrder = kConfigSwizzle8 | kConfigAlongN;

inline TileOrder tile_order(int config) {
  if ((config & kConfigOrder) == 0) return tile_order();
  return {(config & kConfigSwizzle8) ? 8 : 1, (config & kConfigAlongN) ? 2 : 0};
}

// The tile order on a GEMM's arguments (config: its configuration, whose order bits win over the process's): before
// its workspace is sized, since the tile grid is padded to whole swizzle groups (the stream-K scheduler's workspace
// depends on it).
template <class Arguments>
void set_tile_order(Arguments& args, int config) {
  using Options = std::remove_reference_t<decltype(args.scheduler.raster_order)>;
  const TileOrder order = tile_order(config);
  args.scheduler.max_swizzle_size = order.swizzle;
  args.scheduler.raster_order = order.raster == 1 ? Options::AlongM : order.raster == 2 ? Options::AlongN
                                                                                        : Options::Heuristic;
}

template <class Gemm>
size_t workspace_size(typename Gemm::Arguments args, int config = 0) {
  set_tile_order(args, config);
  return Gemm::get_workspace_size(args);
}

// Gemm: a cutlass::gemm::device::GemmUniversalAdapter. Returns nullptr, or why the GEMM did not run. `pdl`: launch
// with programmatic serialization (the caller's choice, as measured; QTOOL_GEMM_PDL=1 turns it on for every call).
// config: the call's configuration, for its order bits (the same as its workspace was sized with).
template <class Gemm>
const char* run_gemm(typename Gemm::Arguments args, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream, bool pdl = false, int config = 0) {
  if constexpr (keeps_locks<decltype(args.scheduler)>::value) args.scheduler.locks = kept_locks(stream);
  if constexpr (has_knobs<decltype(args.scheduler)>::value) {
    args.scheduler.knobs.early_release = args.scheduler.knobs.early_release || gemm_early_release();
  }
  set_tile_order(args, config);
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS cannot implement this problem";
  if (Gemm::get_workspace_size(args) > workspace_bytes) return "workspace too small";
  if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return "CUTLASS initialize failed";
  if (gemm.run(stream, nullptr, pdl || gemm_pdl()) != cutlass::Status::kSuccess) return "CUTLASS run failed";
  return nullptr;
}

}  // namespace qtool::sm90

// Exported by each library (defined here, not inline: each library is one translation unit including this header):
// the tile order of its later calls. swizzle: 1, 2, 4 or 8; raster: 0 CUTLASS's heuristic, 1 along m, 2 along n.
// Returns nullptr, or what is wrong.
extern "C" __attribute__((visibility("default"))) const char* qtool_sm90_set_tile_order(int swizzle, int raster) {
  if (swizzle != 1 && swizzle != 2 && swizzle != 4 && swizzle != 8) return "swizzle must be 1, 2, 4 or 8";
  if (raster < 0 || raster > 2) return "raster must be 0 (heuristic), 1 (along m) or 2 (along n)";
  qtool::sm90::tile_order_word().store(swizzle | raster << 8, std::memory_order_relaxed);
  return nullptr;
}
