// What the Hopper GEMM libraries (scaled_mm_sm90.cu, mixed_mm_sm90.cu, block_mm_sm90.cu) share: the SM count
// (queried once, not by CUTLASS on every call), the checks around one CUTLASS 3.x GEMM launch, and (through
// sm90_scheduler.cuh) the split-K / stream-K scheduler their cooperative kernels name.
#pragma once

#include <cstddef>
#include <cstdlib>

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
// which PDL cannot overlap; QTOOL_GEMM_LOCKS=keep removes it, sm90_scheduler.cuh). Any input is safe: nothing is
// read before the wait.
inline bool gemm_pdl() {
  static const bool on = [] {
    const char* env = std::getenv("QTOOL_GEMM_PDL");
    return env != nullptr && env[0] == '1';
  }();
  return on;
}

// Gemm: a cutlass::gemm::device::GemmUniversalAdapter. Returns nullptr, or why the GEMM did not run. `pdl`: launch
// with programmatic serialization (the caller's choice, as measured; QTOOL_GEMM_PDL=1 turns it on for every call).
template <class Gemm>
const char* run_gemm(typename Gemm::Arguments args, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream, bool pdl = false) {
  if constexpr (keeps_locks<decltype(args.scheduler)>::value) args.scheduler.locks = kept_locks(stream);
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS cannot implement this problem";
  if (Gemm::get_workspace_size(args) > workspace_bytes) return "workspace too small";
  if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return "CUTLASS initialize failed";
  if (gemm.run(stream, nullptr, pdl || gemm_pdl()) != cutlass::Status::kSuccess) return "CUTLASS run failed";
  return nullptr;
}

}  // namespace qtool::sm90
