// W8A8 GEMM for Hopper (sm_90a) on CUTLASS 3.x: D[m, n] = sa[m] * (A[m, k] . B[n, k]^T) * sb[n] + bias[n],
// A and B int8 (int32 accumulation) or FP8 E4M3 (float32 accumulation with periodic promotion), D in
// bf16 or fp16. wgmma fed by TMA, warp-specialized, persistent; the per-token and per-channel scales
// and the bias are one epilogue visitor tree, so the accumulators are scaled in registers and D is
// written once.
//
// Built apart from the PyTorch extension, as a plain shared library with a C entry point
// (kernels/build.py: nvcc -gencode arch=compute_90a,code=sm_90a, CUTLASS headers from the
// `nvidia-cutlass` package), so a missing CUTLASS or a non-Hopper GPU costs nothing but this path;
// ops_w8a8.cpp finds `qtool_sm90_scaled_mm` by name once Python has loaded the library.
#include <algorithm>
#include <cstdio>

#include <cuda_runtime.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "sm90_scaled_mm.h"
#include "sm90_common.cuh"

namespace qtool::sm90 {
namespace {

using namespace cute;

// Stride of a packed row-major [rows, cols] operand in CUTLASS 3's (leading, unit, batch) form.
template <class Stride>
Stride packed_rows(int64_t rows, int64_t cols) {
  Stride s{};
  get<0>(s) = cols;
  get<2>(s) = rows * cols;
  return s;
}

template <class ElementAB, class ElementD, class TileShape, class ClusterShape, class KernelSchedule,
          class EpilogueSchedule, class Scheduler>
struct ScaledGemm {
  using ElementAcc = std::conditional_t<std::is_same_v<ElementAB, int8_t>, int32_t, float>;
  static constexpr int kAlignAB = 16;  // elements: 16 bytes of 8-bit codes, what TMA wants
  static constexpr int kAlignD = 8;    // 16 bytes of bf16 / fp16

  // The epilogue tree: sa[m] * (acc * sb[n]) + bias[n], in float32, one rounding to ElementD.
  using Acc = cutlass::epilogue::fusion::Sm90AccFetch;
  using TokenScale = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, float, float, Stride<_1, _0, int64_t>>;
  using ChannelScale = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>>;
  using Bias = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, float, float, Stride<_0, _1, int64_t>>;
  using Mul = cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, float, float,
                                                     cutlass::FloatRoundStyle::round_to_nearest>;
  using Fma = cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, ElementD, float,
                                                     cutlass::FloatRoundStyle::round_to_nearest>;
  using AccTimesChannel = cutlass::epilogue::fusion::Sm90EVT<Mul, ChannelScale, Acc>;
  using Tree = cutlass::epilogue::fusion::Sm90EVT<Fma, TokenScale, AccTimesChannel, Bias>;

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAcc, float, void, cutlass::layout::RowMajor, kAlignD,
      ElementD, cutlass::layout::RowMajor, kAlignD, EpilogueSchedule, Tree>::CollectiveOp;

  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB, cutlass::layout::RowMajor, kAlignAB, ElementAB,
      cutlass::layout::ColumnMajor, kAlignAB, ElementAcc, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue, Scheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static typename Gemm::Arguments arguments(const ScaledMmArgs& p) {
    using StrideA = typename Kernel::StrideA;
    using StrideB = typename Kernel::StrideB;
    using StrideD = typename Kernel::StrideD;
    const StrideA sa = packed_rows<StrideA>(p.m, p.k);
    const StrideB sb = packed_rows<StrideB>(p.n, p.k);
    const StrideD sd = packed_rows<StrideD>(p.m, p.n);
    typename Tree::Arguments tree{
        {p.a_scale, 0.0f, {_1{}, _0{}, 0}},                             // TokenScale
        {{p.b_scale, 0.0f, {_0{}, _1{}, 0}}, {}, {}},                   // AccTimesChannel: ChannelScale, Acc, Mul
        {p.bias, 0.0f, {_0{}, _1{}, 0}},                                // Bias (nullptr: 0)
        {}};                                                            // Fma
    typename Gemm::Arguments args{
        cutlass::gemm::GemmUniversalMode::kGemm,
        {p.m, p.n, p.k, 1},
        {static_cast<const ElementAB*>(p.a), sa, static_cast<const ElementAB*>(p.b), sb},
        {tree, nullptr, sd, static_cast<ElementD*>(p.d), sd}};
    args.hw_info.sm_count = sm_count();  // else CUTLASS queries the device on every call
    if constexpr (std::is_same_v<Scheduler, StreamK>) set_split(args, p);
    args.scheduler.knobs.prefetch = row_prefetch(p.b, p.n, p.k, false, size<1>(TileShape{}));  // B: [n, k] weights
    return args;
  }

