// Programmatic dependent launch (sm_90) for the ring GEMV (wo_gemv.cu): a kernel launched with it may start while
// the kernel before it in the stream is still finishing. The GEMV issues its first ring of weight loads, then waits
// for that kernel to complete (griddepcontrol.wait) before any activation, bias or output access, then lets the
// next kernel launch (launch_dependents): the next GEMV's launch and first DRAM round trip overlap this one's tail,
// and at most two kernels overlap. Only for weights no kernel writes while they are in use (prepared layers: the
// op's kPdlFlag); QTOOL_PDL=0 turns it off for a process (read once). Session 18 (H200, graph replay, one token):
// W4 g128 4096 x 4096 6.0 -> 4.9 us, 8192 x 8192 14.7 -> 13.3, 28672 x 8192 43.5 -> 41.1; W3 / W2 likewise.
// Tried and removed the same session: L2 prefetches of the first tiles before the wait in w8_gemv and w1_gemv,
// whose rings cannot be issued before it (x loads sit in the same unrolled loop): one prefetch per lane for lines
// four lanes share made those kernels 5-30% slower even with PDL off.
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

// Let the next kernel in the stream launch now (a no-op unless it was launched with programmatic serialization):
// for a kernel whose consumer waits for its completion anyway, e.g. act_quant before a W8A8 Hopper GEMM launched
// with PDL (scaled_mm.SM90_PDL, csrc/sm90/sm90_common.cuh), whose launch and prologue then overlap this kernel.
__device__ inline void pdl_release() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// QTOOL_PDL (read once): 0 off; 1 (the default) the ring GEMV of prepared weights and w8_gemv's twin where its
// caller asks (static weights, scaled_mm / tuning.gemv_pdl); 2 also w8_gemv on every call, w1_gemv, silu_mul and
// the stream variant (their twins, session 18: opt-in A/Bs; w8_gemv's measured in session 19). 0 on a device
// before sm_90 (the first one asked; a host's GPUs match).
inline int pdl_level() {
  static const int level = [] {
    const char* env = std::getenv("QTOOL_PDL");
    const int wanted = env != nullptr ? std::atoi(env) : 1;
    int device = 0, major = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    return major >= 9 ? wanted : 0;
  }();
  return level;
}

inline bool pdl_enabled() { return pdl_level() >= 1; }

// kernel<<<grid, block, smem, stream>>>(args...) with blocks (1, cluster_y, 1) forming a thread block cluster
// where cluster_y > 1 (split-K over a cluster: wo_gemm_v3.cu, wo_planes_tile.cu; sm_90), and with programmatic
// stream serialization where `pdl` and pdl_enabled().
template <typename... KArgs, typename... Args>
cudaError_t launch_cluster_y(void (*kernel)(KArgs...), bool pdl, dim3 grid, dim3 block, int smem, cudaStream_t stream,
                             int cluster_y, Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[2];
  int count = 0;
  if (cluster_y > 1) {
    attribute[count].id = cudaLaunchAttributeClusterDimension;
    attribute[count].val.clusterDim.x = 1;
    attribute[count].val.clusterDim.y = cluster_y;
    attribute[count].val.clusterDim.z = 1;
    ++count;
  }
  if (pdl && pdl_enabled()) {
    attribute[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[count].val.programmaticStreamSerializationAllowed = 1;
    ++count;
  }
  config.attrs = attribute;
  config.numAttrs = count;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Args&&>(args)...);
}

// kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization where `pdl` and
// pdl_enabled().
template <typename... KArgs, typename... Args>
void launch_maybe_pdl(void (*kernel)(KArgs...), bool pdl, dim3 grid, dim3 block, int smem, cudaStream_t stream,
                      Args&&... args) {
  if (!pdl || !pdl_enabled()) {
    kernel<<<grid, block, smem, stream>>>(static_cast<Args&&>(args)...);
    return;
  }
  launch_cluster_y(kernel, true, grid, block, smem, stream, 1, static_cast<Args&&>(args)...);
}

}  // namespace qtool
