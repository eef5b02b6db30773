// W4A16 / W8A16 GEMM for Hopper (sm_90a) on CUTLASS 3.x's mixed-input collective:
// Y[m, n] = X[m, k] . W[n, k]^T with W int4 or int8 codes dequantized in registers as q * scale + zero
// (bf16, per group of k) right before wgmma. One source, compiled once per code width
// (QTOOL_MIXED_BITS = 4 or 8, kernels/sm90.py), so the two libraries compile in parallel.
// wgmma reads only its A operand from registers, so the product is computed transposed,
// Y^T = W . X^T: the weights are A (tiles of 128 rows, or 64 in ping-pong), the tokens are B (tiles
// of 32 to 256), and a batch of a few tokens wastes no 64-row tile. When the output tiles are fewer
// than half the SMs (a 4096-wide layer has 32 tiles of 128 rows for 132 SMs), the k loop is split so
// that every SM streams weights: at small m the layer is bound by reading them.
//
// Built apart from the PyTorch extension, like libqtool_sm90 (kernels/mixed_mm.py).
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "cutlass/util/mixed_dtype_utils.hpp"  // compute_memory_reordering_atom (CUTLASS tools/util)

#include "sm90_mixed_mm.h"
#include "sm90_common.cuh"

#ifndef QTOOL_MIXED_BITS
#define QTOOL_MIXED_BITS 4
#endif
static_assert(QTOOL_MIXED_BITS == 4 || QTOOL_MIXED_BITS == 8, "QTOOL_MIXED_BITS is 4 or 8");

namespace qtool::sm90 {
namespace {

using namespace cute;

using Q = std::conditional_t<QTOOL_MIXED_BITS == 4, cutlass::int4b_t, int8_t>;
using T = cutlass::bfloat16_t;
using RowMajorStride = cutlass::detail::TagToStrideA_t<cutlass::layout::RowMajor>;  // [n, k, batch], k-major

// The shuffled weight layout: within each 16 x 16 block of one warp's wgmma A fragment, the 8 codes a thread
// converts sit in one word (CUTLASS example 55's reordering), so they reach registers in one shared-memory
// load instead of byte (int4) or 16-bit (int8) loads. 4-bit codes are also permuted to 0 2 4 6 1 3 5 7 in
// their 32-bit word, which CUTLASS's int4 -> bf16 converter turns into 8 values with one shift and one LOP3
// per pair. Blocks tile the weight N-fastest. Measured on the H200 (session 10) against row-major codes:
// 4-bit 1.1-1.2x faster at 8-128 tokens (1.07x at 256-1024), 8-bit 3-10% at 8-128, so every tile takes it.
using ValueOrder = std::conditional_t<QTOOL_MIXED_BITS == 4, Layout<Shape<_2, _4>, Stride<_4, _1>>, Layout<_1>>;
using ShuffleAtom = decltype(cutlass::compute_memory_reordering_atom<T, Layout<Shape<_1, _1>>, ValueOrder>());
using ShuffledLayout = decltype(tile_to_shape(ShuffleAtom{}, Layout<Shape<int, int, int>, RowMajorStride>{}));

// The prefetch of p's weights by CTAs of `tile_rows` rows (sm90_prefetch.cuh; off where the cap is 0 or a pointer is
// not 16-byte aligned, as cp.async.bulk.prefetch needs).
inline WeightPrefetch weight_prefetch(const MixedMmArgs& p, int tile_rows) {
  WeightPrefetch out;
  const uint32_t cap = prefetch_cap().load(std::memory_order_relaxed);
  if (cap == 0 || !aligned16(p.w) || !aligned16(p.scale) || (p.zero != nullptr && !aligned16(p.zero))) return out;
  out.layout = WeightLayout::kShuffled;
  out.weight_is_a = true;  // the product is computed transposed: the weight rows are the tiles' m
  out.codes = static_cast<const char*>(p.w);
  out.scales = static_cast<const char*>(p.scale);
  out.zeros = static_cast<const char*>(p.zero);
  out.row_bytes = 16 * QTOOL_MIXED_BITS / 8;
  out.column_bytes = static_cast<int64_t>(p.n) * out.row_bytes;
  out.n = p.n;
  out.k = p.k;
  out.atoms_per_group = std::max(1, p.group / 16);
  out.budget = static_cast<int>(std::max<uint32_t>(1, cap / static_cast<uint32_t>(tile_rows * out.row_bytes)));
  return out;
}

template <class TileShape,     // (weight rows, tokens, k) per CTA
          bool PingPong,       // 64-row tiles, two warpgroups alternating; else 128-row cooperative tiles
          bool Shuffled,       // weights in ShuffledLayout (qtool_sm90_mixed_shuffle); else row-major
          int ClusterRows = 1> // 2: two CTAs of adjacent row tiles multicast their common token tile
struct MixedGemm {
  using LayoutW = std::conditional_t<Shuffled, ShuffledLayout, cutlass::layout::RowMajor>;
  using ClusterShape = Shape<Int<ClusterRows>, _1, _1>;
  static constexpr int kAlignQ = 128 / cutlass::sizeof_bits<Q>::value;  // 16 bytes
  static constexpr int kAlignT = 8;

