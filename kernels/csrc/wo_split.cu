// wo_gemv variant 7, "split": 4-bit weights (zero points or none, groups >= 64 or per channel) times x for 1 <= m <=
// kSplitMaxTokens tokens (kSplitMaxAsymTokens with zero points), split-K over a thread block cluster, x quantized to
// two int8 planes inside each block. Written for issue 19's 9-32-token cells; routed where it measured faster:
// symmetric weights of K <= 4096 and N <= 6144 (14336 to 12 tokens), or N <= 4096 and K <= 14336, at 9-16 tokens
// (kernels/int8_planes.py, split_by_shape; session 60).
//
// Why (kernels/NOTES.md, "Session 48" and "Session 58"): at 16 tokens every kernel we had sat on ~5-8 us of fixed
// time per call. The mixed-input GEMM's is its own latency chain; the one-stripe planes GEMV (wo_planes.cu, four
// n-tiles) reads B from L2 at 4x the code bytes; the tile kernel (wo_planes_tile.cu) staged codes and planes per
// stage behind one barrier per stage, so its warps could never run ahead of the slowest. Here each half is done the
// way that measured well:
//   - A block: W warps on W stripes (16 W rows; W = 16, or 8 on 4096 x 4096-sized weights at 9-16 tokens), one K
//     slice (chunks [c_beg, c_end)) of split blockIdx.y.
//   - Before the PDL wait each warp starts its ring: kSplitDepth chunks of its stripe's codes copied into shared
//     memory by cp.async (the registers of a ring that deep would cost the occupancy), its scales in registers (in
//     shared memory beside the codes in the narrow block: split_scale_ring).
//   - After the wait, the block quantizes its slice of x into two int8 planes in shared memory (x = s hi + s / 254
//     lo, s = the token's max over the slice / 127: no x_planes launch before it, and a scale at least as fine as the
//     row's), then one barrier.
//   - Then every warp walks its own chunks free-running (no barrier: each lane reads back only the bytes it copied):
//     B from shared memory (shared by the block's W stripes; plane rows 64 bytes apart mod 128, so a warp's loads are
//     conflict free), NT n-tiles of mma.m16n8k32.s8 per chunk, int32 sums folded once per chunk (per pair of chunks
//     where a group spans both).
//   - The partial tile, scaled by its slice's token scales, is summed over the cluster in rank order
//     (cluster_sum.cuh): one launch, no workspace, the same bits on every run.
// Session 58 measured the first version (a 4-deep register ring) phase by phase (kernels/NOTES.md): staging, the
// mma and the cluster's sum each cost about as much as streaming the codes, one after another in the one wave.
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "cluster_sum.cuh"
#include "pdl.cuh"
#include "planes.cuh"
#include "wo_common.cuh"
#include "wo_occupancy.h"
#include "x_planes.cuh"

