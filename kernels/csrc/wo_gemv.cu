// Weight-only GEMV for 1 <= m <= 8 tokens: y = act(x @ dequant(W)^T + bias).
//
// At small m the product is a stream over the weights, so everything here serves one goal: keep
// enough weight bytes in flight and spend few instructions per byte (NOTES.md, "v2").
//   - One block per 16-row stripe, 8 warps taking interleaved chunks (the block reads 4 KB of
//     contiguous codes per step). Each lane keeps a ring of BATCH (8) chunks' 16-byte loads and
//     their group parameters in flight: all are issued before any math, and each slot is refilled
//     right after its math. At K = 4096 (int4) one ring is a warp's whole share of the stripe, so
//     the kernel pays DRAM latency about once (v1: twice, with nothing overlapping).
//   - The math runs on the tensor cores (mma.m16n8k16, float32 accumulation), with the m tokens as
//     the 8 columns of B. The repacked layout already is the A fragment (wo_kernels.h), so a 16x16
//     subtile costs a few LOP3/PRMT and packed subtractions (A = q - zero_point, exact small
//     integers in bf16/fp16) plus one mma, against ~150 instructions per 16 bytes for float32
//     dequantization and FMAs on CUDA cores (v1). Products of bf16/fp16 values are exact in float32
//     and the sums are float32, the arithmetic of wo_gemm; the float32 scale multiplies the sum of
//     each group: acc += scale * sum_group (q - z) * x.
//   - 2- and 3-bit weights stream at their own width: 128-k chunks of 8 subtiles, 3-bit with a second
//     8-byte load of high bits per chunk (wo_kernels.h); each subtile becomes a word of nibbles
//     (wo_decode.cuh, low_bit_nibbles) and then costs what an int4 subtile costs.
//   - Group parameters: lane t of each 4-lane quad loads one of (scale row g, scale row g + 8,
//     zero row g, zero row g + 8) and the quad shares them by shuffles, so a chunk in flight costs
//     one register per group, not four.
// The 8 warps' partial sums are added in shared memory, then bias and activation are applied.
// Prepared weights launch with Programmatic Dependent Launch (pdl.cuh): the first ring goes out before the wait on
// the kernel before (session 18, H200: 6.0 -> 4.9 us at one token on 4096 x 4096; v3's H100 form, with the wait
// before any load, had measured no consistent gain). Session 19 tried taking zero points off once per group (biased
// A fragments, per-block sums of x: 405 -> 366 instructions per four chunks): slower at one token (4096 x 4096 4.9
// -> 6.4 us) and wrong in 38 GPU tests as written; removed (kernels/NOTES.md). Session 27 cut the instructions
// around the math (ncu, lean 4096 x 28672 at one token: 14.7 M -> 12.7 M): x staged in fragment order, running
// refill addresses, width-4 shuffles; one token +1-9%, two tokens +10-23% (kernels/NOTES.md, session 27).
#include <cstdint>
#include <cstdlib>

#include "pdl.cuh"
#include "wo_common.cuh"
#include "wo_xstage.cuh"

