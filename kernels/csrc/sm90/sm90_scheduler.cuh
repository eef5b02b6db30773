// The split-K / stream-K tile scheduler of the Hopper GEMM libraries (`StreamK` in their kernel types): CUTLASS 4.2's
// PersistentTileSchedulerSm90StreamK, with how the splits of a tile meet made ours. Below it, `Persistent`: CUTLASS's
// static persistent scheduler. Both carry the first-work hooks of sm90_prefetch.cuh (prefetch, early release).
//
// Why: on the small layers at 9-64 tokens every Hopper GEMM sits on a ~10-13 us floor (session 40's fit), and
// session 12 measured part of it: the mixed-input GEMM at 8 tokens on 4096 x 4096 was a 13.2 us kernel plus the
// stream-K flags' memset node (0.9 us) and 3.6 us of gaps around it. CUTLASS zeroes the flags with a memset on every
// call (`initialize_workspace`), a graph node that also keeps the GEMM from overlapping the kernel before it under
// PDL; and with its default reduction split s of a tile adds its partials only after split s - 1 did (S - 1 waits in
// a chain after the main loops). Session 43 measured the ordered adds (the default) against CUTLASS's chain: the
// W4 mixed-input GEMM 4-15% faster at 16 and 64 tokens on 4096 x 4096 - 28672 x 8192 (kernels/ROUTES.md).
//   QTOOL_GEMM_SPLIT_ADD=ordered (the default; split-K only, stream-K keeps the chain) every split but the last
//                              stores its partials in a slot of its own, at once; the last waits for all of them and
//                              adds them in split order: no chain, and the same bits on every run. Workspace: S - 1
//                              slots per tile, not one. Its flags are kept (below).
//   QTOOL_GEMM_SPLIT_ADD=chain CUTLASS's Deterministic reduction (the chain above), flags zeroed per call unless
//                              QTOOL_GEMM_LOCKS=keep.
//   QTOOL_GEMM_SPLIT_ADD=any   CUTLASS's Nondeterministic reduction: every split adds (red.global.add) once the first
//                              has stored; the sums round in arrival order (last bits may differ between runs).
//   kept flags                 a buffer per device, zeroed once; the split that finishes a tile resets its flag, so
//                              no call needs a memset. Two GEMMs of one library running at the same time on two
//                              streams would share the flags: qtool runs its layers on one stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>

#include <cuda_runtime.h>

#include "cutlass/barrier.h"
#include "cutlass/block_striped.h"
#include "cutlass/cutlass.h"
#include "cutlass/gemm/kernel/tile_scheduler.hpp"
#include "cutlass/kernel_hardware_info.h"
#include "../kept_counters.h"
#include "sm90_prefetch.cuh"

namespace qtool::sm90 {

struct StreamK {};

enum class SplitAdd { chain, any, ordered };

inline SplitAdd split_add() {  // QTOOL_GEMM_SPLIT_ADD, read once per process
  static const SplitAdd mode = [] {
    const char* env = std::getenv("QTOOL_GEMM_SPLIT_ADD");
    const std::string v = env == nullptr ? "" : env;
    return v == "any" ? SplitAdd::any : v == "chain" ? SplitAdd::chain : SplitAdd::ordered;
  }();
  return mode;
}

// Kept flags per device: one per output tile and consumer warpgroup of a split launch (a GEMM with more split tiles
// than that zeroes CUTLASS's own flags as before).
constexpr uint64_t kKeptLocks = 16384;
constexpr uint64_t kMaxConsumerGroups = 2;

// The calling device's kept flags (QTOOL_GEMM_LOCKS=keep, or the ordered adds); nullptr when off, or when they do
// not exist yet and `stream` is capturing a graph (that call zeroes CUTLASS's flags as before).
inline int* kept_locks(cudaStream_t stream) {
  static const bool on = [] {
    const char* env = std::getenv("QTOOL_GEMM_LOCKS");
    return (env != nullptr && std::string(env) == "keep") || split_add() == SplitAdd::ordered;
  }();
  static KeptCounters locks(kKeptLocks);
  return on ? locks.get(stream) : nullptr;
}

template <class TileShape, class ClusterShape>
class StreamKScheduler : public cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90StreamK<TileShape, ClusterShape> {
  using Base = cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90StreamK<TileShape, ClusterShape>;
  using BaseParams = typename Base::Params;
  using BaseArguments = typename Base::Arguments;

 public:
  using Base::Base;
  using typename Base::WorkTileInfo;

