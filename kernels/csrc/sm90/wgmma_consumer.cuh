// The consumer warpgroups' mainloop of the wgmma weight-only GEMM (wo_wgmma_sm90.cu): the activation ring's
// stages, and a warpgroup's walk over its CTA's chunks (the weights' lane ring into register A, the stage's bytes,
// the wgmmas), with the group scales in the mainloop or after the MMA (wgmma_groups.cuh).
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "wgmma_async.cuh"
#include "wgmma_groups.cuh"
#include "wgmma_lanes.cuh"

namespace qtool::wgmma {

template <int T>
struct Stages {  // the activation ring: T tokens x 64 k of bf16 per stage
  static constexpr int kBytes = T * kChunkK * 2;
  static_assert(kBytes % 1024 == 0, "stages 1024-byte aligned: the swizzle's atoms, and mma_chunk's descriptor steps");
  static constexpr int kDefault = kRingSmem / kBytes < 4 ? 4 : kRingSmem / kBytes > 8 ? 8 : kRingSmem / kBytes;
  __host__ __device__ static int count(const Args& p) { return p.stages > 0 ? p.stages : kDefault; }
};

// A ring position: the stage and its mbarrier parity, advanced chunk by chunk (no division by a runtime count).
struct Cursor {
  int stage = 0, parity = 0;
  const int count;
  __device__ explicit Cursor(int stages) : count(stages) {}
  __device__ void advance() {
    if (++stage == count) {
      stage = 0;
      parity ^= 1;
    }
  }
};

// A consumer warpgroup: 64 rows (stripes 4 wg .. 4 wg + 3 of the CTA's tile), or with Tall 128 (each warp its
// stripe and the one 4 below it: two m64 HGMMAs a k16 step on one B descriptor, so a chunk's issue, waits,
// descriptors and loop serve twice the weights), over the CTA's chunks [c_beg, c_beg + chunks).
template <int T, int WG, int W, bool Tall>
struct Consumer {
  static constexpr int D = kDepth, RW = Tall ? 2 * WG : WG;  // RW: the lanes' ring's width in warpgroups
  const Args& p;
  const uint32_t ring, lanes, full, empty;
  const int c_beg, chunks, tid, lane, r0, r1;
  const bool live, live1;
  const LaneSource src, src1;
  GroupCursor group, group1;
  Cursor at;
  int last = 0;  // the previous chunk's stage
  __device__ Consumer(const Args& p, uint32_t ring, uint32_t lanes, uint32_t full, uint32_t empty, int c_beg,
                      int chunks, int stripe, int tid)
      : p(p), ring(ring), lanes(lanes), full(full), empty(empty), c_beg(c_beg), chunks(chunks), tid(tid),
        lane(tid % 32), r0(stripe * 16 + tid % 32 / 4), r1(r0 + 64), live(stripe * 16 < p.n_pad),
        live1(Tall && (stripe + 4) * 16 < p.n_pad), src(lane_source<W>(p, stripe, c_beg, tid % 32)),
        src1(Tall ? lane_source<W>(p, stripe + 4, c_beg, tid % 32) : src), group(p, c_beg, r0), group1(p, c_beg, r1),
        at(Stages<T>::count(p)) {}
  __device__ void issue_chunk(int c) {  // chunk c's copies into the lanes' ring, one commit group
    issue<RW, W>(p, lanes, tid, src, group, c, c_beg, chunks, r0, live);
    if constexpr (Tall) issue<RW, W>(p, lanes, tid + WG * 128, src1, group1, c, c_beg, chunks, r1, live1);
    commit();
  }
  // Chunk c: chunk c + D - 1's copies issued, chunk c's A registers (Post: unscaled) loaded, its stage's TMA bytes
  // landed (async proxy, as wgmma reads: no fence), the wgmma fence: the stage's address.
  template <bool Post>
  __device__ uint32_t prepare(int c, uint32_t (&a)[16], uint32_t (&b)[16]) {
    issue_chunk(c + D - 1);
    asm volatile("cp.async.wait_group %0;" ::"n"(D - 1) : "memory");  // chunk c's group has landed
    load_a<RW, W, Post>(lanes, c % D, tid, a);
    if constexpr (Tall) load_a<RW, W, Post>(lanes, c % D, tid + WG * 128, b);
    mbar_wait(full + 8 * at.stage, at.parity);
    wgmma_fence();
    return ring + at.stage * Stages<T>::kBytes;
  }
  __device__ void retire(int c) {  // after chunk c's wgmmas: chunk c - 1's done, its stage and A registers free
    wgmma_commit();
    wgmma_wait<1>();
    if (c > 0 && lane == 0) mbar_arrive(empty + 8 * last);
    last = at.stage;
    at.advance();
  }
};

// The group scales after the MMA (g128: a group is two chunks, the CTA's first chunk opens one): four chunks a
// trip, chunks 0-1 into set 0 and 2-3 into set 1, each set's first wgmma starting afresh; a group's set is folded
// when the next group's first chunk is converted, after its wgmmas are done. 64-row stripes only (kHasPost).
template <int T, int WG, int W>
__device__ void mainloop_post(Consumer<T, WG, W, false>& k, float (&acc)[T / 2]) {
  uint32_t a[2][16], unused[1][16];
  float unused_sums[1];
  GroupSums<T> sums;
  for (int c0 = 0; c0 < k.chunks; c0 += 4) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = c0 + j, set = j / 2;
      if (c < k.chunks) {
        const uint32_t stage = k.template prepare<true>(c, a[j % 2], unused[0]);
        if (j % 2 == 0) {  // a group opens: the one before folded (zero scales before the first), its scales
          wgmma_wait<0>();  // not wait<1> after this chunk's wgmmas: ptxas serialized them all then (C7514)
          if (j == 0) sums.template fold_into<1>(acc);
          else sums.template fold_into<0>(acc);
          sums.s[set] = group_scales<WG, W>(k.lanes, c % kDepth, k.tid);
        }
        mma_chunk<T, false>(sums.g[set], unused_sums, a[j % 2], unused[0], stage, j % 2);
        k.retire(c);
      }
    }
  }
  wgmma_wait<0>();
  const float in1 = (k.chunks - 1) / 2 % 2;  // the last group's set, folded branch-free
  sums.template fold_into<0>(acc, 1.0f - in1);
  sums.template fold_into<1>(acc, in1);
}

