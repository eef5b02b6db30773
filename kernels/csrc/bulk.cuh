// Hopper's bulk copy engine (TMA without a tensor map) and the mbarriers that track it, as inline PTX
// (sm_90+; callers guard their kernel bodies with __CUDA_ARCH__ >= 900).
//
// Why: a kernel that streams its weights with per-thread loads or cp.async keeps each request in the
// SM's load/store path until the data lands, and measured GEMVs here stayed at 17-44% of DRAM peak with
// everything issued up front (kernels/NOTES.md "Session 17"). A bulk copy is one instruction for up to
// the whole of a stage; the copy engine tracks it and signals an mbarrier with the bytes that arrived.
#pragma once

#include <cstdint>

namespace qtool {

__device__ inline uint32_t shared_address(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// One thread initializes; then fence_barrier_init and a block-wide barrier before any other use.
__device__ inline void barrier_init(uint64_t* bar, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(shared_address(bar)), "r"(arrivals) : "memory");
}

__device__ inline void fence_barrier_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }

// The producer's arrival, announcing the bytes the phase's copies will deliver.
__device__ inline void barrier_expect_bytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(shared_address(bar)), "r"(bytes)
               : "memory");
}

__device__ inline void barrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(shared_address(bar)) : "memory");
}

// Waits until the phase with this parity has completed (the hardware suspends the thread between tries).
__device__ inline void barrier_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(shared_address(bar)), "r"(parity)
        : "memory");
  }
}

// bytes [src, src + bytes) of global memory into shared memory at dst; completes `bytes` on bar.
// dst, src and bytes are multiples of 16.
__device__ inline void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(shared_address(dst)), "l"(src), "r"(bytes), "r"(shared_address(bar))
               : "memory");
}

// bar.sync on a named barrier (1-15) of `threads` threads: a block's consumer warps synchronize
// without the producer warp, which has left its loop.
__device__ inline void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

}  // namespace qtool