  struct Arguments : BaseArguments {
    int* locks = nullptr;  // kept_locks(): set by run_gemm, per call
    bool ordered = false;  // QTOOL_GEMM_SPLIT_ADD=ordered (set_split_add)
    LaunchKnobs knobs;     // sm90_prefetch.cuh: the caller's prefetch; early release (run_gemm)
  };

  struct Params : BaseParams {
    int* locks = nullptr;  // the kept flags (kKeptLocks ints, zero between launches); nullptr: CUTLASS's fixup
    bool ordered = false;  // split-K partials in slots of their own, added by the last split in split order
    LaunchKnobs knobs;
  };

  StreamKScheduler() = default;
  // ours_ points into the kernel's parameters (grid constants: no copy to registers or local memory)
  CUTLASS_DEVICE explicit StreamKScheduler(Params const& params) : Base(params), ours_(&params) {}

  // CUTLASS's first unit of work for this CTA, asked for from the kernel's prologue before its producer's
  // grid-dependency wait: where the prefetch and the early release start (sm90_prefetch.cuh, on_first_work).
  CUTLASS_DEVICE WorkTileInfo initial_work_tile_info(ClusterShape cluster_shape) {
    WorkTileInfo work = Base::initial_work_tile_info(cluster_shape);
    if (ours_ != nullptr) {
      on_first_work<TileShape>(ours_->knobs, work.is_valid(), work.M_idx, work.N_idx, work.K_idx,
                               static_cast<int>(work.k_tile_count));
    }
    return work;
  }

  // Whether a launch of `problem_shape` keeps its flags in args.locks: every split tile needs one per warpgroup, on
  // the tile grid as the scheduler pads it (to whole clusters, and whole swizzle groups: at most max_swizzle_size).
  template <class ProblemShape>
  static bool fits(ProblemShape problem_shape, Arguments const& args) {
    const dim3 tiles = Base::get_tiled_cta_shape_mnl(cute::append<4>(problem_shape, cute::Int<1>{}), TileShape{},
                                                     ClusterShape{});
    const uint64_t swizzle = static_cast<uint64_t>(args.max_swizzle_size > 1 ? args.max_swizzle_size : 1);
    const uint64_t pad_m = swizzle * cute::size<0>(ClusterShape{}), pad_n = swizzle * cute::size<1>(ClusterShape{});
    const uint64_t m = (tiles.x + pad_m - 1) / pad_m * pad_m, n = (tiles.y + pad_n - 1) / pad_n * pad_n;
    return m * n * tiles.z * kMaxConsumerGroups <= kKeptLocks;
  }

  template <class ProblemShape>
  static Params to_underlying_arguments(ProblemShape problem_shape, TileShape tile_shape, ClusterShape cluster_shape,
                                        cutlass::KernelHardwareInfo const& hw_info, Arguments const& args,
                                        void* workspace, const uint32_t epilogue_subtile = 1,
                                        uint32_t ktile_start_alignment_count = 1u) {
    Params params;
    static_cast<BaseParams&>(params) = Base::to_underlying_arguments(
        problem_shape, tile_shape, cluster_shape, hw_info, args, workspace, epilogue_subtile,
        ktile_start_alignment_count);
    if (args.locks != nullptr && fits(problem_shape, args)) {
      params.locks = args.locks;
      params.ordered = args.ordered;
    }
    params.knobs = args.knobs;
    return params;
  }

  // The ordered adds need S - 1 partial tiles per output tile where CUTLASS keeps one (sized whether or not the kept
  // flags exist at run time: the workspace is asked for before the call knows).
  template <class ProblemShape, class ElementAccumulator>
  static size_t get_workspace_size(Arguments const& args, ProblemShape problem_shape,
                                   cutlass::KernelHardwareInfo const& hw_info, uint32_t mma_warp_groups,
                                   const uint32_t epilogue_subtile = 1, uint32_t num_accumulator_mtxs = 1) {
    size_t bytes = Base::template get_workspace_size<ProblemShape, ElementAccumulator>(
        args, problem_shape, hw_info, mma_warp_groups, epilogue_subtile, num_accumulator_mtxs);
    if (args.ordered && args.splits > 2 && fits(problem_shape, args)) bytes *= static_cast<size_t>(args.splits - 1);
    return bytes;
  }

  // No memset where the flags are kept: they are zero already.
  template <class ProblemShape, class ElementAccumulator>
  static cutlass::Status initialize_workspace(Arguments const& args, void* workspace, cudaStream_t stream,
                                              ProblemShape const& problem_shape,
                                              cutlass::KernelHardwareInfo const& hw_info, uint32_t mma_warp_groups,
                                              const uint32_t epilogue_subtile = 1, uint32_t num_accumulator_mtxs = 1,
                                              cutlass::CudaHostAdapter* cuda_adapter = nullptr) {
    if (args.locks != nullptr && fits(problem_shape, args)) return cutlass::Status::kSuccess;
    return Base::template initialize_workspace<ProblemShape, ElementAccumulator>(
        args, workspace, stream, problem_shape, hw_info, mma_warp_groups, epilogue_subtile, num_accumulator_mtxs,
        cuda_adapter);
  }

