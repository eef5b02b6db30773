// Host side of Programmatic Dependent Launch (PDL, sm_90+) for the weight-only kernels.
//
// With the launch attribute cudaLaunchAttributeProgrammaticStreamSerialization, a kernel may start
// before the previous kernel in the stream has finished: as soon as every block of that kernel has
// executed griddepcontrol.launch_dependents (pdl_launch_dependents) or exited. The early kernel
// must execute griddepcontrol.wait (pdl_wait) before it reads anything the previous kernel may have
// written and before it writes anything the previous kernel may still read; the wait returns once
// the previous grid has completed and its memory is visible. Our kernels call the wait in every
// thread, unconditionally, and trigger their own dependents only after their wait, so a kernel that
// starts early overlaps exactly one predecessor, and the kernel before that one has finished.
//
// QTOOL_PDL (read once per process):
//   0        plain launches (the v2 behaviour). The default: on the H100 (graph replay of 20
//            back-to-back GEMVs, 2026-11-23) PDL=1 measured 11.0 / 23.6 us against 10.6 / 22.2 us
//            plain at 4096 x 4096 / 4096 x 14336 W4, and PDL=2 9.7 / 24.1: no consistent gain.
//   1        PDL; every global read happens after the wait, so it is correct for any producer of any
//            input. Gains the launch and block start-up of the kernel, overlapped with the previous
//            kernel's tail.
//   2        PDL, and the first ring of weight loads (codes and group parameters) is issued BEFORE the
//            wait. Only correct when the kernel immediately before in the stream did not write the
//            packed weight (true in decoding with layers prepared once, kernels/weight_only.py
//            prepare_for_cuda; NOT guaranteed by the repack-per-call path of
//            qtool::weight_only_linear, whose last packing kernel may directly precede the op).
// Devices below sm_90, and CUDA runtimes older than 12.3 (no PDL edges in stream capture), always
// get plain launches; the kernels' griddepcontrol instructions are compiled for sm_90+ only.
#pragma once

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include <cuda_runtime.h>

namespace qtool {

enum class PdlMode { kOff = 0, kAfterWait = 1, kWeightsFirst = 2 };

// QTOOL_PDL parsed once; unset or empty -> kOff.
inline PdlMode pdl_env_mode() {
  static const PdlMode mode = [] {
    const char* s = std::getenv("QTOOL_PDL");
    if (s == nullptr || *s == '\0' || std::strcmp(s, "0") == 0) return PdlMode::kOff;
    if (std::strcmp(s, "1") == 0) return PdlMode::kAfterWait;
    if (std::strcmp(s, "2") == 0) return PdlMode::kWeightsFirst;
    std::fprintf(stderr, "qtool: QTOOL_PDL must be 0, 1 or 2, got '%s'; using 0\n", s);
    return PdlMode::kOff;
  }();
  return mode;
}

// Cleared when a PDL launch was refused, so later calls launch plainly.
inline std::atomic<bool>& pdl_usable() {
  static std::atomic<bool> usable{true};
  return usable;
}

// The mode for launches on the current device: kOff unless QTOOL_PDL allows it, the runtime
// records PDL edges under stream capture (12.3+) and the device is sm_90 or newer.
inline PdlMode pdl_mode() {
  const PdlMode env = pdl_env_mode();
  if (env == PdlMode::kOff || !pdl_usable().load(std::memory_order_relaxed)) return PdlMode::kOff;
  static const bool runtime_ok = [] {
    int version = 0;
    return cudaRuntimeGetVersion(&version) == cudaSuccess && version >= 12030;
  }();
  if (!runtime_ok) return PdlMode::kOff;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return PdlMode::kOff;
  constexpr int kMaxDevices = 64;
  static std::atomic<int> major_plus_one[kMaxDevices];  // 0: not queried yet
  if (device < 0 || device >= kMaxDevices) return PdlMode::kOff;
  int major = major_plus_one[device].load(std::memory_order_relaxed) - 1;
  if (major < 0) {
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) return PdlMode::kOff;
    major_plus_one[device].store(major + 1, std::memory_order_relaxed);
  }
  return major >= 9 ? env : PdlMode::kOff;
}

// kernel<<<grid, block, smem, stream>>>(args...), with the PDL attribute when `pdl`. Launch errors are
// left for the caller's cudaGetLastError (C10_CUDA_KERNEL_LAUNCH_CHECK), except that a refused PDL
// launch is retried plainly once and disables PDL for the rest of the process.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...),  // the __global__ function
                   dim3 grid, dim3 block,
                   size_t smem,                // dynamic shared memory, bytes
                   cudaStream_t stream,
                   bool pdl,                   // set cudaLaunchAttributeProgrammaticStreamSerialization
                   Args&&... args) {           // kernel arguments, converted to Params
  if (pdl) {
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
    const cudaError_t err = cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
    if (err == cudaSuccess) return;
    (void)cudaGetLastError();  // clear it; the plain launch below reports its own errors
    if (pdl_usable().exchange(false)) {
      std::fprintf(stderr, "qtool: PDL launch failed (%s); using plain launches from now on\n",
                   cudaGetErrorString(err));
    }
  }
  kernel<<<grid, block, smem, stream>>>(static_cast<Params>(args)...);
}

}  // namespace qtool