  // D' = Y^T [n, m] column-major is Y [m, n] row-major.
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, cutlass::layout::ColumnMajor, kAlignT, T,
      cutlass::layout::ColumnMajor, kAlignT,
      std::conditional_t<PingPong, cutlass::epilogue::TmaWarpSpecialized,
                         cutlass::epilogue::TmaWarpSpecializedCooperative>>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, cute::tuple<Q, T, T>, LayoutW, kAlignQ, T,
      cutlass::layout::ColumnMajor, kAlignT, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      std::conditional_t<PingPong, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                         cutlass::gemm::KernelTmaWarpSpecializedCooperative>>::CollectiveOp;

  // Ping-pong kernels take no stream-K scheduler (so no split-K): their 64-row tiles are the way
  // they fill the SMs.
  using Kernel = cutlass::gemm::kernel::GemmUniversal<
      Shape<int, int, int, int>, Mainloop, Epilogue,
      std::conditional_t<PingPong, Persistent, StreamK>>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const MixedMmArgs& p) {
    typename Kernel::StrideA sw{};  // [n, k] k-major, or the shuffled layout of that shape
    if constexpr (Shuffled) {
      sw = tile_to_shape(ShuffleAtom{}, make_shape(p.n, p.k, 1));
    } else {
      get<0>(sw) = p.k;
      get<2>(sw) = static_cast<int64_t>(p.n) * p.k;
    }
    typename Kernel::StrideB sx{};  // [m, k] k-major
    get<0>(sx) = p.k;
    get<2>(sx) = static_cast<int64_t>(p.m) * p.k;
    typename Kernel::StrideD sy{};  // [n, m] n-major
    get<1>(sy) = p.n;
    get<2>(sy) = static_cast<int64_t>(p.n) * p.m;
    const int groups = (p.k + p.group - 1) / p.group;
    typename Mainloop::StrideScale ss{};  // [n, groups] n-major
    get<1>(ss) = p.n;
    get<2>(ss) = static_cast<int64_t>(p.n) * groups;
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {p.n, p.m, p.k, 1},
        {static_cast<const Q*>(p.w), sw, static_cast<const T*>(p.x), sx, static_cast<const T*>(p.scale), ss, p.group,
         static_cast<const T*>(p.zero)},
        {{1.0f, 0.0f}, nullptr, sy, static_cast<T*>(p.y), sy}};
    args.hw_info.sm_count = sm_count();
    if constexpr (!PingPong) set_split(args, p);
    args.scheduler.knobs.prefetch = weight_prefetch(p, size<0>(TileShape{}));
    args.scheduler.knobs.early_release = (p.launch & 2) != 0;
    return args;
  }