namespace qtool {
namespace {

constexpr int kWarps = 8;  // warps per block, all on the same stripe, splitting its chunks
// gemv_variant 2 (dispatched at <= 4096 rows, weight_only.gemv_variant: 3-8% faster there, session 14): 16 warps
// per block in the lean budget (64 registers, 4 chunks per lane), two blocks per SM. Where a layer has too few
// stripes to fill an SM's slots (4096 rows: 256, < 2 per SM), 8-warp lean blocks keep 16 warps x 4 chunks in
// flight per SM and take two passes over a K = 4096 stripe; 16-warp ones take it in one. w8_gemv measured the
// same change at 1.23x -> 1.62x bf16 (4096 x 4096, one token).
constexpr int kWideWarps = 16;

constexpr int kXsMaxBytes = 96 << 10;  // the most x staged (wo_xstage.cuh says why staged)

// The most x bytes staged in shared memory: kXsMaxBytes, or QTOOL_GEMV_XS_MAX (read once: this is decode's hottest
// launch) for an A/B. Session 26's profile of the wide ring GEMV on 14336 x 4096 at one token put 17% of its stall
// samples on the barrier after the whole of x is staged (kernels/NOTES.md); 0 sends every call to the path that reads
// x through L1 instead (`dev/gemv_xs_ab.py`, one process per setting): slower at 1-2 tokens on every 8B decode
// shape (session 27), so the default stays.
int xs_max_bytes() {
  static const int bytes = [] {
    const char* env = std::getenv("QTOOL_GEMV_XS_MAX");
    return env ? std::atoi(env) : kXsMaxBytes;
  }();
  return bytes;
}

// Chunks per lane whose loads are issued together: 8 x 16 bytes covers K = 4096 int4 with 8 warps.
// With 4 groups per chunk (int4 g16, 2-/3-bit g32) the parameters take 4 registers per chunk, so fewer
// chunks. 2- and 3-bit chunks hold 128 k, so 4 of them cover K = 4096 with 8 warps (the whole stripe
// at that K, one DRAM round trip), and a deeper ring cost registers (3-bit: 108-128 with 8 chunks, 2
// blocks per SM) for nothing at K <= 4096.
// LEAN (gemv_variant 1): 4 chunks, and at most 64 registers (ptxas, sm_90: 56-64, no spills for one
// group per chunk), so 4 blocks fit an SM where 80 registers fit 3: 8192 rows are 512 blocks, 1.3 waves
// of 396 slots on the H200's 132 SMs but one wave of 528. 64 KB of weight loads in flight per SM
// instead of 96 KB, above the ~48 KB that DRAM latency asks for (NOTES.md, v4). Unmeasured.
// Session 30 measured 2 chunks in 48 registers and 5 blocks per SM (the loads over more warps, what made w8_gemv's
// fp8-block faster at 9-16 tokens): 8192 x 8192 W4 at one token 2.46x -> 2.07x bf16, no shape faster; withdrawn.
template <int BITS, int GPC, bool LEAN>  // code width, groups per chunk, gemv_variant 1
constexpr int batch_chunks() {
  return LEAN || GPC > 2 || is_low_bits(BITS) ? 4 : 8;
}

template <typename T,    // activation and output type: __half or __nv_bfloat16
          int BITS,      // weight code width: 2, 3, 4 or 8
          int GPC,       // groups per chunk: 1 (group >= chunk_k or per channel), 2 or 4
          bool XS,       // x staged in shared memory in fragment order (dynamic: m * xs_row_words(k_padded) words)
          bool LEAN,     // gemv_variant 1: 4 blocks per SM (see batch_chunks)
          int WARPS = kWarps>  // gemv_variant 2: 16 warps in the lean budget, 2 blocks per SM (kWideWarps)
__global__ void __launch_bounds__(WARPS * 32, LEAN ? 4 * kWarps / WARPS : 1) wo_gemv_kernel(const WoProblem p) {
  extern __shared__ uint4 xs_dyn[];  // XS only
  constexpr int SUB = chunk_subtiles(BITS);  // 16x16 subtiles per chunk
  constexpr int KC = chunk_k(BITS);  // k per chunk
  constexpr int SPG = SUB / GPC;     // subtiles per group
  constexpr int BATCH = batch_chunks<BITS, GPC, LEAN>();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;  // A: rows g, g + 8 of the stripe; B: token g, k pairs t, t + 4
  const int stripe = blockIdx.x;
  const int nchunks = p.w.k_padded / KC;

  // Group parameter of this lane: t = 0, 1 -> scale of row g / g + 8; t = 2, 3 -> zero point. Held in registers
  // (opaque): otherwise the compiler folds the lane's row offset back into every refill's address.
  const float* par = (t < 2 ? p.w.scale : p.w.zero);
  const bool has_par = par != nullptr;  // false for the zero lanes of a symmetric weight (zero = 0)
  if (!has_par) par = p.w.scale;
  par = opaque(par + stripe * kStripeRows + g + 8 * (t % 2));
  const uint32_t gstride = p.w.n_padded;  // between groups of the parameters; 32 bits suffice

  // B fragment: token g, words (k / 2) t and t + 4 of each 16-k subtile (staged: in fragment order). Lanes of
  // tokens >= m read token 0 again instead of predicated zeros: column n of an mma result depends on column n of B
  // only, those columns are never stored, and the loads hit the same L1 lines as token 0's.
  // Set after the first weight ring is issued (opaque): the activation loads stay behind it.
  const uint32_t* x = nullptr;

  // Slot u of the ring holds chunk c0 + u * WARPS of the current pass. All slots are loaded before
  // any math; after the math of slot u, it is refilled with the same slot of the next pass (the
  // chunk WARPS * BATCH further), so up to BATCH loads per lane stay in flight across passes without
  // a second set of registers. Slots are loaded in increasing chunk order, each WARPS chunks after the last, so
  // the next load's code address and k are running values (session 26's SASS spent ~24 instructions of 64-bit
  // address arithmetic per refill; now ~10). A slot past the end is never read (the math stops at nchunks).
  LaneChunk<BITS> packed[BATCH];
  float prm[BATCH][GPC] = {};  // the zero lanes of a symmetric weight keep these zeros
  const uint4* next_codes = reinterpret_cast<const uint4*>(p.w.qweight) +
                            (static_cast<size_t>(stripe) * nchunks + warp) * chunk_vecs(BITS) + lane;
  int next_k = warp * KC;
  auto load_next = [&](int u) {  // the next chunk's codes and parameters into slot u
    if (next_k < p.w.k_padded) {
      packed[u].load_lane(next_codes, lane);
#pragma unroll
      for (int gi = 0; gi < GPC; ++gi) {
        const uint32_t grp = static_cast<uint32_t>(next_k + gi * (KC / GPC)) >> p.w.group_shift;
        if (has_par) prm[u][gi] = __ldg(par + grp * gstride);
      }
    }
    next_codes += WARPS * chunk_vecs(BITS);
    next_k += WARPS * KC;
  };
  // The chunk's activations (KC / 2 words of token g; this lane's x is offset by t) into L1, so the
  // math finds them there instead of waiting for L2 after the weights arrive. First and last word:
  // the KC / 2 words may straddle two lines.
  auto prefetch_x = [&](int c) {
    if (!XS && c < nchunks) {
      prefetch_l1(x + c * (KC / 2));
      prefetch_l1(x + c * (KC / 2) + (KC / 2 - 4));
    }
  };

#pragma unroll
  for (int u = 0; u < BATCH; ++u) load_next(u);
  pdl_wait_then_release();  // x, bias and y only past this point (pdl.cuh)
  if constexpr (XS) {
    stage_x_fragment_order<SUB, WARPS>(p, xs_dyn);
    x = reinterpret_cast<const uint32_t*>(xs_dyn) + (g < p.m ? g : 0) * xs_row_words(p.w.k_padded) + t * 2 * SUB;
  } else {
    x = opaque(static_cast<const uint32_t*>(p.x)) + (g < p.m ? g : 0) * (p.w.k_padded / 2) + t;
  }
#pragma unroll
  for (int u = 0; u < BATCH; ++u) prefetch_x(warp + u * WARPS);
  if constexpr (XS) __syncthreads();

  float acc[4] = {};  // C fragment: (row g, token 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)
  for (int c0 = warp; c0 < nchunks; c0 += WARPS * BATCH) {
#pragma unroll
    for (int u = 0; u < BATCH; ++u) {
      const int c = c0 + u * WARPS;
      if (c >= nchunks) break;  // warp-uniform; later slots and passes are past the end too
      uint32_t w[4];
      words_of(packed[u].lo, w);
      const uint32_t hi[2] = {packed[u].hi.x, packed[u].hi.y};  // 3-bit only
      float gp[GPC];
#pragma unroll
      for (int gi = 0; gi < GPC; ++gi) gp[gi] = prm[u][gi];
      // The chunk's activations. XS: the lane's B registers, subtile j at words 2j, 2j + 1 (fragment order);
      // else token g's row, subtile j at words 8j + t, 8j + t + 4 (x already offset by t).
      const uint32_t* xc = x + c * (KC / 2);
      uint4 bv;  // XS: the B registers of subtiles j and j + 1 (j even)
#pragma unroll
      for (int gi = 0; gi < GPC; ++gi) {
        // The quad's parameters by width-4 shuffles: the source lane is an immediate (no lane arithmetic).
        const float s0 = __shfl_sync(0xffffffffu, gp[gi], 0, 4);
        const float s1 = __shfl_sync(0xffffffffu, gp[gi], 1, 4);
        const float zf[2] = {kCodeOffset<T, BITS> + __shfl_sync(0xffffffffu, gp[gi], 2, 4),
                             kCodeOffset<T, BITS> + __shfl_sync(0xffffffffu, gp[gi], 3, 4)};
        uint32_t zp[2] = {0u, 0u};
        if constexpr (!kViaFloat<T, BITS>) {
          zp[0] = float_to_pair(zf[0], T{});
          zp[1] = float_to_pair(zf[1], T{});
        }
        // This group's sum of (q - z) * x. (Two accumulators, so that consecutive mma do not wait on
        // each other, measured no faster on the H100: NOTES.md, v4.)
        float d[4] = {};
        if constexpr (XS) {
          staged_group_sum<T, BITS, SPG>(w, hi, gi, zf, zp, xc, bv, d);
        } else {
#pragma unroll
          for (int jj = 0; jj < SPG; ++jj) {
            const int j = gi * SPG + jj;
            uint32_t a[4];
            a_fragment_any<T, BITS>(w, hi, j, zf, zp, a);
            mma_16816<T>(d, a, __ldg(xc + 8 * j), __ldg(xc + 8 * j + 4));
          }
        }
        acc[0] = fmaf(s0, d[0], acc[0]);
        acc[1] = fmaf(s0, d[1], acc[1]);
        acc[2] = fmaf(s1, d[2], acc[2]);
        acc[3] = fmaf(s1, d[3], acc[3]);
      }
      load_next(u);
      prefetch_x(c + WARPS * BATCH);
    }
  }

  prefetch_next_layer(p, WARPS * 32);  // all our weight loads have landed

  // Sum the warps (each holds every row and token of the stripe for its chunks), then the epilogue.
  __shared__ float partial[WARPS][kStripeRows][kMaxGemvTokens];
  partial[warp][g][2 * t] = acc[0];
  partial[warp][g][2 * t + 1] = acc[1];
  partial[warp][g + 8][2 * t] = acc[2];
  partial[warp][g + 8][2 * t + 1] = acc[3];
  __syncthreads();
  if (threadIdx.x < p.m * kStripeRows) {
    const int m = threadIdx.x / kStripeRows, r = threadIdx.x % kStripeRows;
    const int n = stripe * kStripeRows + r;
    if (n < p.w.n) {
      float v = bias_at(opaque(p.bias), n);
#pragma unroll
      for (int i = 0; i < WARPS; ++i) v += partial[i][r][m];
      store(static_cast<T*>(p.y) + static_cast<size_t>(m) * p.w.n + n, activate(v, p.act));
    }
  }
}

template <typename T, int BITS, int GPC, bool XS, bool LEAN = false, int WARPS = kWarps>
void launch_variant(const WoProblem& p,     // the problem
                    int smem,               // dynamic shared memory bytes (XS: the staged x)
                    cudaStream_t stream) {  // the caller's stream
  const dim3 grid(p.w.n_padded / kStripeRows), block(WARPS * 32);
  auto* kernel = wo_gemv_kernel<T, BITS, GPC, XS, LEAN, WARPS>;
  // Above 48 KB in all (the static partial sums count too) a kernel must opt in; cheap, per device, every time.
  constexpr int kStaticBytes = WARPS * kStripeRows * kMaxGemvTokens * 4;  // wo_gemv_kernel's `partial`
  if (smem + kStaticBytes > (48 << 10)) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  }
  launch_maybe_pdl(kernel, p.pdl, grid, block, smem, stream, p);
}

template <typename T,    // activation and output type
          int BITS>      // weight code width
void launch_typed(const WoProblem& p,     // the problem, 1 <= p.m <= kMaxGemvTokens
                  cudaStream_t stream) {  // the caller's stream
  // Groups per chunk: chunk_k is 128 = 2^7 (2-, 3-bit), 64 = 2^6 (int4) or 32 = 2^5 (int8) k; groups are
  // >= min_group = 16 (32 for 2-, 3-bit) k (ops.cpp), so at most 4 per chunk.
  constexpr int chunk_shift = BITS == 8 ? 5 : BITS == 4 ? 6 : 7;
  const int gpc = p.w.group_shift >= chunk_shift ? 1 : 1 << (chunk_shift - p.w.group_shift);
  const int xs_bytes = p.m * xs_row_words(p.w.k_padded) * 4;
  const bool xs = xs_bytes <= xs_max_bytes();  // else the v2 path: x read from global memory
  if (gpc == 1 && p.gemv_variant == 2) {
    xs ? launch_variant<T, BITS, 1, true, true, kWideWarps>(p, xs_bytes, stream)
       : launch_variant<T, BITS, 1, false, true, kWideWarps>(p, 0, stream);
  } else if (gpc == 1 && p.gemv_variant == 1) {
    xs ? launch_variant<T, BITS, 1, true, true>(p, xs_bytes, stream)
       : launch_variant<T, BITS, 1, false, true>(p, 0, stream);
  } else if (gpc == 1) {
    xs ? launch_variant<T, BITS, 1, true>(p, xs_bytes, stream) : launch_variant<T, BITS, 1, false>(p, 0, stream);
  } else if (gpc == 2 && xs && p.gemv_variant != 0 && BITS != 3) {
    // Two groups per chunk (W4 g32, W8 g16, W2 g64) in the lean budgets too (64 registers, no spills; 3-bit g64
    // spills 16 bytes there, so it keeps the default). Before, they ran 8-warp blocks of ~80 registers everywhere:
    // W2 g64 on 14336 x 4096 at one token 13.8 us; with this launch 10.3 us (session 28, 2.28x -> 3.10x bf16).
    if constexpr (BITS != 3) {
      p.gemv_variant == 2 ? launch_variant<T, BITS, 2, true, true, kWideWarps>(p, xs_bytes, stream)
                          : launch_variant<T, BITS, 2, true, true>(p, xs_bytes, stream);
    }
  } else if (gpc == 2) {
    xs ? launch_variant<T, BITS, 2, true>(p, xs_bytes, stream) : launch_variant<T, BITS, 2, false>(p, 0, stream);
  } else if constexpr (BITS != 8) {  // int4 g16, 2-/3-bit g32; int8 chunks hold at most 2 groups of 16
    xs ? launch_variant<T, BITS, 4, true>(p, xs_bytes, stream) : launch_variant<T, BITS, 4, false>(p, 0, stream);
  }
}

}  // namespace

void launch_wo_gemv(const WoProblem& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == ScalarKind::kBFloat16;
  switch (p.w.num_bits) {
    case 2:
      bf16 ? launch_typed<__nv_bfloat16, 2>(p, stream) : launch_typed<__half, 2>(p, stream);
      break;
    case 3:
      bf16 ? launch_typed<__nv_bfloat16, 3>(p, stream) : launch_typed<__half, 3>(p, stream);
      break;
    case 4:
      bf16 ? launch_typed<__nv_bfloat16, 4>(p, stream) : launch_typed<__half, 4>(p, stream);
      break;
    default:
      bf16 ? launch_typed<__nv_bfloat16, 8>(p, stream) : launch_typed<__half, 8>(p, stream);
  }
}

}  // namespace qtool
