// What the Hopper GEMM libraries (scaled_mm_sm90.cu, mixed_mm_sm90.cu, block_mm_sm90.cu) share: the SM count
// (queried once, not by CUTLASS on every call) and the checks around one CUTLASS 3.x GEMM launch.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <string>
#include <type_traits>

#include <cuda_runtime.h>

#include "cutlass/cutlass.h"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/kernel_hardware_info.h"

namespace qtool::sm90 {

// The stream-K / split-K tile scheduler our cooperative GEMMs name (`StreamK` in place of
// cutlass::gemm::StreamKScheduler): CUTLASS's own, but for is_last_tile, which CUTLASS 4.2 does not compile where
// the kernels call it (under CUTLASS_ENABLE_GDC_FOR_SM90: its const body binds the member iteration start to a
// non-const reference). The same question is asked of a copy of the scheduler, advanced as the kernel would.
struct StreamK {};

template <class TileShape, class ClusterShape>
class StreamKScheduler : public cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90StreamK<TileShape, ClusterShape> {
  using Base = cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90StreamK<TileShape, ClusterShape>;

 public:
  using Base::Base;

  // Whether `work` (a copy: continue_current_work advances it) is this CTA's last unit of work; only the moment the
  // next grid is released depends on it, never a result.
  CUTLASS_DEVICE bool is_last_tile(typename Base::WorkTileInfo work, uint32_t advance_count = 1) const {
    if (this->continue_current_work(work)) return false;
    Base next = *this;
    next.advance_to_next_work(advance_count);
    return !next.get_current_work().is_valid();
  }
};

}  // namespace qtool::sm90

template <class TileShape, class ClusterShape, uint32_t Stages>
struct cutlass::gemm::kernel::detail::TileSchedulerSelector<qtool::sm90::StreamK, cutlass::arch::Sm90, TileShape,
                                                            ClusterShape, Stages> {
  using Scheduler = qtool::sm90::StreamKScheduler<TileShape, ClusterShape>;
};

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
// at 32-64 tokens; the mixed-input GEMM unchanged, its floor is in the kernel). Any input is safe: nothing is read
// before the wait.
inline bool gemm_pdl() {
  static const bool on = [] {
    const char* env = std::getenv("QTOOL_GEMM_PDL");
    return env != nullptr && env[0] == '1';
  }();
  return on;
}

// How the splits of a split-K / stream-K tile add up (QTOOL_GEMM_SPLIT_ADD=any turns it on; read once per process).
// CUTLASS's default, Deterministic, chains them: split s adds its partials into the workspace only after split s - 1
// did, so a tile of S splits ends S - 1 round trips through L2 after its main loops (session 40: the suspect of the
// ~13 us floor the mixed-input GEMM keeps on the small layers at 9-64 tokens). Nondeterministic: every split adds
// (red.global.add) as soon as the first has stored, and the last one waits for all; the fp32 sums then round in
// arrival order, so outputs can differ in their last bits from run to run. Off: an A/B knob until measured.
template <class Arguments>
void set_split_add(Arguments& args) {
  static const bool any = [] {
    const char* env = std::getenv("QTOOL_GEMM_SPLIT_ADD");
    return env != nullptr && std::string(env) == "any";
  }();
  using Mode = std::remove_reference_t<decltype(args.scheduler.reduction_mode)>;
  if (any) args.scheduler.reduction_mode = Mode::Nondeterministic;
}

// Gemm: a cutlass::gemm::device::GemmUniversalAdapter. Returns nullptr, or why the GEMM did not run. `pdl`: launch
// with programmatic serialization (the caller's choice, as measured; QTOOL_GEMM_PDL=1 turns it on for every call).
template <class Gemm>
const char* run_gemm(const typename Gemm::Arguments& args, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream, bool pdl = false) {
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS cannot implement this problem";
  if (Gemm::get_workspace_size(args) > workspace_bytes) return "workspace too small";
  if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return "CUTLASS initialize failed";
  if (gemm.run(stream, nullptr, pdl || gemm_pdl()) != cutlass::Status::kSuccess) return "CUTLASS run failed";
  return nullptr;
}

}  // namespace qtool::sm90
