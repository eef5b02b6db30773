// FP8 block-scaled GEMM for Hopper (sm_90a) on CUTLASS 3.x's blockwise-scaling mainloop (the DeepSeek-V3
// recipe of the `fp8-block` scheme): D[m, n] = sum over 128-k groups g of
//   a_scale[m, g] * b_scale[n / 128, g] * (A[m, g-th 128 k] . B[n, g-th 128 k]),
// A and B FP8 E4M3, the group products accumulated by wgmma in float32 and scaled into a float32 accumulator
// once per group ("promotion"), D in bf16. The scales are read per k block beside the codes, so no pass
// rescales either operand.
//
// Why beside cuBLAS's block-wise FP8 (F.scaled_mm, what fp8-block layers ran before): on the 4096-wide layers
// cuBLAS ran 32-128 tokens at 0.74-0.86x bf16 (H200, BENCHMARKS.md session 11): 32 output tiles for 132 SMs.
// Here a 64 x 128 ping-pong tile serves skinny batches, a 128 x 128 cooperative tile on the stream-K
// scheduler splits k over the SMs the tiles leave idle, and the swapped product (weights as 128-row tiles,
// 64-token column tiles, split-K) serves 16-128 tokens without padding each tile to 64 or 128 tokens.
//
// Built apart from the PyTorch extension like the other Hopper libraries (kernels/sm90.py).
#include <algorithm>

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "sm90_block_mm.h"
#include "sm90_block_overlap.cuh"
#include "sm90_common.cuh"

namespace qtool::sm90 {
namespace {

using namespace cute;

using E4M3 = cutlass::float_e4m3_t;
using Out = cutlass::bfloat16_t;
// One scale per token and 128-k group (M-major: the column-major layout qtool_cuda::act_quant writes), one per
// 128 x 128 weight block (k-major: the stored layout of an fp8-block checkpoint). Swapped (the weights as the
// GEMM's M side, the tokens as its N side), the same two layouts are the other operand's.
// ScaleN < 128 (the narrow tile): the mainloop cannot take a tile narrower than its scale granularity, so that
// tile reads the weight scales at a granularity of ScaleN rows, each 128 x 128 block's scale stored 128 / ScaleN
// times (block_mm.py, narrow_scales).
template <bool Swap, int ScaleN = 128>
using ScaleConfig = std::conditional_t<
    Swap, cutlass::detail::Sm90BlockwiseScaleConfig<128, 1, 128, cute::GMMA::Major::K, cute::GMMA::Major::MN>,
    cutlass::detail::Sm90BlockwiseScaleConfig<1, ScaleN, 128, cute::GMMA::Major::MN, cute::GMMA::Major::K>>;

// Swap: D^T = W . X^T, the weight rows as 128-row tiles and the tokens as a narrow column tile: few tokens then
// waste no tile rows, and split-K (cooperative kernel, stream-K scheduler) fills the SMs the weight's row tiles
// leave idle (32 row tiles on a 4096-wide layer). y [m, n] row-major is D^T [n, m] column-major.
// Overlap: CUTLASS's mainloop with each promotion overlapped with the next k tile's wgmma (sm90_block_overlap.cuh).
template <class TileShape, class ClusterShape, bool PingPong, class Scheduler, bool Swap = false, int ScaleN = 128,
          bool Overlap = false>
struct BlockGemm {
  static constexpr int kAlignAB = 16;  // 16 bytes of FP8 codes
  static constexpr int kAlignD = 8;    // 16 bytes of bf16
  using Scales = ScaleConfig<Swap, ScaleN>;
  using LayoutSFA = decltype(Scales::deduce_layoutSFA());
  using LayoutSFB = decltype(Scales::deduce_layoutSFB());
  using LayoutD = std::conditional_t<Swap, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD, kAlignD, Out, LayoutD, kAlignD,
      std::conditional_t<PingPong, cutlass::epilogue::TmaWarpSpecialized,
                         cutlass::epilogue::TmaWarpSpecializedCooperative>>::CollectiveOp;

