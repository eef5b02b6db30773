// wo_gemv variant 4, "bulk" (sm_90): the ring GEMV's arithmetic with its weight stream carried by the Tensor
// Memory Accelerator instead of registers. Session 27 (kernels/NOTES.md) left the ring GEMV latency-bound at 64
// registers: 4 slots of 16 bytes per lane, 64 KB in flight per SM, 2.85 TB/s of the 4.3 the copy reaches. Here the
// bytes in flight cost shared memory, not registers:
//   - one block per 16-row stripe (as the ring GEMV); its K is cut into stages of kStageChunks chunks (8 KB of int4
//     codes), contiguous in the wo layout, and the group parameters those chunks use (64 contiguous bytes per group
//     row block: scale, then zero point);
//   - a producer warp issues each stage as bulk copies (cp.async.bulk, one for the codes, one per group row) into a
//     ring of kStages shared-memory slots, signalled through an mbarrier's transaction count; it refills a slot
//     once every consumer warp has arrived on the slot's "empty" barrier. Its first kStages stages go out before
//     the programmatic-dependent-launch wait (the weights are static, pdl.cuh);
//   - kConsumers warps stage x in fragment order (wo_xstage.cuh) and take the stage's chunks round-robin: 16 bytes
//     of codes per lane from shared memory, the four parameters of the lane's rows from shared memory (no shuffles),
//     then the ring GEMV's group sums (staged_group_sum) and float32 scaling.
// With 4 slots of ~9 KB, 4 blocks per SM keep ~150 KB in flight (the ring GEMV: 64 KB). Unmeasured: variant 4 of
// the wo_gemv op, not dispatched (weight_only.gemv_kind) until measured; GPU tests check it against the reference.
#include <cstdint>

#include "pdl.cuh"
#include "wo_common.cuh"
#include "wo_xstage.cuh"

namespace qtool {
namespace {

constexpr int kConsumers = 8;     // warps doing the math; warp kConsumers issues the copies
constexpr int kStageChunks = 16;  // chunks per stage: two per consumer warp
constexpr int kStages = 4;        // shared-memory slots in the ring
constexpr int kBulkMaxXsBytes = 96 << 10;

// Groups whose parameters one stage needs (the layout of a slot's parameter area): one when a group spans the
// stage's k range, else the groups inside it.
__host__ __device__ inline int stage_groups(int bits, int group_shift) {  // group_shift 31: per channel
  const int span = kStageChunks * chunk_k(bits);
  return group_shift >= 30 || (1 << group_shift) >= span ? 1 : span >> group_shift;
}

__host__ __device__ constexpr int stage_code_bytes(int bits) { return kStageChunks * chunk_vecs(bits) * 16; }

// A slot: the stage's codes, then scale rows [groups][16] and zero-point rows [groups][16] (float32).
__host__ __device__ inline int slot_bytes(int bits, int group_shift) {
  return stage_code_bytes(bits) + 2 * stage_groups(bits, group_shift) * kStripeRows * 4;
}

__host__ __device__ constexpr int round_up(int v, int to) { return (v + to - 1) / to * to; }

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // the mbarrier and bulk-copy helpers (sm_90 only)
__device__ inline uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ inline void mbar_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count));
}
__device__ inline void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
__device__ inline void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
__device__ inline void mbar_wait(uint64_t* bar, uint32_t parity) {  // until the phase of this parity completes
  asm volatile(
      "{\n .reg .pred done;\n wait_%=:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra wait_%=;\n}" ::"r"(smem_addr(bar)),
      "r"(parity)
      : "memory");
}
// `bytes` (a multiple of 16) from global to shared memory, both 16-byte aligned; completes on `bar`'s tx count.
__device__ inline void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
#endif

// The shared-memory layout of a block, in bytes from the dynamic base.
struct BulkLayout {
  int xs_bytes, slot, slots_at, bars_at, total;
  __host__ __device__ BulkLayout(const WoProblem& p) {
    xs_bytes = round_up(p.m * xs_row_words(p.w.k_padded) * 4, 128);
    slot = round_up(slot_bytes(p.w.num_bits, p.w.group_shift), 128);
    slots_at = xs_bytes;
    bars_at = slots_at + kStages * slot;
    total = bars_at + 2 * kStages * 8;
  }
};

