// The consumer lanes' weights of the wgmma weight-only GEMM (wo_wgmma_sm90.cu): the kernel's arguments, and each
// lane's cp.async ring of codes (and scales) in shared memory, from which load_a makes wgmma's register A.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "wgmma_async.cuh"
#include "wgmma_weights.cuh"

namespace qtool::wgmma {

constexpr int kChunkK = 64;  // k per chunk: a lane's 16-byte word of int4 codes, 16 bytes of two rows of 8-bit codes
// Chunks of codes each consumer lane has in flight (LaneRing): 8, 128 bytes a lane for 4 bits, 256 for 8. Session 66
// (ncu, H100): a depth of 16 took 96 KB a CTA of two warpgroups and left one CTA, 9 warps, on an SM, whose loop is a
// latency chain (2.2 warps a scheduler, 0.4 issued a cycle); at 8 two or more CTAs share an SM with the same bytes
// in flight per SM (>= 64 KB: ~25 KB cover HBM's latency at an SM's share of its bandwidth).
#ifndef QTOOL_WGMMA_DEPTH  // -DQTOOL_WGMMA_DEPTH=16: a variant library for A/Bs (dev/session67.sh depth)
#define QTOOL_WGMMA_DEPTH 8
#endif
constexpr int kDepth = QTOOL_WGMMA_DEPTH;
constexpr int kMaxSplit = 8; // the portable cluster size
constexpr int kRingSmem = 32 * 1024;  // bytes of activation stages per CTA by default (4-8 stages)
constexpr int kMaxStages = 16;

struct Args {  // mirrored by kernels/warpgroup_mm.py, _Args
  const void* qweight;  // int32 [n_pad / 16, k_pad / 64, 32, 4]; 8-bit kinds: int8 / e4m3 [n, k] row-major
  const float* scale;   // [G, n_pad]; 8-bit rows: [n] (scale_stride 1) or [1] (0); blocks: [n / 128, scale_stride]
  const float* zero;    // [G, n_pad] signed-domain zero points, or null (symmetric)
  const float* bias;    // [n] or null
  const void* x;        // bf16 [m, k] row-major
  void* y;              // bf16 [m, n] row-major
  int m, n, n_pad, k, k_pad, group;  // group: k per scale (a multiple of 64), k_pad per channel
  int tile, warpgroups, split, launch;  // tokens per CTA (16 / 32 / 64 / 128), 64-row warpgroups (1, 2, 4), splits;
  // launch: bit 0 PDL, bit 1 the tall tile (128 rows a warpgroup; 4-bit, tiles <= 64, 1-2 warpgroups)
  // bit 2 the post-scale form (4-bit scales applied to float32 partial sums after the MMA, wgmma_groups.cuh; tiles
  // <= 32, 1-2 warpgroups, not tall)
  int kind, scale_stride;  // kind: 0 the 4-bit kernel layout, 1 int8 rows, 2 e4m3 rows, 3 e4m3 128 x 128 blocks,
                           // 4 e5m2 rows
  int stages;              // activation stages (2 .. 16; 0: kRingSmem's worth)
};

// Each consumer lane's private ring in shared memory: its codes (the 4-bit layout's 16-byte word, or 16 bytes of
// each of its two rows of 8-bit codes) and, for 4 bits, its rows' scales (and zero points) for kDepth chunks, copied
// with cp.async so that many loads are in flight without holding registers (a ring of 8 in registers took ~250 of
// them and serialized the wgmmas; session 63 measured the same for the split GEMV). Lane-private: a lane's
// cp.async.wait_group is all the synchronization its slots need. 8-bit kinds add each warp's 1 KB transposition
// buffer (wgmma_weights.cuh, rows_to_a) after the ring.
template <int WG, int W>
struct LaneRing {
  static constexpr int kLanes = WG * 128;
  static constexpr int kCodeBytes = kRows<W> ? 32 : 16;
  // (s r0, s r0 + 8[, z r0, z r0 + 8]); the block's scale; none for per-channel rows (applied after the sum)
  static constexpr int kScaleBytes = W == kE4m3Blocks ? 4 : kRows<W> ? 0 : W == kW4Asym ? 16 : 8;
  static constexpr int kRingBytes = kDepth * kLanes * (kCodeBytes + kScaleBytes);
  static constexpr int kBytes = kRingBytes + (kRows<W> ? WG * 4 * 1024 : 0);
  __device__ static uint32_t codes(uint32_t base, int slot, int tid) {
    return base + (slot * kLanes + tid) * kCodeBytes;
  }
  __device__ static uint32_t scales(uint32_t base, int slot, int tid) {
    return base + kDepth * kLanes * kCodeBytes + (slot * kLanes + tid) * kScaleBytes;
  }
  __device__ static uint32_t xpose(uint32_t base, int tid) { return base + kRingBytes + (tid / 32) * 1024; }
};

// Where a consumer lane's codes come from: the 4-bit layout's words (`codes`, the lane's word of chunk 0) or the
// rows r0 and r0 + 8 of 8-bit codes at k 16 (lane % 4) of each chunk (`row0`, `row8`: null past n).
struct LaneSource {
  const uint4* codes;
  const uint8_t* row0;
  const uint8_t* row8;
  int k_lane;  // the lane's k offset in a chunk (8-bit kinds)
};

// The 4-bit scales' row for the next chunk issued: chunks are issued in order, so the group advances by counting
// (an integer division per chunk was ~30 of a chunk's ~200 instructions, session 66's SASS).
struct GroupCursor {
  int64_t at;  // g * n_pad + r0: the scale (and zero point) of the lane's row r0 in the chunk's group g
  int left;    // chunks left in group g
  int group_chunks, n_pad;
  __device__ GroupCursor(const Args& p, int c_beg, int r0)
      : group_chunks(p.group >= kChunkK ? p.group / kChunkK : 1), n_pad(p.n_pad) {  // 8-bit kinds: unused
    at = static_cast<int64_t>(c_beg / group_chunks) * n_pad + r0;
    left = group_chunks - c_beg % group_chunks;
  }
  __device__ void advance() {
    if (--left == 0) {
      left = group_chunks;
      at += n_pad;
    }
  }
};

// Issue chunk c's copies into its slot; the caller commits them as one group (an empty one past the end, so that
// the waits count alike). WG: the ring's warpgroups of lanes (a tall tile's second stripes are lanes tid + 128 WG of a
// ring twice as wide).
template <int WG, int W>
__device__ inline void issue(const Args& p, uint32_t base, int tid, const LaneSource& src, GroupCursor& group, int c,
                             int c_beg, int chunks, int r0, bool live) {
  using L = LaneRing<WG, W>;
  if (live && c < chunks) {
    const int slot = c % kDepth;
    const uint32_t at = L::codes(base, slot, tid);
    if constexpr (kRows<W>) {  // 16 bytes of each row, zero past k or n (k % 16 == 0: all or nothing)
      const int k = (c_beg + c) * kChunkK + src.k_lane;
      const bool in0 = src.row0 != nullptr && k < p.k, in8 = src.row8 != nullptr && k < p.k;
      cp_async16(at, in0 ? src.row0 + k : p.qweight, in0 ? 16 : 0);
      cp_async16(at + 16, in8 ? src.row8 + k : p.qweight, in8 ? 16 : 0);
      if constexpr (W == kE4m3Blocks)  // the warpgroup's block row (64 rows in one 128), the chunk's block column
        cp_async4(L::scales(base, slot, tid), p.scale + (r0 / 128) * p.scale_stride + (k - src.k_lane) / 128);
    } else {
      cp_async16(at, src.codes + c * 32, 16);
      const int64_t g = group.at;
      group.advance();
      const uint32_t s = L::scales(base, slot, tid);
      cp_async4(s, p.scale + g);
      cp_async4(s + 4, p.scale + g + 8);
      if constexpr (W == kW4Asym) {
        cp_async4(s + 8, p.zero + g);
        cp_async4(s + 12, p.zero + g + 8);
      }
    }
  }
}
__device__ inline void commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int W>
__device__ inline LaneSource lane_source(const Args& p, int stripe, int c_beg, int lane) {
  LaneSource src{};
  if constexpr (kRows<W>) {
    const int r0 = stripe * 16 + lane / 4;
    const uint8_t* rows = static_cast<const uint8_t*>(p.qweight);
    src.row0 = r0 < p.n ? rows + static_cast<int64_t>(r0) * p.k : nullptr;
    src.row8 = r0 + 8 < p.n ? rows + static_cast<int64_t>(r0 + 8) * p.k : nullptr;
    src.k_lane = 16 * (lane % 4);
  } else {
    src.codes = static_cast<const uint4*>(p.qweight) +
                (static_cast<int64_t>(stripe) * (p.k_pad / kChunkK) + c_beg) * 32 + lane;
  }
  return src;
}

// Chunk `slot`'s codes (and scales) from the lane's ring -> the 16 A registers; Post (4 bits): the codes q - z
// unscaled, the group's scales applied after the MMA (group_scales).
template <int WG, int W, bool Post = false>
__device__ inline void load_a(uint32_t lanes, int slot, int tid, uint32_t (&a)[16]) {
  using L = LaneRing<WG, W>;
  const uint32_t at = L::codes(lanes, slot, tid);
  if constexpr (kRows<W>) {
    __nv_bfloat162 block_scale = __float2bfloat162_rn(1.0f);
    if constexpr (W == kE4m3Blocks) block_scale = __float2bfloat162_rn(lds32f(L::scales(lanes, slot, tid)));
    rows_to_a<W>(lds128(at), lds128(at + 16), L::xpose(lanes, tid), tid % 32, block_scale, a);
  } else if constexpr (Post) {
    const float2 z = W == kW4Asym ? lds64f(L::scales(lanes, slot, tid) + 8) : make_float2(0.f, 0.f);
    dequant<false>(lds128(at), {}, {}, __float2bfloat162_rn(136.0f + z.x), __float2bfloat162_rn(136.0f + z.y), a);
  } else {
    float4 sz = make_float4(0.f, 0.f, 0.f, 0.f);
    const uint32_t s = L::scales(lanes, slot, tid);
    if constexpr (W == kW4Asym) {
      sz = lds128f(s);
    } else {
      const float2 s2 = lds64f(s);
      sz.x = s2.x;
      sz.y = s2.y;
    }
    dequant(lds128(at), __float2bfloat162_rn(sz.x), __float2bfloat162_rn(sz.y), __float2bfloat162_rn(136.0f + sz.z),
            __float2bfloat162_rn(136.0f + sz.w), a);
  }
}

// Chunk `slot`'s scales of the lane's rows r0 and r0 + 8 (4 bits), float32.
template <int WG, int W>
__device__ inline float2 group_scales(uint32_t lanes, int slot, int tid) {
  return lds64f(LaneRing<WG, W>::scales(lanes, slot, tid));
}

}  // namespace qtool::wgmma