  using BuiltMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, E4M3, cute::tuple<cutlass::layout::RowMajor, LayoutSFA>,
      kAlignAB, E4M3, cute::tuple<cutlass::layout::ColumnMajor, LayoutSFB>, kAlignAB, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      std::conditional_t<PingPong, cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8Blockwise,
                         cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8Blockwise>>::CollectiveOp;
  using Mainloop = std::conditional_t<Overlap, OverlappedPromotion<BuiltMainloop>, BuiltMainloop>;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const BlockMmArgs& p) {
    // GEMM M x N: m x n, or n x m swapped; A [M, k] and B [N, k] k-major, D [M, N] n-major (swapped: m-major).
    const int gm = Swap ? p.n : p.m, gn = Swap ? p.m : p.n;
    typename Kernel::StrideA sa{};
    get<0>(sa) = p.k;
    get<2>(sa) = static_cast<int64_t>(gm) * p.k;
    typename Kernel::StrideB sb{};
    get<0>(sb) = p.k;
    get<2>(sb) = static_cast<int64_t>(gn) * p.k;
    typename Kernel::StrideD sd{};
    if constexpr (Swap) get<1>(sd) = gm; else get<0>(sd) = gn;
    get<2>(sd) = static_cast<int64_t>(p.m) * p.n;
    const auto shape = make_shape(gm, gn, p.k, 1);
    const void* a = Swap ? p.b : p.a;
    const void* b = Swap ? p.a : p.b;
    const float* a_scale = Swap ? p.b_scale : p.a_scale;
    const float* b_scale = Swap ? p.a_scale : p.b_scale;
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {gm, gn, p.k, 1},
        {static_cast<const E4M3*>(a), sa, static_cast<const E4M3*>(b), sb, a_scale,
         Scales::tile_atom_to_shape_SFA(shape), b_scale, Scales::tile_atom_to_shape_SFB(shape)},
        {{1.0f, 0.0f}, nullptr, sd, static_cast<Out*>(p.d), sd}};
    args.hw_info.sm_count = sm_count();
    if constexpr (std::is_same_v<Scheduler, StreamK>) set_split(args, gm, gn, p);
    // the weights p.b [n, k]: CUTLASS's B, or its A when swapped
    args.scheduler.knobs.prefetch = row_prefetch(p.b, p.n, p.k, Swap, size<Swap ? 0 : 1>(TileShape{}));
    return args;
  }

  // configs 1 and 3: split k over the SMs the output tiles leave idle (>= 4 k tiles per split), or as asked.
  static void set_split(typename Gemm::Arguments& args, int gm, int gn, const BlockMmArgs& p) {
    using Mode = typename Kernel::TileScheduler::DecompositionMode;
    const int tiles = ((gm + size<0>(TileShape{}) - 1) / size<0>(TileShape{})) *
                      ((gn + size<1>(TileShape{}) - 1) / size<1>(TileShape{}));
    const int k_tiles = p.k / size<2>(TileShape{});
    int split = p.split;
    if (split == 0) split = std::max(1, std::min(sm_count() / std::max(tiles, 1), k_tiles / 4));
    if (split > 1) {
      args.scheduler.splits = split;
      args.scheduler.decomposition_mode = Mode::SplitK;
    } else {
      args.scheduler.decomposition_mode = split < 0 ? Mode::StreamK : Mode::DataParallel;
    }
    set_split_add(args);
  }

  static size_t workspace(const BlockMmArgs& p) { return workspace_size<Gemm>(arguments(p), p.config); }

  static const char* run(const BlockMmArgs& p, cudaStream_t stream) {
    return run_gemm<Gemm>(arguments(p), p.workspace, p.workspace_bytes, stream, (p.config & kBlockConfigPdl) != 0,
                          p.config);
  }
};