namespace qtool {
namespace {

// Warps (= stripes) per block, W: 16 (one block per SM, one staging of x for 256 rows), or 8 where the weight is
// 4096 x 4096-sized and symmetric at 9-16 tokens (split_narrow). Session 60 (H100, dev/split_ab.py, three builds): at
// its best split count the 8-warp block ran one block per SM, two warps per scheduler to cover each chunk's chain of
// shared-memory loads and mma, its staging of x serving 8 stripes; 16 warps took 4096 x 6144 at 16 tokens 1.61x ->
// 1.77x, 14336 x 4096 1.96x -> 2.25x, 8192 x 8192 1.77x -> 2.08x, and lost only on 4096 x 4096 (1.67x -> 1.59x,
// 16 row blocks for 132 SMs).
constexpr int kSplitWarpsWide = 16, kSplitWarpsNarrow = 8;
constexpr int kSplitChunkK = 64;  // int4 chunk (wo_kernels.h, chunk_k(4))
// Chunks per warp in flight (even: a pair's two chunks are slots u, u + 1): 8 (4 KB of codes per warp). A build
// option (QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_DEPTH=16): session 60 measured 16 deep 10-30% slower on every shape (with
// 8 warps per block: its shared memory cost blocks and splits). The ring in registers instead (the 16-warp block,
// 4 or 8 chunks deep: no shared-memory round trip per chunk; session 63, H100, a build option since removed) ran
// 14-33% slower at 9-16 tokens (4096 x 6144 2.01 -> 1.61x, 14336 x 4096 2.43 -> 1.77x, 8192 x 8192 2.31 -> 1.65x
// at 9 tokens): the cp.async ring keeps each warp's copies in flight without holding registers for them.
#ifndef QTOOL_SPLIT_DEPTH
#define QTOOL_SPLIT_DEPTH 8
#endif
constexpr int kSplitDepth = QTOOL_SPLIT_DEPTH;
// The scales' ring: each slot's scales copied by cp.async into shared memory with its codes (lanes t = 0 / 1 of each
// quad, 4 bytes each, 64 bytes per warp and slot) instead of a register __ldg, in the narrow block only (a build
// option, QTOOL_NVCC_EXTRA=-DQTOOL_SPLIT_SCALE_RING=N: 0 never, 1 every block, 2 the narrow block, the default).
// Session 60's Nsight Compute put the largest single stall line (13% of the samples, 8 warps per block) on the shuffle
// of a pair's scales waiting for that __ldg. Session 61 (H100, dev/session61.sh ringabc: one process per build, twice):
// 4096 x 4096 (the narrow block, 8 chunks per warp) 9.5 -> 8.9 us at 9 tokens, 10.1 -> 9.6 at 16; with 16 warps level
// on K = 4096 and 3-7% slower where K >= 8192 (37-64 chunks per warp: one more shared load per chunk in the steady
// state).
#ifndef QTOOL_SPLIT_SCALE_RING
#define QTOOL_SPLIT_SCALE_RING 2
#endif
constexpr bool split_scale_ring(int w) {
  return QTOOL_SPLIT_SCALE_RING == 1 || (QTOOL_SPLIT_SCALE_RING == 2 && w == kSplitWarpsNarrow);
}
constexpr int split_scale_slot(int w) { return split_scale_ring(w) ? 64 : 0; }  // bytes per warp and slot

// Blocks per SM the registers are bounded for: three (<= 85 registers), two at eight n-tiles and at four with zero
// points (in 80 registers that spilled 136 bytes).
// Sixteen warps: one block per SM (<= 128 registers).
constexpr int split_min_blocks(int w, int nt, bool asym) { return w == 16 ? 1 : nt == 8 || (asym && nt == 4) ? 2 : 3; }
// Bytes between plane rows for a slice of `chunks`: 64 mod 128, so that each quarter-warp's B load (rows g, g + 1 of
// an n-tile, 16 bytes at lane t) covers 128 distinct bytes.
constexpr int split_row_bytes(int chunks) { return (chunks | 1) * kSplitChunkK; }
// Shared memory: the slice's planes (8 NT rows; after the main loop the partial tile [16 W rows][4 NT] float32
// overlays them), then each warp's ring of kSplitDepth chunks of codes.
constexpr int split_smem_bytes(int w, int nt, int chunks) {
  const int planes = 8 * nt * split_row_bytes(chunks), partial = w * kStripeRows * cluster_tok_stride(4 * nt) * 4;
  return (planes > partial ? planes : partial) + w * kSplitDepth * (512 + split_scale_slot(w));
}

// The block's slice of x (tokens < m, chunks [c_beg, c_end)) as two int8 planes at `planes` (rows 2r / 2r + 1: token
// r's high / low plane, row_bytes apart, plane_slot order from the slice's first chunk) and each token's scale over
// the slice in scale[r]. TPR threads per token, each on subtiles j0, j0 + TPR, ...: the first kSplitHeld of them
// loaded once into registers, any past them read again (L1) for the planes; the max shuffled among the token's
// threads. Ends with the barrier after which the planes are the block's.
constexpr int kSplitHeld = 2;
template <typename T, int W, int NT>
__device__ inline void stage_slice(const WoProblem& p, int c_beg, int c_end, uint8_t* planes, int row_bytes,
                                   float* scale) {
  // 32, 16 or 8: a token's threads sit in one warp (sixteen warps at two n-tiles: rows past 4 NT stage nothing)
  constexpr int TPR = W * 32 / (4 * NT) < 32 ? W * 32 / (4 * NT) : 32;
  const int r = threadIdx.x / TPR, j0 = threadIdx.x % TPR;
  const int subs = p.m > r ? 4 * (c_end - c_beg) : 0;  // a token past m stages nothing
  const uint4* xg = opaque(static_cast<const uint4*>(p.x)) + static_cast<size_t>(subs ? r : 0) * (p.w.k_padded / 8) +
                    c_beg * (kSplitChunkK / 8);
  uint4 v[kSplitHeld][2];
  float mx = 0.0f;
#pragma unroll
  for (int i = 0; i < kSplitHeld; ++i) {
    const int j = j0 + i * TPR;
    if (j < subs) {
      v[i][0] = __ldg(xg + 2 * j);
      v[i][1] = __ldg(xg + 2 * j + 1);
      mx = vec_absmax<T>(v[i][1], vec_absmax<T>(v[i][0], mx));
    }
  }
  for (int j = j0 + kSplitHeld * TPR; j < subs; j += TPR)
    mx = vec_absmax<T>(__ldg(xg + 2 * j + 1), vec_absmax<T>(__ldg(xg + 2 * j), mx));
#pragma unroll
  for (int off = TPR / 2; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
  float2 inverse;
  const float s = token_scale(mx, inverse);
  if (subs > 0 && j0 == 0) scale[r] = s;
  uint8_t* dst = planes + 2 * r * row_bytes;
#pragma unroll
  for (int i = 0; i < kSplitHeld; ++i) {
    const int j = j0 + i * TPR;
    if (j < subs) store_subtile<T, false>(v[i][0], v[i][1], s, inverse, dst + plane_slot(16 * j), row_bytes);
  }
  for (int j = j0 + kSplitHeld * TPR; j < subs; j += TPR)
    store_subtile<T, false>(__ldg(xg + 2 * j), __ldg(xg + 2 * j + 1), s, inverse, dst + plane_slot(16 * j), row_bytes);
  __syncthreads();
}

// One chunk's mma for every n-tile: A from the chunk's codes w (the wo layout's 16 x 32 tiles, words 2 tile / 2 tile
// + 1), B from the slice's planes (bchunk: the chunk's first byte of plane row 0; boff: the lane's row and quarter
// per n-tile). `first`: d[i] starts over (a chunk's, or a pair's, first sums); sz0 / sz1: s z of rows g / g + 8.
template <int NT, bool ASYM>
__device__ inline void chunk_mma(bool first, const uint4& w, const uint8_t* bchunk, const uint32_t (&boff)[NT],
                                 float sz0, float sz1, int (&d)[NT][4], float (&acc)[NT][2]) {
  uint32_t a[2][4];
  tile_a(int4_word_s8x16(w.x), int4_word_s8x16(w.y), a[0]);
  tile_a(int4_word_s8x16(w.z), int4_word_s8x16(w.w), a[1]);
#pragma unroll
  for (int i = 0; i < NT; ++i)  // independent sums: the n-tiles' mma chains overlap
    chunk_ntile_mma<ASYM>(first, a, *reinterpret_cast<const uint4*>(bchunk + boff[i]), sz0, sz1, d[i], acc[i]);
}

// The block's partial tile [row][token] (float32 at `partial`), each lane's sums times its slice's s_x / 16, then the
// cluster's sum in rank order (cluster_sum.cuh): y = sum + bias.
template <typename T, int W, int NT>
__device__ inline void store_split(const WoProblem& p, const float (&acc)[NT][2], const float* scale, float* partial) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  constexpr int TOK = cluster_tok_stride(4 * NT);
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    const int tok = 4 * i + t;
    const float unit = tok < p.m ? scale[tok] * (1.0f / 16.0f) : 0.0f;
    partial[(warp * kStripeRows + g) * TOK + tok] = acc[i][0] * unit;
    partial[(warp * kStripeRows + g + 8) * TOK + tok] = acc[i][1] * unit;
  }
  cluster_sum_store<T>(p, partial, W * kStripeRows, TOK, nullptr, 1.0f);
}

template <typename T,  // activation and output type: __half or __nv_bfloat16
          int W,       // warps = stripes per block: 16 or 8
          int NT,      // n-tiles of 4 tokens: 2 (<= 8 tokens), 4 (<= 16) or 8 (<= 32)
          bool ASYM,   // zero points (p.w.zero), w = s (q - z): A stays 16 q and 16 z times the chunk's sum of x (two
                       // more mma per n-tile, as wo_planes.cu) is subtracted
          bool PAIR>   // groups of >= 128 (or per channel), no zero points: a pair of chunks shares its scales (each
                       // split starts at an even chunk), so the int32 sums run over the pair and are folded once
__global__ void __launch_bounds__(W * 32, split_min_blocks(W, NT, ASYM))
    wo_split_kernel(const WoProblem p, int chunks_per_split) {  // even (split_chunks)
  extern __shared__ __align__(16) uint8_t split_smem[];
  __shared__ float scale[4 * NT];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int stripe = blockIdx.x * W + warp;
  const bool live = stripe < p.w.n_padded / kStripeRows;  // a last block's extra warps stage x, no math
  const int nchunks = p.w.k_padded / kSplitChunkK;
  const int c_beg = min(nchunks, static_cast<int>(blockIdx.y) * chunks_per_split);
  const int c_end = min(nchunks, c_beg + chunks_per_split);
  const int mine = live ? c_end - c_beg : 0;  // the warp's chunks
  const int row_bytes = split_row_bytes(chunks_per_split);

  // The ring: kSplitDepth slots of 512 bytes per warp in shared memory after the planes, filled by cp.async (each lane
  // its own 16 bytes, which only it reads: no barrier), slot u holding chunk c0 + u; one commit group per slot
  // refill, copy or none, so that waiting for all but kSplitDepth - 1 groups means the oldest slot has landed. The
  // scales ride a register ring beside it (lanes t = 0 / 1 of each quad: row g / g + 8's), or the shared one.
  const uint32_t ring = static_cast<uint32_t>(__cvta_generic_to_shared(split_smem)) + 8 * NT * row_bytes +
                        (warp * kSplitDepth * 32 + lane) * 16;
  const uint8_t* ring_ptr = split_smem + 8 * NT * row_bytes + (warp * kSplitDepth * 32 + lane) * 16;
  const size_t row0 = static_cast<size_t>(live ? stripe : 0) * kStripeRows + g + 8 * (t % 2);
  const float* par = opaque(p.w.scale + row0);
  const float* zpar = ASYM ? opaque(p.w.zero + row0) : nullptr;
  const uint4* codes = reinterpret_cast<const uint4*>(p.w.qweight) +
                       (static_cast<size_t>(live ? stripe : 0) * nchunks + c_beg) * chunk_vecs(4) + lane;
  constexpr bool kScaleRing = split_scale_ring(W);
  // With kScaleRing: lane t < 2's scale of slot u at its own 4 bytes of the warp's slot after the code ring.
  const int scale_at = 8 * NT * row_bytes + W * kSplitDepth * 512 + (warp * kSplitDepth * 16 + 2 * g + t % 2) * 4;
  float prm[kScaleRing ? 1 : kSplitDepth] = {};
  float zrm[ASYM ? kSplitDepth : 1] = {};
  auto issue = [&](int u, int c) {
    if (c < mine) {
      cp_async_shared_16(ring + u * 512, codes + c * chunk_vecs(4));
      const uint32_t group = static_cast<uint32_t>((c_beg + c) * kSplitChunkK) >> p.w.group_shift;
      if constexpr (kScaleRing) {
        if (t < 2)
          cp_async_shared_4(static_cast<uint32_t>(__cvta_generic_to_shared(split_smem)) + scale_at + u * 64,
                            par + group * p.w.n_padded);
      } else {
        prm[u] = __ldg(par + group * p.w.n_padded);
      }
      if constexpr (ASYM) zrm[u] = __ldg(zpar + group * p.w.n_padded);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int u = 0; u < kSplitDepth; ++u) issue(u, u);  // static weights: before the wait
  pdl_wait_then_release();  // x, bias and y only past this point (pdl.cuh)
  stage_slice<T, W, NT>(p, c_beg, c_end, split_smem, row_bytes, scale);

  // B: column g of n-tile i is token (8 i + g) / 2's plane g % 2; columns past 2m read row 0 (never stored).
  uint32_t boff[NT];
#pragma unroll
  for (int i = 0; i < NT; ++i) boff[i] = (8 * i + g < 2 * p.m ? 8 * i + g : 0) * row_bytes + 16 * t;

  float acc[NT][2] = {};  // token 4 i + t of n-tile i: rows g, g + 8, in units of 16 s_x
  int d[NT][4];           // the int32 sums of the chunk (or pair) not yet folded into acc
  float s0 = 0.0f, s1 = 0.0f;  // their scales / 254 (fold_planes254)
  for (int c0 = 0; c0 < mine; c0 += kSplitDepth) {
#pragma unroll
    for (int u = 0; u < kSplitDepth; ++u) {
      const int c = c0 + u;
      if (c >= mine) break;  // warp-uniform
      cp_async_wait<kSplitDepth - 1>();  // slot u (chunk c) landed
      const uint4 w = *reinterpret_cast<const uint4*>(ring_ptr + u * 512);
      const bool first = !PAIR || u % 2 == 0;  // c0 is even: c's parity is u's
      if (first) {
        float own = 0.0f;  // this lane's scale of slot u (lanes t = 0 / 1: rows g / g + 8)
        if constexpr (kScaleRing)
          own = t < 2 ? *reinterpret_cast<const float*>(split_smem + scale_at + u * 64) : 0.0f;
        else
          own = prm[u];
        s0 = __shfl_sync(0xffffffffu, own, 0, 4) * (1.0f / 254.0f);
        s1 = __shfl_sync(0xffffffffu, own, 1, 4) * (1.0f / 254.0f);
      }
      float sz0 = 0.0f, sz1 = 0.0f;  // s z of rows g, g + 8
      if constexpr (ASYM) {
        sz0 = 254.0f * s0 * __shfl_sync(0xffffffffu, zrm[u], 0, 4);
        sz1 = 254.0f * s1 * __shfl_sync(0xffffffffu, zrm[u], 1, 4);
      }
      issue(u, c + kSplitDepth);  // slot u's bytes are in registers: refill it
      chunk_mma<NT, ASYM>(first, w, split_smem + c * kSplitChunkK, boff, sz0, sz1, d, acc);
      if (!PAIR || u % 2 == 1 || c + 1 == mine) {  // a chunk's sums, or a pair's (or a last odd chunk's)
#pragma unroll
        for (int i = 0; i < NT; ++i) fold_planes254(d[i], s0, s1, acc[i]);
      }
    }
  }
  cp_async_wait<0>();  // (the refills past the slice copy nothing; no group stays open at exit)

  if (blockIdx.y == 0) prefetch_next_layer(p, W * 32);  // slices by blockIdx.x: once per row block

  __syncthreads();  // every warp is done with the planes, which the partial tile overlays
  store_split<T, W, NT>(p, acc, scale, reinterpret_cast<float*>(split_smem));
}

// Chunks per split for `splits` splits of nchunks: even (PAIR: every split starts at an even chunk); the last split
// may be shorter, and fewer splits may result (ceil(nchunks / chunks)).
int split_chunks(int nchunks, int splits) { return ((nchunks + splits - 1) / splits + 1) / 2 * 2; }

// A block's fixed time (staging x, the cluster's sum, launch and drain) in units of one chunk's streaming: the plan's
// cost of a wave is (chunks per split + kSplitBlockChunks). Session 59's first guess; QTOOL_SPLIT_BLOCK_CHUNKS
// overrides it for A/Bs (read once).
constexpr int kSplitBlockChunks = 8;
int split_block_chunks() {
  static const int value = [] {
    const char* env = std::getenv("QTOOL_SPLIT_BLOCK_CHUNKS");
    return env != nullptr && *env != '\0' ? std::atoi(env) : kSplitBlockChunks;
  }();
  return value;
}

// Splits of K (the cluster's size, at most kClusterMaxSplits) and chunks per split: `forced` where given (A/Bs), else
// the split count of least cost, waves x (chunks + split_block_chunks()), where a wave is the clusters the device
// holds at once with that plan's shared memory (resident_clusters). Session 59 (Nsight Compute, H100, 8192 x 8192
// at 16 tokens): the former plan (the fewest power-of-two splits that filled three blocks per SM) launched 64
// clusters of 8 where 45 fit at once, and the SMs sat idle 28% of the kernel's time in the second wave.
// `smem_of(chunks)`: the block's shared memory; `kernel`: the instantiation launched. search_plan is the search (up to
// eight occupancy queries), split_plan the cached entry point (one lookup per launch).
template <typename SmemOf>
std::pair<int, int> search_plan(const void* kernel, int threads, int row_blocks, int nchunks, int num_sms,
                                SmemOf smem_of) {
  long best = -1;
  std::pair<int, int> plan(0, 0);  // (splits, chunks)
  for (int s = 1; s <= kClusterMaxSplits; ++s) {
    const int c = split_chunks(nchunks, s), real = (nchunks + c - 1) / c;
    if (real != s) continue;  // the same plan as a smaller s
    const int resident = resident_clusters(kernel, threads, smem_of(c), s, num_sms);
    if (resident <= 0) continue;
    const long cost = static_cast<long>((row_blocks + resident - 1) / resident) * (c + split_block_chunks());
    if (best < 0 || cost < best) {
      best = cost;
      plan = {s, c};
    }
  }
  if (best < 0) {  // nothing fits (check_split refuses this first): the most splits, for the error to name
    const int c = split_chunks(nchunks, kClusterMaxSplits);
    plan = {(nchunks + c - 1) / c, c};
  }
  return plan;
}

template <typename SmemOf>
void split_plan(const void* kernel, int threads, int row_blocks, int nchunks, int num_sms, int forced, SmemOf smem_of,
                int& splits, int& chunks) {
  if (forced > 0) {
    chunks = split_chunks(nchunks, forced);
    splits = (nchunks + chunks - 1) / chunks;
    return;
  }
  // One lookup per launch: the plan per (kernel, shape, SMs), searched on the shape's first call.
  static std::mutex mutex;
  static std::map<std::tuple<const void*, int, int, int>, std::pair<int, int>> plans;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto key = std::make_tuple(kernel, row_blocks, nchunks, num_sms);
  auto found = plans.find(key);
  if (found == plans.end())
    found = plans.emplace(key, search_plan(kernel, threads, row_blocks, nchunks, num_sms, smem_of)).first;
  splits = found->second.first;
  chunks = found->second.second;
}

template <typename T, int W, int NT, bool ASYM, bool PAIR>
cudaError_t launch_split(const WoProblem& p, int num_sms, int forced, cudaStream_t stream) {
  const int row_blocks = (p.w.n_padded / kStripeRows + W - 1) / W;
  auto* kernel = wo_split_kernel<T, W, NT, ASYM, PAIR>;
  static const cudaError_t opted = [kernel] {  // the device's most, once: the plan's occupancy queries see it too
    int device = 0, optin = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err == cudaSuccess) err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err == cudaSuccess)
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, optin - 16 * NT);
    return err;
  }();
  if (opted != cudaSuccess) return opted;
  int splits = 1, chunks = 0;
  split_plan(reinterpret_cast<const void*>(kernel), W * 32, row_blocks, p.w.k_padded / kSplitChunkK, num_sms, forced,
             [](int c) { return split_smem_bytes(W, NT, c); }, splits, chunks);
  return launch_cluster_y(kernel, p.pdl, dim3(row_blocks, splits), dim3(W * 32), split_smem_bytes(W, NT, chunks),
                          stream, splits, p, chunks);
}