  // Which split of its tile `work` is (split-K: the first k_tiles % S splits take one k tile more).
  CUTLASS_DEVICE static uint32_t split_index(Params const& params, WorkTileInfo const& work) {
    const uint32_t small = params.divmod_k_tiles_per_sk_unit_.divisor;
    const uint32_t big_end = params.big_units_ * (small + 1);
    const uint32_t k = static_cast<uint32_t>(work.K_idx);
    return k < big_end ? k / (small + 1) : params.big_units_ + (k - big_end) / small;
  }

  // The reduction across the splits of a tile (the kernel calls it after each unit's main loop, per consumer
  // warpgroup). With kept flags: CUTLASS's chain or arrival-order adds, or the ordered slots; the split that runs
  // the epilogue resets the flag after its wait, when every other split of the tile has arrived. CUTLASS 4.2
  // disables its separate reduction, the one case this does not handle.
  template <class FrgTensorC>
  CUTLASS_DEVICE static void fixup(Params const& params, WorkTileInfo const& work, FrgTensorC& accumulators,
                                   uint32_t num_barriers, uint32_t barrier_idx) {
    if (params.locks == nullptr) {
      Base::fixup(params, work, accumulators, num_barriers, barrier_idx);
      return;
    }
    if (!Base::requires_fixup(params, work)) return;
    using Acc = typename FrgTensorC::value_type;
    using Fragment = cutlass::Array<Acc, cute::size(FrgTensorC{})>;
    constexpr uint32_t kOffset = static_cast<uint32_t>(cutlass::arch::ReservedNamedBarriers::StreamkBarrier0);
    using Barriers = cutlass::NamedBarrierManager<cutlass::NumThreadsPerWarpGroup, kOffset, kMaxConsumerGroups>;
    using Striped = cutlass::BlockStripedReduce<Barriers::ThreadCount, Fragment>;
    constexpr uint64_t kTileElements = cute::size<0>(TileShape{}) * cute::size<1>(TileShape{});

    const uint64_t tile = Base::output_tile_index(params, work);
    const int lock = static_cast<int>(tile * num_barriers + barrier_idx);
    const int thread = threadIdx.x % Barriers::ThreadCount;
    // this warpgroup's share of partial tile `slot` (CUTLASS's offsets)
    auto partials = [&](uint64_t slot) {
      return reinterpret_cast<Fragment*>(reinterpret_cast<Acc*>(params.reduction_workspace_) + kTileElements * slot +
                                         uint64_t(cute::size(accumulators)) * barrier_idx * Barriers::ThreadCount);
    };
    Fragment& acc = *reinterpret_cast<Fragment*>(accumulators.data());
    const bool last = Base::compute_epilogue(work, params);
    const uint32_t splits = params.divmod_splits_.divisor;

    if (params.ordered && splits > 1) {
      const uint64_t first = tile * (splits - 1);
      if (!last) {
        Striped::store(partials(first + split_index(params, work)), acc, thread);
        Barriers::arrive_inc(barrier_idx, params.locks, thread, lock, 1);
        return;
      }
      Barriers::wait_eq(barrier_idx, params.locks, thread, lock, static_cast<int>(splits - 1));
      if (thread == 0) params.locks[lock] = 0;
      for (uint32_t s = 0; s + 1 < splits; ++s) Striped::load_add(acc, partials(first + s), thread);
      return;
    }
    if (!last) {
      if (work.K_idx == 0) {
        Striped::store(partials(tile), acc, thread);
      } else {
        if (params.reduction_mode_ == BaseParams::ReductionMode::Deterministic) {
          Barriers::wait_eq(barrier_idx, params.locks, thread, lock, work.K_idx);  // split s - 1 has added
        } else {
          Barriers::wait_lt(barrier_idx, params.locks, thread, lock, 1);  // the first split has stored
        }
        Striped::reduce(partials(tile), acc, thread);
      }
      Barriers::arrive_inc(barrier_idx, params.locks, thread, lock, static_cast<int>(work.k_tile_count));
      return;
    }
    Barriers::wait_eq(barrier_idx, params.locks, thread, lock, work.K_idx);
    if (thread == 0) params.locks[lock] = 0;
    Striped::load_add(acc, partials(tile), thread);
  }

