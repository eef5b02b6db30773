// Resident blocks per SM of a kernel at a given dynamic shared memory size, asked of the runtime once
// per (kernel, bytes, device) and cached: wo_gemm_v3's split-K planner sizes its grid to the resident
// slots, and the occupancy query costs microseconds of CPU per call.
#pragma once

#include <map>
#include <mutex>
#include <tuple>

#include <cuda_runtime_api.h>

namespace qtool {

inline int blocks_per_sm(const void* kernel,  // a __global__ function
                         int threads,         // block size
                         int smem) {          // dynamic shared memory per block (the opt-in must be set)
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int, int>, int> cache;
  int device = 0;
  cudaGetDevice(&device);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(kernel, threads, smem, device);
  auto it = cache.find(key);
  if (it == cache.end()) {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem) != cudaSuccess) blocks = 1;
    it = cache.emplace(key, blocks < 1 ? 1 : blocks).first;
  }
  return it->second;
}

}  // namespace qtool