// The producer warp: stage s of the stripe into slot s % kStages, after the consumers freed it.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
template <int BITS>
__device__ void produce(const WoProblem& p, const BulkLayout& lay, char* smem, uint64_t* full, uint64_t* empty) {
  constexpr int KC = chunk_k(BITS), CB = chunk_vecs(BITS) * 16;  // k and bytes per chunk
  const int lane = threadIdx.x % 32, stripe = blockIdx.x;
  const int nchunks = p.w.k_padded / KC, nstages = (nchunks + kStageChunks - 1) / kStageChunks;
  const int gs = p.w.group_shift, groups = stage_groups(BITS, gs);
  const char* codes = reinterpret_cast<const char*>(p.w.qweight) + static_cast<size_t>(stripe) * nchunks * CB;
  for (int s = 0; s < nstages; ++s) {
    const int slot = s % kStages;
    if (s >= kStages) mbar_wait(&empty[slot], (s / kStages - 1) & 1);
    if (s == kStages) pdl_wait_then_release();  // the first stages went out before the wait (static weights)
    char* dst = smem + lay.slots_at + slot * lay.slot;
    const int c0 = s * kStageChunks, chunks = min(kStageChunks, nchunks - c0);
    const int k0 = c0 * KC, k1 = k0 + chunks * KC;
    const int g0 = k0 >> gs, ng = ((k1 - 1) >> gs) - g0 + 1;  // groups of this stage's k range
    const int par_bytes = ng * kStripeRows * 4 * (p.w.zero != nullptr ? 2 : 1);
    if (lane == 0) mbar_arrive_expect_tx(&full[slot], chunks * CB + par_bytes);
    __syncwarp();
    if (lane == 0) bulk_copy(dst, codes + static_cast<size_t>(c0) * CB, chunks * CB, &full[slot]);
    float* par = reinterpret_cast<float*>(dst + stage_code_bytes(BITS));
    for (int i = lane; i < ng; i += 32) {
      const size_t row = static_cast<size_t>(g0 + i) * p.w.n_padded + stripe * kStripeRows;
      bulk_copy(par + i * kStripeRows, p.w.scale + row, kStripeRows * 4, &full[slot]);
      if (p.w.zero != nullptr)
        bulk_copy(par + (groups + i) * kStripeRows, p.w.zero + row, kStripeRows * 4, &full[slot]);
    }
  }
  if (nstages <= kStages) pdl_wait_then_release();
}
#endif

template <typename T, int BITS, int GPC>
__global__ void __launch_bounds__((kConsumers + 1) * 32, 4) wo_bulk_kernel(const WoProblem p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) char smem[];
  constexpr int SUB = chunk_subtiles(BITS), KC = chunk_k(BITS), SPG = SUB / GPC, CB = chunk_vecs(BITS) * 16;
  const BulkLayout lay(p);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + lay.bars_at);
  uint64_t* empty = full + kStages;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      mbar_init(&full[i], 1);
      mbar_init(&empty[i], kConsumers);
    }
  }
  __syncthreads();
  if (warp == kConsumers) {
    produce<BITS>(p, lay, smem, full, empty);
    return;
  }

  const int g = lane / 4, t = lane % 4;  // A: rows g, g + 8; B: token g
  const int nchunks = p.w.k_padded / KC, nstages = (nchunks + kStageChunks - 1) / kStageChunks;
  const int gs = p.w.group_shift, groups = stage_groups(BITS, gs);
  pdl_wait_then_release();  // x, bias and y only past this point (pdl.cuh)
  stage_x_fragment_order<SUB, kConsumers>(p, reinterpret_cast<uint4*>(smem));
  asm volatile("bar.sync 1, %0;" ::"n"(kConsumers * 32));  // x staged (the producer warp is not waited for)
  const uint32_t* x = reinterpret_cast<const uint32_t*>(smem) + (g < p.m ? g : 0) * xs_row_words(p.w.k_padded) +
                      t * 2 * SUB;

  float acc[4] = {};  // C fragment: (row g, token 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
  for (int s = 0; s < nstages; ++s) {
    const int slot = s % kStages;
    mbar_wait(&full[slot], (s / kStages) & 1);
    const char* st = smem + lay.slots_at + slot * lay.slot;
    const float* sp = reinterpret_cast<const float*>(st + stage_code_bytes(BITS));
    const int g0 = (s * kStageChunks * KC) >> gs;
#pragma unroll
    for (int j = 0; j < kStageChunks / kConsumers; ++j) {
      const int cl = warp + j * kConsumers, c = s * kStageChunks + cl;
      if (c >= nchunks) break;  // warp-uniform
      uint32_t w[4];
      words_of(*reinterpret_cast<const uint4*>(st + cl * CB + lane * 16), w);
      uint32_t hi[2] = {0u, 0u};
      if constexpr (BITS == 3) {
        const uint2 h = *reinterpret_cast<const uint2*>(st + cl * CB + 512 + lane * 8);
        hi[0] = h.x;
        hi[1] = h.y;
      }
      const uint32_t* xc = x + c * (KC / 2);
      uint4 bv;
#pragma unroll
      for (int gi = 0; gi < GPC; ++gi) {
        const int local = ((c * KC + gi * (KC / GPC)) >> gs) - g0;
        const float* sr = sp + local * kStripeRows + g;
        const float* zr = sp + (groups + local) * kStripeRows + g;
        const bool zero = p.w.zero != nullptr;
        const float zf[2] = {kCodeOffset<T, BITS> + (zero ? zr[0] : 0.0f), kCodeOffset<T, BITS> + (zero ? zr[8] : 0.0f)};
        uint32_t zp[2] = {0u, 0u};
        if constexpr (!kViaFloat<T, BITS>) {
          zp[0] = float_to_pair(zf[0], T{});
          zp[1] = float_to_pair(zf[1], T{});
        }
        float d[4] = {};
        staged_group_sum<T, BITS, SPG>(w, hi, gi, zf, zp, xc, bv, d);
        acc[0] = fmaf(sr[0], d[0], acc[0]);
        acc[1] = fmaf(sr[0], d[1], acc[1]);
        acc[2] = fmaf(sr[8], d[2], acc[2]);
        acc[3] = fmaf(sr[8], d[3], acc[3]);
      }
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(&empty[slot]);
  }

  // Sum the consumer warps, then the epilogue (as the ring GEMV).
  __shared__ float partial[kConsumers][kStripeRows][kMaxGemvTokens];
  partial[warp][g][2 * t] = acc[0];
  partial[warp][g][2 * t + 1] = acc[1];
  partial[warp][g + 8][2 * t] = acc[2];
  partial[warp][g + 8][2 * t + 1] = acc[3];
  asm volatile("bar.sync 1, %0;" ::"n"(kConsumers * 32));
  if (threadIdx.x < p.m * kStripeRows) {
    const int m = threadIdx.x / kStripeRows, r = threadIdx.x % kStripeRows;
    const int n = blockIdx.x * kStripeRows + r;
    if (n < p.w.n) {
      float v = bias_at(opaque(p.bias), n);
#pragma unroll
      for (int i = 0; i < kConsumers; ++i) v += partial[i][r][m];
      store(static_cast<T*>(p.y) + static_cast<size_t>(m) * p.w.n + n, activate(v, p.act));
    }
  }
#endif
}