// The chunks in order, each chunk's wgmmas into acc (Unscaled: the 4-bit codes q - z, a per-channel weight's scales
// applied after the loop).
template <bool Unscaled, int T, int WG, int W, bool Tall>
__device__ void mainloop(Consumer<T, WG, W, Tall>& k, float (&acc)[T / 2], float (&acc1)[Tall ? T / 2 : 1]) {
  uint32_t a[2][16], b[Tall ? 2 : 1][16];
  for (int c0 = 0; c0 < k.chunks; c0 += 2) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {  // two chunks per trip: a[] double-buffered by static index
      const int c = c0 + j;
      if (c < k.chunks) {
        const uint32_t stage = k.template prepare<Unscaled>(c, a[j], b[Tall ? j : 0]);
        mma_chunk<T, Tall>(acc, acc1, a[j], b[Tall ? j : 0], stage, 1);
        k.retire(c);
      }
    }
  }
  wgmma_wait<0>();
}

// A warpgroup's chunks; Post (the post-scale form, kHasPost): g128 groups scaled after the MMA, a per-channel
// weight's scales once after the loop, other groups as the plain kernel.
template <int T, int WG, int W, bool Tall, bool Post>
__device__ void consume(const Args& p, uint32_t ring, uint32_t lanes, uint32_t full, uint32_t empty, int c_beg,
                        int chunks, int stripe, int tid, float (&acc)[T / 2], float (&acc1)[Tall ? T / 2 : 1]) {
  Consumer<T, WG, W, Tall> k(p, ring, lanes, full, empty, c_beg, chunks, stripe, tid);
#pragma unroll
  for (int c = 0; c < kDepth - 1; ++c) k.issue_chunk(c);
  pdl_wait();
  if constexpr (Post) {
    static_assert(kHasPost<T, WG, W, Tall>, "the post-scale form: 4-bit, <= 32 tokens, 1-2 warpgroups, not tall");
    if (post_groups(p.group, p.k_pad)) {
      mainloop_post(k, acc);
    } else if (p.group >= p.k_pad && chunks > 0) {  // per channel: one group, its scales after the loop
      mainloop<true>(k, acc, acc1);
      const int slot = (chunks - 1) % kDepth;  // the last chunk's slot: no copy lands there after it
      scale_rows<T>(acc, group_scales<WG, W>(lanes, slot, tid));
    } else {
      mainloop<false>(k, acc, acc1);
    }
  } else {
    mainloop<false>(k, acc, acc1);
  }
  asm volatile("cp.async.wait_all;" ::: "memory");  // the empty groups past the end
}

}  // namespace qtool::wgmma
