// Occupancy asked of the runtime for the split-K planners: resident blocks per SM of a kernel at a given dynamic shared
// memory size, once per (kernel, bytes, device) and cached (wo_gemm_v3 sizes its grid to the resident slots, and the
// query costs microseconds of CPU per call), and resident clusters (wo_split's plan).
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

// Clusters of `splits` blocks of `kernel` (`threads` threads and smem bytes of dynamic shared memory each) resident on
// the device at once (cudaOccupancyMaxActiveClusters; blocks per SM times SMs for one split): a wave of the grid's row
// blocks; 0 where the block does not fit. Queried once per shape (split_plan caches the plan, not these).
inline int resident_clusters(const void* kernel, int threads, int smem, int splits, int num_sms) {
  int count = 0;
  cudaError_t err = cudaSuccess;
  if (splits == 1) {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&count, kernel, threads, smem);
    count *= num_sms;
  } else {
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(1, splits);
    config.blockDim = dim3(threads);
    config.dynamicSmemBytes = smem;
    cudaLaunchAttribute cluster = {};
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = 1;
    cluster.val.clusterDim.y = splits;
    cluster.val.clusterDim.z = 1;
    config.attrs = &cluster;
    config.numAttrs = 1;
    err = cudaOccupancyMaxActiveClusters(&count, kernel, &config);
  }
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // a configuration that cannot launch: not a plan, not a sticky error
    count = 0;
  }
  return count;
}

}  // namespace qtool