template <typename T, int BITS, int GPC>
void launch_bulk(const WoProblem& p, int smem, cudaStream_t stream) {
  auto* kernel = wo_bulk_kernel<T, BITS, GPC>;
  // Above 48 KB in all, the static partial sums included, a kernel must opt in (session 27's first GPU call
  // launched 45 KB dynamic + 4 KB static without it: "invalid argument").
  constexpr int kStaticBytes = kConsumers * kStripeRows * kMaxGemvTokens * 4;
  if (smem + kStaticBytes > (48 << 10)) cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  launch_maybe_pdl(kernel, p.pdl, dim3(p.w.n_padded / kStripeRows), dim3((kConsumers + 1) * 32), smem, stream, p);
}

template <typename T, int BITS>
void launch_bulk_typed(const WoProblem& p, int smem, cudaStream_t stream) {
  constexpr int chunk_shift = BITS == 8 ? 5 : BITS == 4 ? 6 : 7;  // log2(chunk_k), as wo_gemv.cu
  const int gpc = p.w.group_shift >= chunk_shift ? 1 : 1 << (chunk_shift - p.w.group_shift);
  if (gpc == 1) {
    launch_bulk<T, BITS, 1>(p, smem, stream);
  } else if (gpc == 2) {
    launch_bulk<T, BITS, 2>(p, smem, stream);
  } else if constexpr (BITS != 8) {
    launch_bulk<T, BITS, 4>(p, smem, stream);
  }
}

bool bulk_supported() {
  static const bool ok = [] {
    int device = 0, major = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    return major >= 9;
  }();
  return ok;
}

}  // namespace

void launch_wo_bulk(const WoProblem& p, cudaStream_t stream) {
  const BulkLayout lay(p);
  if (!bulk_supported() || lay.xs_bytes > kBulkMaxXsBytes) {  // the ring GEMV serves the rest
    WoProblem ring = p;
    ring.gemv_variant = 1;
    launch_wo_gemv(ring, stream);
    return;
  }
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  switch (p.w.num_bits) {
    case 2:
      bf16 ? launch_bulk_typed<__nv_bfloat16, 2>(p, lay.total, stream) : launch_bulk_typed<__half, 2>(p, lay.total, stream);
      break;
    case 3:
      bf16 ? launch_bulk_typed<__nv_bfloat16, 3>(p, lay.total, stream) : launch_bulk_typed<__half, 3>(p, lay.total, stream);
      break;
    case 4:
      bf16 ? launch_bulk_typed<__nv_bfloat16, 4>(p, lay.total, stream) : launch_bulk_typed<__half, 4>(p, lay.total, stream);
      break;
    default:
      bf16 ? launch_bulk_typed<__nv_bfloat16, 8>(p, lay.total, stream) : launch_bulk_typed<__half, 8>(p, lay.total, stream);
  }
}

}  // namespace qtool