  static void set_split(typename Gemm::Arguments& args, const MixedMmArgs& p) {
    using Mode = typename Kernel::TileScheduler::DecompositionMode;
    const int tiles = ((p.n + size<0>(TileShape{}) - 1) / size<0>(TileShape{})) *
                      ((p.m + size<1>(TileShape{}) - 1) / size<1>(TileShape{}));
    const int k_tiles = (p.k + size<2>(TileShape{}) - 1) / size<2>(TileShape{});
    int split = p.split;
    if (split == 0) {  // fill the SMs, keeping at least 8 k tiles per split for the pipeline
      split = 2 * tiles <= sm_count() ? std::min(sm_count() / tiles, k_tiles / 8) : 1;
    }
    if (split > 1) {
      args.scheduler.splits = split;
      args.scheduler.decomposition_mode = Mode::SplitK;
    } else if (split < 0) {
      args.scheduler.decomposition_mode = Mode::StreamK;
    } else {
      args.scheduler.decomposition_mode = Mode::DataParallel;
    }
    set_split_add(args);
  }

  static size_t workspace(const MixedMmArgs& p) { return workspace_size<Gemm>(arguments(p)); }

  static const char* run(const MixedMmArgs& p, cudaStream_t stream) {
    return run_gemm<Gemm>(arguments(p), p.workspace, p.workspace_bytes, stream, (p.launch & 1) != 0);
  }
};

// Token tiles: by default the smallest tile that holds the batch, which wastes the least of each wgmma; a
// requested token tile t picks the smallest that holds t instead (at 128-256 tokens, 64-token tiles fill more
// SMs than split-K does, at the price of converting each weight tile once per token tile).
// ktile 128 (token tiles up to 128, cooperative only): each pipeline stage moves twice the weight bytes. At 8
// bits the same stage count streamed 2.1-2.6 TB/s where 4-bit tiles of 64 k streamed 1.1 (H200,
// kernels/NOTES.md): the per-stage cost, not DRAM, limits small batches, so larger stages help.
constexpr const char* kNoTile =
    "no such tile configuration (ktile 128 takes token tiles <= 128, cooperative only; else ktile 64; 256-row "
    "tiles (variant 1) take ktile 128 and token tiles <= 64; clusters (variant 2) take ktile 64, cooperative; "
    "ping-pong takes token tiles <= 64)";

template <bool S, class Fn>
const char* by_k128(int t, Fn&& fn) {
  if (t <= 16) return fn(MixedGemm<Shape<_128, _16, _128>, false, S>{});  // half the x stage of a 32 tile
  if (t <= 32) return fn(MixedGemm<Shape<_128, _32, _128>, false, S>{});
  if (t <= 64) return fn(MixedGemm<Shape<_128, _64, _128>, false, S>{});
  return fn(MixedGemm<Shape<_128, _128, _128>, false, S>{});
}

