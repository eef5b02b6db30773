// CUTLASS 4.2's FP8 blockwise-scaling mainloop (sm90) with each k tile's promotion overlapped with the next k tile's
// tensor-core work (libqtool_sm90_block, every tile with the kBlockConfigOverlap bit; session 42; session 43 measured
// block-large 1-10% faster with it at 1024-8192 tokens, and the routes take it in 45 of 60 swept cells).
//
// Why: the block scales change every 128 k, so after each 128-k step a consumer warpgroup must wait for its wgmma
// batch to finish and fold the partial tile into its float32 sums, scaled (64 multiply-adds per thread on a 64 x 128
// warpgroup tile). CUTLASS's mainloop issues the batch, waits for it (warpgroup_wait<0>) and then promotes, so the
// warpgroup's tensor-core work stops for the promotion and the wait's drain; the other warpgroup of the CTA fills
// that gap only if the two run out of phase, and they start each step on the same shared-memory stage. Here every
// step issues k tile i into one of two partial tiles, waits only for k tile i - 1 (warpgroup_wait<1>) and promotes
// that one while k tile i runs: two partial tiles instead of one (64 more registers per thread, ~200 of the 232 a
// cooperative consumer warpgroup gets).
//
// The result is the same arithmetic in the same order as CUTLASS's (each partial tile from zero, promoted in k order),
// so the same bits. Everything but `mma` is CUTLASS's own collective.
#pragma once

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"

namespace qtool::sm90 {

template <class Base>
struct OverlappedPromotion : Base {
  using Base::Base;
  using typename Base::ElementBlockScale;
  using typename Base::MainloopPipeline;
  using typename Base::Params;
  using typename Base::PipelineState;
  using typename Base::SmemLayoutA;
  using typename Base::SmemLayoutB;
  using typename Base::SmemLayoutSFA;
  using typename Base::SmemLayoutSFB;
  using typename Base::TensorStorage;
  using typename Base::TiledMma;
  using typename Base::TileShape;