// Each configuration with CUTLASS's mainloop (O = false) or with the promotion overlapped (O = true: the config's
// kBlockConfigOverlap bit; sm90_block_overlap.cuh, session 42, for the A/B).
using PersistentScheduler = Persistent;  // CUTLASS's, with our first-work hooks (sm90_scheduler.cuh)
template <bool O>
using Skinny = BlockGemm<Shape<_64, _128, _128>, Shape<_1, _1, _1>, true, PersistentScheduler, false, 128, O>;
template <bool O>
using Split = BlockGemm<Shape<_128, _128, _128>, Shape<_1, _1, _1>, false, StreamK, false, 128, O>;
template <bool O>
using Large = BlockGemm<Shape<_128, _128, _128>, Shape<_1, _2, _1>, false, PersistentScheduler, false, 128, O>;
template <bool O>
using Swapped = BlockGemm<Shape<_128, _64, _128>, Shape<_1, _1, _1>, false, StreamK, true, 128, O>;
// 64 x 64 ping-pong tiles, weight scales at 64-row granularity: twice the CTAs of Skinny where the layer's 128-row
// tiles leave most SMs idle (4096 x 4096 at 64 tokens: 32 of 132; session 20 measured Skinny at 0.78x bf16 there and
// every split of k slower still).
template <bool O>
using Narrow = BlockGemm<Shape<_64, _64, _128>, Shape<_1, _1, _1>, true, PersistentScheduler, false, 64, O>;
// Large in 2 x 2 clusters (session 42, for the A/B): both operands' tiles multicast to two CTAs. Why: with the block
// scales each consumer warpgroup must hold a 64 x 128 tile's accumulators twice (wgmma's and the promoted sums), so
// the tile cannot grow past 128 x 128, and at the tensor cores' rate a 128 x 128 x 128 step of Large reads 24 KB
// from L2 per CTA (its A half-multicast): ~12 TB/s over 132 SMs, above what L2 delivers. 2 x 2 reads 16 KB (4096 x
// 4096 at 1024 tokens ran 1.25x bf16, ~45% of the FP8 rate, as if bound by ~5.5 TB/s of L2).
template <bool O>
using Large22 = BlockGemm<Shape<_128, _128, _128>, Shape<_2, _2, _1>, false, PersistentScheduler, false, 128, O>;
// Skinny in 2 x 2 clusters (session 42, for the sweep): ping-pong runs one warpgroup's mainloop at a time and hides
// the other's epilogue; with the overlapped promotion that one warpgroup keeps the tensor cores busy by itself, and
// the clusters bring its L2 traffic per multiply to Large's (12 KB per 64 x 128 x 128 step).
template <bool O>
using Skinny22 = BlockGemm<Shape<_64, _128, _128>, Shape<_2, _2, _1>, true, PersistentScheduler, false, 128, O>;

template <bool O, class Fn>
const char* by_tile(int tile, Fn&& fn) {
  switch (tile) {
    case 0: return fn(Skinny<O>{});
    case 1: return fn(Split<O>{});
    case 2: return fn(Large<O>{});
    case 3: return fn(Swapped<O>{});
    case 4: return fn(Narrow<O>{});
    case 5: return fn(Large22<O>{});
    case 6: return fn(Skinny22<O>{});
    default: return "config must be 0 (skinny), 1 (split), 2 (large), 3 (swapped), 4 (narrow), 5 (large in 2 x 2 "
                    "clusters) or 6 (skinny in 2 x 2 clusters), plus 8 for PDL, 16 for the overlapped promotion, 32 for a "
                    "swizzle of 8 and 64 for the grid walked along n";
  }
}

template <class Fn>
const char* by_config(const BlockMmArgs& p, Fn&& fn) {
  if (p.k % 128 || p.n % 8 || p.m % 4) return "k % 128, n % 8 and m % 4 must be 0";
  const int tile = p.config & ~(kBlockConfigPdl | kBlockConfigOverlap | kConfigOrder);
  return (p.config & kBlockConfigOverlap) ? by_tile<true>(tile, fn) : by_tile<false>(tile, fn);
}

}  // namespace
}  // namespace qtool::sm90

extern "C" size_t qtool_sm90_block_workspace(const qtool::sm90::BlockMmArgs* p) {
  size_t bytes = 0;
  qtool::sm90::by_config(*p, [&](auto g) -> const char* {
    bytes = decltype(g)::workspace(*p);
    return nullptr;
  });
  return bytes;
}

extern "C" const char* qtool_sm90_block_mm(const qtool::sm90::BlockMmArgs* p, cudaStream_t stream) {
  if (const char* err = qtool::sm90::by_config(*p, [&](auto g) { return decltype(g)::run(*p, stream); })) return err;
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}
