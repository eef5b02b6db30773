// Counters that split-K kernels leave zero (host side): the split that finishes a tile resets the tile's counter,
// so they are zeroed once per device instead of by a memset before every launch (a graph node of its own, which
// also keeps the kernel from overlapping the one before it under PDL). Used by the Hopper GEMM libraries' scheduler
// (sm90/sm90_scheduler.cuh) and by wo_gemm (wo_gemm.cu). Two kernels sharing one set must not run at the same time
// on two streams: qtool runs its layers on one stream.
#pragma once

#include <cstddef>
#include <mutex>

#include <cuda_runtime_api.h>

namespace qtool {

class KeptCounters {
 public:
  explicit KeptCounters(size_t count) : count_(count) {}

  size_t count() const { return count_; }

  // The current device's counters, made and zeroed on first use; nullptr when that first use is inside a graph
  // capture (which cannot allocate: the caller takes its memset path then) or on a CUDA error.
  int* get(cudaStream_t stream) {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices) return nullptr;
    std::lock_guard<std::mutex> hold(mutex_);
    if (counters_[device] == nullptr) {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) {
        return nullptr;
      }
      int* p = nullptr;
      if (cudaMalloc(&p, count_ * sizeof(int)) != cudaSuccess) return nullptr;
      // zeroed on this stream and waited for, once: a later call on another stream must see zeros
      if (cudaMemsetAsync(p, 0, count_ * sizeof(int), stream) != cudaSuccess ||
          cudaStreamSynchronize(stream) != cudaSuccess) {
        cudaFree(p);
        return nullptr;
      }
      counters_[device] = p;
    }
    return counters_[device];
  }

 private:
  static constexpr int kMaxDevices = 64;
  size_t count_;
  std::mutex mutex_;
  int* counters_[kMaxDevices] = {};
};

}  // namespace qtool