// Warps per block (above): 8 for symmetric 4096 x 4096-sized weights at 9-16 tokens, the one class where 16 lost.
// At 17-32 tokens the narrow block lost too (session 63, H100, a build option since removed: 4096 x 4096 at 24 / 32
// tokens 1.02 / 0.99x against the 16-warp block's 1.09 / 1.01x; both far behind the mixed GEMM's 1.42 / 1.45x).
bool split_narrow(int nt, bool asym, int k_padded, int n_padded) {
  return nt == 4 && !asym && k_padded <= 4096 && n_padded <= 4096;
}

template <int W, int NT, bool ASYM, bool PAIR = false>
cudaError_t launch_dtype(const WoProblem& p, int num_sms, int forced, cudaStream_t stream) {
  return p.dtype == ScalarKind::kBFloat16 ? launch_split<__nv_bfloat16, W, NT, ASYM, PAIR>(p, num_sms, forced, stream)
                                          : launch_split<__half, W, NT, ASYM, PAIR>(p, num_sms, forced, stream);
}

template <int NT>
cudaError_t launch_nt(const WoProblem& p, int num_sms, int forced, cudaStream_t stream) {
  if (p.w.zero != nullptr) {
    if constexpr (NT <= 4) return launch_dtype<kSplitWarpsWide, NT, true>(p, num_sms, forced, stream);
    return cudaErrorInvalidValue;  // zero points to 16 tokens (ops.cpp refuses more)
  }
  const bool pair = p.w.group_shift >= 7;
  if constexpr (NT == 4) {  // the narrow block only here: four more instantiations, not sixteen
    if (split_narrow(NT, false, p.w.k_padded, p.w.n_padded))
      return pair ? launch_dtype<kSplitWarpsNarrow, NT, false, true>(p, num_sms, forced, stream)
                  : launch_dtype<kSplitWarpsNarrow, NT, false, false>(p, num_sms, forced, stream);
  }
  return pair ? launch_dtype<kSplitWarpsWide, NT, false, true>(p, num_sms, forced, stream)
              : launch_dtype<kSplitWarpsWide, NT, false, false>(p, num_sms, forced, stream);
}

int split_ntiles(int m) { return m <= 8 ? 2 : m <= 16 ? 4 : 8; }

}  // namespace

cudaError_t launch_wo_split(const WoProblem& p, int forced_splits, int num_sms, cudaStream_t stream) {
  const int nt = split_ntiles(p.m);
  return nt == 2 ? launch_nt<2>(p, num_sms, forced_splits, stream)
         : nt == 4 ? launch_nt<4>(p, num_sms, forced_splits, stream)
                   : launch_nt<8>(p, num_sms, forced_splits, stream);
}

int wo_split_smem_bytes(int m, int k_padded, int n_padded, bool asym, int forced_splits, int num_sms) {
  // forced: that plan's; else the least any plan needs (the most splits), which the plan's choice never exceeds
  (void)num_sms;
  const int nchunks = k_padded / kSplitChunkK;
  const int nt = split_ntiles(m);  // + the static token scales
  const int w = split_narrow(nt, asym, k_padded, n_padded) ? kSplitWarpsNarrow : kSplitWarpsWide;
  return split_smem_bytes(w, nt, split_chunks(nchunks, forced_splits > 0 ? forced_splits : kClusterMaxSplits)) +
         16 * nt;
}

}  // namespace qtool
