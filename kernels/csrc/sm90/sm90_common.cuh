// What the Hopper GEMM libraries (scaled_mm_sm90.cu, mixed_mm_sm90.cu, block_mm_sm90.cu) share: the SM count
// (queried once, not by CUTLASS on every call) and the checks around one CUTLASS 3.x GEMM launch.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "cutlass/cutlass.h"
#include "cutlass/kernel_hardware_info.h"

namespace qtool::sm90 {

inline int sm_count() {
  static const int count = [] {
    int device = 0;
    cudaGetDevice(&device);
    return cutlass::KernelHardwareInfo::query_device_multiprocessor_count(device);
  }();
  return count;
}

// Gemm: a cutlass::gemm::device::GemmUniversalAdapter. Returns nullptr, or why the GEMM did not run.
template <class Gemm>
const char* run_gemm(const typename Gemm::Arguments& args, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream) {
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS cannot implement this problem";
  if (Gemm::get_workspace_size(args) > workspace_bytes) return "workspace too small";
  if (gemm.initialize(args, workspace, stream) != cutlass::Status::kSuccess) return "CUTLASS initialize failed";
  if (gemm.run(stream) != cutlass::Status::kSuccess) return "CUTLASS run failed";
  return nullptr;
}

}  // namespace qtool::sm90