  // The warpgroup's scale of each accumulator element for one k tile: (MMA, MMA_M, MMA_N) with broadcast modes.
  template <class ScalesA, class ScalesB>
  CUTLASS_DEVICE static void fold_scales(ScalesA& sfa, ScalesB& sfb) {
    using namespace cute;
    if constexpr (Base::ScaleMsPerTile == 1 && Base::ScaleNsPerTile == 1) {
      sfa(_0{}) = sfa(_0{}) * sfb(_0{});
    } else if constexpr (Base::ScaleNsPerTile == 1) {
      const ElementBlockScale b = sfb(_0{});
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(filter_zeros(sfa)); ++i) filter_zeros(sfa)(i) = filter_zeros(sfa)(i) * b;
    } else if constexpr (Base::ScaleMsPerTile == 1) {
      const ElementBlockScale a = sfa(_0{});
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < size(filter_zeros(sfb)); ++i) filter_zeros(sfb)(i) = filter_zeros(sfb)(i) * a;
    }
  }

  // accum += partial * scale, the scale folded by fold_scales.
  template <class Accum, class Partial, class ScalesA, class ScalesB>
  CUTLASS_DEVICE static void promote(Accum& accum, Partial& partial, ScalesA const& sfa, ScalesB const& sfb) {
    using namespace cute;
    warpgroup_fence_operand(partial);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < size(accum); ++i) {
      if constexpr (Base::ScaleMsPerTile == 1 && Base::ScaleNsPerTile == 1) {
        accum(i) += partial(i) * sfa(_0{});
      } else if constexpr (Base::ScaleNsPerTile == 1) {
        accum(i) += partial(i) * sfa(i);
      } else if constexpr (Base::ScaleMsPerTile == 1) {
        accum(i) += partial(i) * sfb(i);
      } else {
        accum(i) += partial(i) * sfa(i) * sfb(i);
      }
    }
  }

  template <class FrgTensorC>
  CUTLASS_DEVICE void mma(MainloopPipeline pipeline, PipelineState smem_pipe_read, FrgTensorC& accum, int k_tile_count,
                          int thread_idx, TensorStorage& shared_tensors, Params const& mainloop_params) {
    using namespace cute;
    static_assert(Base::ScalePromotionInterval == 4, "one promotion per 128-k tile (the fp8-block scales)");
    Tensor sA = make_tensor(make_smem_ptr(shared_tensors.smem_A.data()), SmemLayoutA{});  // (BLK_M, BLK_K, PIPE)
    Tensor sB = make_tensor(make_smem_ptr(shared_tensors.smem_B.data()), SmemLayoutB{});  // (BLK_N, BLK_K, PIPE)
    // The scales as (BLK_M, BLK_N, (BLK_K, PIPE)) views, broadcast along the other operand's mode.
    Tensor sSFA = make_tensor(make_smem_ptr(shared_tensors.smem_SFA.data()),
                              make_layout(make_shape(get<0>(shape(SmemLayoutSFA{})), get<1>(TileShape{}),
                                                     make_shape(get<1>(shape(SmemLayoutSFA{})),
                                                                get<2>(shape(SmemLayoutSFA{})))),
                                          make_stride(get<0>(stride(SmemLayoutSFA{})), _0{},
                                                      make_stride(get<1>(stride(SmemLayoutSFA{})),
                                                                  get<2>(stride(SmemLayoutSFA{}))))));
    Tensor sSFB = make_tensor(make_smem_ptr(shared_tensors.smem_SFB.data()),
                              make_layout(make_shape(get<0>(TileShape{}), get<0>(shape(SmemLayoutSFB{})),
                                                     make_shape(get<1>(shape(SmemLayoutSFB{})),
                                                                get<2>(shape(SmemLayoutSFB{})))),
                                          make_stride(_0{}, get<0>(stride(SmemLayoutSFB{})),
                                                      make_stride(get<1>(stride(SmemLayoutSFB{})),
                                                                  get<2>(stride(SmemLayoutSFB{}))))));

    constexpr int kWarpGroups = size(TiledMma{}) / cutlass::NumThreadsPerWarpGroup;
    const int warp_group = __shfl_sync(0xFFFFFFFF, thread_idx / cutlass::NumThreadsPerWarpGroup, 0);
    TiledMma tiled_mma;
    auto thread_mma =
        tiled_mma.get_slice(make_layout(Int<kWarpGroups>{}, Int<cutlass::NumThreadsPerWarpGroup>{})(warp_group));
    Tensor tCsSFA = tiled_mma.get_slice(thread_idx).partition_C(sSFA);  // (MMA, MMA_M, MMA_N, (MMA_K, PIPE))
    Tensor tCsSFB = tiled_mma.get_slice(thread_idx).partition_C(sSFB);
    Tensor tCrA = thread_mma.make_fragment_A(thread_mma.partition_A(sA));  // (MMA, MMA_M, MMA_K, PIPE)
    Tensor tCrB = thread_mma.make_fragment_B(thread_mma.partition_B(sB));  // (MMA, MMA_N, MMA_K, PIPE)

    // Two partial tiles and their scales: k tile i goes to set i % 2.
    Tensor partial0 = make_fragment_like(accum);
    Tensor partial1 = make_fragment_like(accum);
    Tensor sfa0 = make_tensor_like<ElementBlockScale>(tCsSFA(_, _, _, _0{}));
    Tensor sfa1 = make_tensor_like<ElementBlockScale>(tCsSFA(_, _, _, _0{}));
    Tensor sfb0 = make_tensor_like<ElementBlockScale>(tCsSFB(_, _, _, _0{}));
    Tensor sfb1 = make_tensor_like<ElementBlockScale>(tCsSFB(_, _, _, _0{}));
    PipelineState smem_pipe_release = smem_pipe_read;

    // Wait for the next k tile's stage, copy its scales, issue its wgmma batch into `partial` from zero.
    auto issue = [&](auto& partial, auto& sfa, auto& sfb) {
      pipeline.consumer_wait(smem_pipe_read, pipeline.consumer_try_wait(smem_pipe_read));
      const int stage = smem_pipe_read.index();
      copy(tCsSFA(_, _, _, make_coord(_0{}, stage)), sfa);
      copy(tCsSFB(_, _, _, make_coord(_0{}, stage)), sfb);
      tiled_mma.accumulate_ = GMMA::ScaleOut::Zero;
      warpgroup_fence_operand(partial);
      warpgroup_arrive();
      CUTLASS_PRAGMA_UNROLL
      for (int k_block = 0; k_block < size<2>(tCrA); ++k_block) {
        cute::gemm(tiled_mma, tCrA(_, _, k_block, stage), tCrB(_, _, k_block, stage), partial);
        tiled_mma.accumulate_ = GMMA::ScaleOut::One;
      }
      warpgroup_commit_batch();
      warpgroup_fence_operand(partial);
      fold_scales(sfa, sfb);
      ++smem_pipe_read;
    };
    // Once the batch before the newest is done: release its stage, promote its partial tile.
    auto retire = [&](auto& partial, auto& sfa, auto& sfb) {
      warpgroup_wait<1>();
      pipeline.consumer_release(smem_pipe_release);
      ++smem_pipe_release;
      promote(accum, partial, sfa, sfb);
    };

    warpgroup_fence_operand(accum);
    issue(partial0, sfa0, sfb0);
    int left = k_tile_count - 1;
    for (; left >= 2; left -= 2) {  // two k tiles per turn, so each partial tile stays in its own registers
      issue(partial1, sfa1, sfb1);
      retire(partial0, sfa0, sfb0);
      issue(partial0, sfa0, sfb0);
      retire(partial1, sfa1, sfb1);
    }
    if (left == 1) {
      issue(partial1, sfa1, sfb1);
      retire(partial0, sfa0, sfb0);
      warpgroup_wait<0>();
      promote(accum, partial1, sfa1, sfb1);
    } else {
      warpgroup_wait<0>();
      promote(accum, partial0, sfa0, sfb0);
    }
    warpgroup_fence_operand(accum);
    // The last k tile's stage is released by mma_tail, as CUTLASS's mainloop leaves it.
  }
};

}  // namespace qtool::sm90