  // Split k so that the output tiles and their splits fill the SMs, keeping >= 4 k tiles per split.
  static void set_split(typename Gemm::Arguments& args, const ScaledMmArgs& p) {
    const int tiles = ((p.m + size<0>(TileShape{}) - 1) / size<0>(TileShape{})) *
                      ((p.n + size<1>(TileShape{}) - 1) / size<1>(TileShape{}));
    const int k_tiles = (p.k + size<2>(TileShape{}) - 1) / size<2>(TileShape{});
    const int split = std::max(1, std::min(sm_count() / std::max(tiles, 1), k_tiles / 4));
    using Mode = typename Kernel::TileScheduler::DecompositionMode;
    args.scheduler.splits = split;
    args.scheduler.decomposition_mode = split > 1 ? Mode::SplitK : Mode::DataParallel;
    set_split_add(args);
  }

  static size_t workspace(const ScaledMmArgs& p) { return workspace_size<Gemm>(arguments(p), p.config); }

  static const char* run(const ScaledMmArgs& p, cudaStream_t stream) {
    return run_gemm<Gemm>(arguments(p), p.workspace, p.workspace_bytes, stream, (p.config & kConfigPdl) != 0,
                          p.config);
  }
};

// FP8 accumulates in the tensor cores' own precision between k-tiles ("fast accumulation", as the
// FP8 GEMMs of vLLM and TensorRT-LLM do for inference); int8 accumulates exactly in int32.
template <class AB, class Exact, class Fast>
using Schedule = std::conditional_t<std::is_same_v<AB, int8_t>, Exact, Fast>;

// Two shapes, measured on the H200 (BENCHMARKS.md). Skinny m (up to kSkinnyMaxM tokens) is bound by
// the weight bytes: one 64-row tile per column tile, two warpgroups in ping-pong so one's epilogue
// overlaps the other's math (a 128-row stream-K variant measured 0.5-0.9x of this at n = 4096).
// Large m is bound by the tensor cores: 128 x 256 tiles (FP8) or 128 x 128 (int8), two consumer
// warpgroups, a 2-CTA cluster multicasting the weight tile.
template <class AB, class D>
using Skinny = ScaledGemm<AB, D, Shape<_64, _128, _128>, Shape<_1, _1, _1>,
                          Schedule<AB, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                   cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum>,
                          cutlass::epilogue::TmaWarpSpecialized, Persistent>;
template <class AB, class D, class Cluster = Shape<_2, _1, _1>>  // Cluster: config 8's 2 x 2, below
using Large = ScaledGemm<AB, D, std::conditional_t<std::is_same_v<AB, int8_t>, Shape<_128, _128, _128>,
                                                   Shape<_128, _256, _128>>,
                         Cluster,
                         Schedule<AB, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                  cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum>,
                         cutlass::epilogue::TmaWarpSpecializedCooperative, Persistent>;

// Measured alternatives for the skinny range (config 3 and 4, chosen per call by kernels/scaled_mm.py): at
// n = 4096 the skinny tiles are 32 for 132 SMs, so the weight stream runs on a quarter of the GPU.
template <class AB, class D>
using Split = ScaledGemm<AB, D, Shape<_128, _128, _128>, Shape<_1, _1, _1>,
                         Schedule<AB, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                                  cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum>,
                         cutlass::epilogue::TmaWarpSpecializedCooperative, StreamK>;
template <class AB, class D>
using Narrow = ScaledGemm<AB, D, Shape<_64, _64, _128>, Shape<_1, _1, _1>,
                          Schedule<AB, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                   cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum>,
                          cutlass::epilogue::TmaWarpSpecialized, Persistent>;

// Config 5, for large m: 128 x 128 tiles, a 2-CTA cluster, two consumer warpgroups in ping-pong (each owns a whole
// tile, so one's epilogue, with its three scale / bias loads, overlaps the other's math) rather than splitting one
// 128 x 256 tile as Large does. Written for session 22's sweep: at 1024-8192 tokens Large ran the 8-bit tensor cores
// at ~62-77% of twice cuBLAS's bf16 rate (fp8 4096 x 4096 at 4096 tokens 1.40x bf16, int8 1.29x).
template <class AB, class D, class Cluster = Shape<_2, _1, _1>>
using LargePingpong = ScaledGemm<AB, D, Shape<_128, _128, _128>, Cluster,
                                 Schedule<AB, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                          cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum>,
                                 cutlass::epilogue::TmaWarpSpecialized, Persistent>;

// Config 6 (session 24): the skinny tile in a 2-CTA cluster along m, so each weight tile is loaded once (TMA multicast)
// for two 64-row token tiles. The fastest route in 5 of 60 cells at 32-512 tokens (all at 128 tokens, by <= 0.03x:
// BENCHMARKS.md "session 24"). A 64 x 32 tile (config 7 then) was never the fastest and was removed.
template <class AB, class D>
using SkinnyPair = ScaledGemm<AB, D, Shape<_64, _128, _128>, Shape<_2, _1, _1>,
                              Schedule<AB, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                                       cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum>,
                              cutlass::epilogue::TmaWarpSpecialized, Persistent>;

// Configs 7 and 8 (session 42, for the A/B): LargePingpong and Large in 2 x 2 clusters, both operands multicast. At
// the 8-bit tensor cores' rate a 128 x 128 x 128 step of LargePingpong reads 24 KB from L2 per CTA (the weight tile
// half-multicast), ~12 TB/s over 132 SMs, and Large's 128 x 256 step 32 KB per twice the math: both above what L2
// delivers (~5.5-7 TB/s), which may be why both run the tensor cores at 62-77% of twice cuBLAS's bf16 rate. In 2 x 2
// clusters LargePingpong reads 16 KB per step and Large 24 KB per double step (FP8; int8's Large tile is 128 x 128:
// 16 KB), at the price of four co-scheduled CTAs.
using Cluster22 = Shape<_2, _2, _1>;

constexpr int kSkinnyMaxM = 128;

template <class G>
const char* workspace_or_run(const ScaledMmArgs& p, cudaStream_t stream, size_t* workspace) {
  if (workspace != nullptr) return (*workspace = G::workspace(p)), nullptr;
  return G::run(p, stream);
}

template <class AB, class D>
const char* dispatch_m(const ScaledMmArgs& p, cudaStream_t stream, size_t* workspace) {
  switch (p.config & ~(kConfigPdl | kConfigOrder)) {
    case 0: return p.m <= kSkinnyMaxM ? workspace_or_run<Skinny<AB, D>>(p, stream, workspace)
                                      : workspace_or_run<Large<AB, D>>(p, stream, workspace);
    case 1: return workspace_or_run<Skinny<AB, D>>(p, stream, workspace);
    case 2: return workspace_or_run<Large<AB, D>>(p, stream, workspace);
    case 3: return workspace_or_run<Split<AB, D>>(p, stream, workspace);
    case 4: return workspace_or_run<Narrow<AB, D>>(p, stream, workspace);
    case 5: return workspace_or_run<LargePingpong<AB, D>>(p, stream, workspace);
    case 6: return workspace_or_run<SkinnyPair<AB, D>>(p, stream, workspace);
    case 7: return workspace_or_run<LargePingpong<AB, D, Cluster22>>(p, stream, workspace);
    case 8: return workspace_or_run<Large<AB, D, Cluster22>>(p, stream, workspace);
    default: return "config must be 0 (by m), 1 (skinny), 2 (large), 3 (split), 4 (narrow), 5 (large-pingpong), "
                    "6 (skinny-pair), 7 (large-pingpong in 2 x 2 clusters) or 8 (large in 2 x 2 clusters), plus 16 "
                    "for PDL, 32 for a swizzle of 8 and 64 for the grid walked along n";
  }
}

template <class AB>
const char* dispatch_out(const ScaledMmArgs& p, cudaStream_t stream, size_t* workspace) {
  if (p.out_half) return dispatch_m<AB, cutlass::half_t>(p, stream, workspace);
  return dispatch_m<AB, cutlass::bfloat16_t>(p, stream, workspace);
}

const char* dispatch(const ScaledMmArgs& p, cudaStream_t stream, size_t* workspace) {
  if (p.fp8) return dispatch_out<cutlass::float_e4m3_t>(p, stream, workspace);
  return dispatch_out<int8_t>(p, stream, workspace);
}

}  // namespace
}  // namespace qtool::sm90

extern "C" size_t qtool_sm90_workspace(const qtool::sm90::ScaledMmArgs* p) {
  size_t bytes = 0;
  qtool::sm90::dispatch(*p, nullptr, &bytes);
  return bytes;
}

extern "C" const char* qtool_sm90_scaled_mm(const qtool::sm90::ScaledMmArgs* p, cudaStream_t stream) {
  if (const char* err = qtool::sm90::dispatch(*p, stream, nullptr)) return err;
  const cudaError_t status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}