  // Whether `work` (a copy: continue_current_work advances it) is this CTA's last unit of work; only the moment the
  // next grid is released depends on it, never a result. CUTLASS 4.2's own does not compile where the kernels call
  // it (under CUTLASS_ENABLE_GDC_FOR_SM90: its const body binds the member iteration start to a non-const
  // reference), so the same question is asked of a copy of the scheduler, advanced as the kernel would.
  CUTLASS_DEVICE bool is_last_tile(WorkTileInfo work, uint32_t advance_count = 1) const {
    if (this->continue_current_work(work)) return false;
    Base next = *this;
    next.advance_to_next_work(advance_count);
    return !next.get_current_work().is_valid();
  }

 private:
  Params const* ours_ = nullptr;
};

struct Persistent {};  // the tag of CUTLASS's static persistent scheduler with our first-work hooks

// CUTLASS 4.2's PersistentTileSchedulerSm90 (one whole-k tile per unit of work) with the hooks of sm90_prefetch.cuh
// on each CTA's first tile: what the ping-pong and cluster tiles of the three libraries name (`Persistent`).
template <class TileShape, class ClusterShape>
class PersistentScheduler : public cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90 {
  using Base = cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90;
  using BaseParams = typename Base::Params;
  using BaseArguments = typename Base::Arguments;

 public:
  using Base::Base;
  using typename Base::WorkTileInfo;

  struct Arguments : BaseArguments {
    LaunchKnobs knobs;
  };

  struct Params : BaseParams {
    LaunchKnobs knobs;
  };

  PersistentScheduler() = default;
  CUTLASS_DEVICE explicit PersistentScheduler(Params const& params) : Base(params), ours_(&params) {}

  template <class ProblemShapeMNKL, class Tile, class Cluster>
  static Params to_underlying_arguments(ProblemShapeMNKL problem_shape, Tile tile_shape, Cluster cluster_shape,
                                        cutlass::KernelHardwareInfo const& hw_info, Arguments const& args,
                                        void* workspace = nullptr, const uint32_t epilogue_subtile = 1,
                                        uint32_t ktile_start_alignment_count = 1u) {
    Params params;
    static_cast<BaseParams&>(params) = Base::to_underlying_arguments(
        problem_shape, tile_shape, cluster_shape, hw_info, args, workspace, epilogue_subtile,
        ktile_start_alignment_count);
    params.knobs = args.knobs;
    return params;
  }

  // The ping-pong kernel asks from every warpgroup before its producer's grid-dependency wait (its second consumer
  // for the CTA's second tile): the first warpgroup, the producer, prefetches the first tile's weights.
  template <class Cluster>
  CUTLASS_DEVICE WorkTileInfo initial_work_tile_info(Cluster cluster_shape) {
    WorkTileInfo work = Base::initial_work_tile_info(cluster_shape);
    if (ours_ != nullptr) on_first_work<TileShape>(ours_->knobs, work.is_valid(), work.M_idx, work.N_idx, 0, 1 << 24);
    return work;
  }

 private:
  Params const* ours_ = nullptr;
};

template <class T, class = void>
struct has_knobs : std::false_type {};
template <class T>
struct has_knobs<T, std::void_t<decltype(std::declval<T&>().knobs)>> : std::true_type {};

template <class T, class = void>
struct keeps_locks : std::false_type {};
template <class T>
struct keeps_locks<T, std::void_t<decltype(std::declval<T&>().locks)>> : std::true_type {};

// QTOOL_GEMM_SPLIT_ADD on a StreamK GEMM's arguments (chain: CUTLASS's default, left as it is).
template <class Arguments>
void set_split_add(Arguments& args) {
  using Mode = std::remove_reference_t<decltype(args.scheduler.reduction_mode)>;
  if (split_add() == SplitAdd::any) args.scheduler.reduction_mode = Mode::Nondeterministic;
  args.scheduler.ordered = split_add() == SplitAdd::ordered;
}

}  // namespace qtool::sm90

template <class TileShape, class ClusterShape, uint32_t Stages>
struct cutlass::gemm::kernel::detail::TileSchedulerSelector<qtool::sm90::StreamK, cutlass::arch::Sm90, TileShape,
                                                            ClusterShape, Stages> {
  using Scheduler = qtool::sm90::StreamKScheduler<TileShape, ClusterShape>;
};

template <class TileShape, class ClusterShape, uint32_t Stages>
struct cutlass::gemm::kernel::detail::TileSchedulerSelector<qtool::sm90::Persistent, cutlass::arch::Sm90, TileShape,
                                                            ClusterShape, Stages> {
  using Scheduler = qtool::sm90::PersistentScheduler<TileShape, ClusterShape>;
};