// variant 1, 256-row tiles (ktile 128, t <= 64): each consumer warpgroup converts and multiplies 128 rows per k
// block, twice the independent work between its waits on the tensor cores (half the tiles: split-K fills the
// SMs). variant 2, clusters of two 128-row tiles: the token tile, which outweighs the 4-bit weight tile in bytes
// from 64 tokens on, is loaded once per pair by TMA multicast.
template <bool S, class Fn>
const char* by_tile(int t, int pingpong, int ktile, int variant, Fn&& fn) {
  if (variant == 1) {
    if (ktile != 128 || pingpong || t > 64) return kNoTile;
    if (t <= 16) return fn(MixedGemm<Shape<_256, _16, _128>, false, S>{});
    if (t <= 32) return fn(MixedGemm<Shape<_256, _32, _128>, false, S>{});
    return fn(MixedGemm<Shape<_256, _64, _128>, false, S>{});
  }
  if (variant == 2) {
    if (ktile != 64 || pingpong) return kNoTile;
    if (t <= 64) return fn(MixedGemm<Shape<_128, _64, _64>, false, S, 2>{});
    if (t <= 128) return fn(MixedGemm<Shape<_128, _128, _64>, false, S, 2>{});
    return fn(MixedGemm<Shape<_128, _256, _64>, false, S, 2>{});
  }
  if (ktile == 128) return pingpong || t > 128 ? kNoTile : by_k128<S>(t, fn);
  if (pingpong) {
    if (t > 64) return kNoTile;
    return t <= 32 ? fn(MixedGemm<Shape<_64, _32, _64>, true, S>{}) : fn(MixedGemm<Shape<_64, _64, _64>, true, S>{});
  }
  if (t <= 32) return fn(MixedGemm<Shape<_128, _32, _64>, false, S>{});
  if (t <= 64) return fn(MixedGemm<Shape<_128, _64, _64>, false, S>{});
  if (t <= 128) return fn(MixedGemm<Shape<_128, _128, _64>, false, S>{});
  return fn(MixedGemm<Shape<_128, _256, _64>, false, S>{});
}

// fn's result (nullptr on success), or why this library holds no such configuration. Every tile takes the
// weights in the shuffled layout (row-major ones are not built).
template <class Fn>
const char* by_tokens(const MixedMmArgs& p, Fn&& fn) {
  if ((p.ktile != 64 && p.ktile != 128) || p.variant < 0 || p.variant > 2 || p.token_tile < 0 || p.token_tile > 256)
    return kNoTile;
  return by_tile<true>(p.token_tile > 0 ? p.token_tile : p.m, p.pingpong, p.ktile, p.variant, fn);
}

}  // namespace
}  // namespace qtool::sm90

extern "C" size_t qtool_sm90_mixed_workspace(const qtool::sm90::MixedMmArgs* p) {
  size_t bytes = 0;  // stays 0 for a configuration not built: qtool_sm90_mixed_mm reports it
  qtool::sm90::by_tokens(*p, [&](auto g) -> const char* {
    bytes = decltype(g)::workspace(*p);
    return nullptr;
  });
  return bytes;
}

extern "C" const char* qtool_sm90_mixed_mm(const qtool::sm90::MixedMmArgs* p, cudaStream_t stream) {
  if (const char* err = qtool::sm90::by_tokens(*p, [&](auto g) { return decltype(g)::run(*p, stream); })) return err;
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

namespace qtool::sm90 {
namespace {

// One thread per code: out[shuffled(i, j)] = codes[i, j], one code per byte either side.
__global__ void shuffle_kernel(const int8_t* codes, int8_t* out, int n, int k) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= static_cast<int64_t>(n) * k) return;
  const auto layout = tile_to_shape(ShuffleAtom{}, make_shape(n, k, 1));
  out[layout(static_cast<int>(index / k), static_cast<int>(index % k), 0)] = codes[index];
}

}  // namespace
}  // namespace qtool::sm90

// codes [n, k] int8 (one signed code per byte, row-major) -> out [n * k] int8, one code per byte in the
// order of ShuffledLayout; for 4-bit codes the caller packs byte pairs into nibbles (even offset in the low
// nibble). n % 16 == 0 and k % 16 == 0. Returns nullptr, or the error.
extern "C" const char* qtool_sm90_mixed_shuffle(const void* codes, void* out, int n, int k, cudaStream_t stream) {
  if (n % 16 || k % 16) return "the shuffled layout takes n and k multiples of 16";
  const int64_t total = static_cast<int64_t>(n) * k;
  const int threads = 256;
  qtool::sm90::shuffle_kernel<<<static_cast<unsigned>((total + threads - 1) / threads), threads, 0, stream>>>(
      static_cast<const int8_t*>(codes), static_cast<int8_t*>(out), n, k);
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}
