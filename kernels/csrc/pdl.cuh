// Programmatic dependent launch (sm_90), an opt-in for A/Bs (QTOOL_PDL=1, read once; session 18, unmeasured):
// a kernel launched with it may start while the kernel before it in the stream is still finishing. The GEMVs
// issue their first weight loads (weights are never written by the kernel before them in inference), then wait
// for that kernel to complete (griddepcontrol.wait) before any activation, bias or output access, then let the
// next kernel launch (launch_dependents). So the next GEMV's DRAM latency and launch overlap this one's tail, and
// at most two kernels overlap. Not for a weight packed by the kernel right before (the repack-per-call op path):
// the switch is process-wide and off by default.
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>

namespace qtool {

// Wait for the kernel before in the stream (a no-op when this one was launched plainly), then let the next start.
__device__ inline void pdl_wait_then_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

inline bool pdl_enabled() {  // QTOOL_PDL=1 and an sm_90+ device (the first one asked; all GPUs of a host match)
  static const bool on = [] {
    const char* env = std::getenv("QTOOL_PDL");
    if (env == nullptr || std::atoi(env) != 1) return false;
    int device = 0, major = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    return major >= 9;
  }();
  return on;
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization where pdl_enabled().
template <typename... KArgs, typename... Args>
void launch_gemv(void (*kernel)(KArgs...), dim3 grid, dim3 block, int smem, cudaStream_t stream, Args&&... args) {
  if (!pdl_enabled()) {
    kernel<<<grid, block, smem, stream>>>(static_cast<Args&&>(args)...);
    return;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  cudaLaunchKernelEx(&config, kernel, static_cast<Args&&>(args)...);
}

}  // namespace qtool
