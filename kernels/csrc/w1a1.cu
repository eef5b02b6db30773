// W1A1 (XNOR-Net, Rastegari et al. 2016): activations binarized per token, times 1-bit weights, on the
// b1 tensor cores (issue 21).
//
// binarize (binarize.cu) turns x into sign bits, a scale per token and popcounts per group;
// w1a1_gemm (here): mma.sync.m16n8k256 with .and.popc. ptxas for sm_90 expands .xor.popc into more
// instructions (the same 4-register mma compiles to 48 instructions with XOR against 32 with AND;
// on sm_80 both are 32), so the product of +-1 values a = 2 abit - 1, b = 2 bbit - 1 over a group of
// K_g valid bits comes from the AND count: sum a b = 4 popc(abit & bbit) - 2 popc(abit) - 2 popc(bbit) + K_g.
// Padding bits are 0 in both operands, so they add nothing to any count, and K_g counts only valid k.
// popc(abit) per token and group comes from binarize; the weight terms are folded into one float per
// output feature (cterm, kernels/binary.py). The integer sum is exact; scales are applied in float32.
//
// Tiling per channel: block 128 x 128 (tokens x features), 8 warps of 64 x 32, two blocks per SM; k in stages of
// 1024 bits through shared memory with cp.async, 2 stages (other shapes: launch_per_channel); grouped: block
// 128 x 256 / 64 x 128, 512-bit stages, 4 in flight; fragments via ldmatrix (a b1 fragment of
// m16n8k256 is an 8 x 128-bit matrix per register: the b16 ldmatrix layout). Groups of >= 256 k are
// whole mma steps (their integer sums are scaled at the group's last step); groups of 32..128 split
// each step with masked B fragments (one mma per group), a slower path kept for correctness.
#include <cstdlib>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "w1_kernels.h"
#include "wo_common.cuh"

namespace qtool {
namespace {

// --- GEMM ---------------------------------------------------------------------------------------

constexpr int kWarpsM = 2, kWarpsN = 4;  // warp grid of a block
// Per stage and row KC 16-byte chunks of k (4: 512 bits = 2 mma steps per barrier; 8: 1024 bits = 4 steps), in a
// cp.async pipeline STAGES deep.

// d += popc(a & b) over 256 k; fragments as in the PTX ISA for mma.m16n8k256 (.b1): a0 / a2 = row g,
// k 32t..32t+31 / 128 + 32t.., a1 / a3 the same for row g + 8; b0 / b1 = column g at the same k.
__device__ inline void mma_b1(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared-memory tile rows are KC 16-byte chunks: with 64-byte rows chunk c of row r sits at c ^ ((r / 2) % 4), with
// 128-byte rows at c ^ (r % 8), so the 8 row addresses of an ldmatrix (rows r..r+7, same logical chunk) hit 8
// distinct 16-byte bank groups.
template <int KC>
__device__ inline int swizzle(int row, int chunk) {
  static_assert(KC == 4 || KC == 8, "rows of 64 or 128 bytes");
  return KC == 4 ? row * 4 + (chunk ^ ((row >> 1) & 3)) : row * 8 + (chunk ^ (row & 7));
}

template <typename Out>
__device__ inline void store_out(Out* y, int n, int n_total, float v0, float v1) {  // (n, n + 1) of a row
  if constexpr (std::is_same_v<Out, float>) {
    if (n_total % 2 == 0) {
      *reinterpret_cast<float2*>(y + n) = make_float2(v0, v1);
      return;
    }
    y[n] = v0;
    if (n + 1 < n_total) y[n + 1] = v1;
  } else {
    if (n_total % 2 == 0) {
      *reinterpret_cast<uint32_t*>(y + n) = float2_to_pair(v0, v1, Out{});
      return;
    }
    store(y + n, v0);
    if (n + 1 < n_total) store(y + n + 1, v1);
  }
}

template <typename Out,  // __half, __nv_bfloat16 or float
          int WM,        // 16-row (token) fragments per warp
          int WN,        // 8-column (feature) fragments per warp, even
          int SUB,       // groups per 256-k step: 1 (per channel or groups of >= 256), 2, 4 or 8
          bool GROUPED,  // scales per group (else one per row, applied once at the end)
          int KC, int STAGES, int MINB>  // chunks per row and stage, pipeline depth, blocks per SM (registers)
__global__ void __launch_bounds__(kWarpsM * kWarpsN * 32, MINB) w1a1_gemm_kernel(const W1A1Problem p) {
  constexpr int BM = kWarpsM * WM * 16, BN = kWarpsN * WN * 8;
  constexpr int kThreads = kWarpsM * kWarpsN * 32;
  extern __shared__ uint4 smem[];
  uint4* sa = smem;                                // [STAGES][BM * KC]
  uint4* sb = smem + STAGES * BM * KC;             // [STAGES][BN * KC]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int wm0 = (warp / kWarpsN) * WM * 16, wn0 = (warp % kWarpsN) * WN * 8;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int row_words = p.k_padded / 32;
  const int ktiles = p.k_padded / (KC * 128);  // the launcher takes KC = 8 only where k_padded % 1024 == 0
  const uint4* xa = reinterpret_cast<const uint4*>(p.xbits + static_cast<size_t>(m0) * row_words);
  const uint4* wb = reinterpret_cast<const uint4*>(p.wbits + static_cast<size_t>(n0) * row_words);
  const int row_vecs = row_words / 4;

  // Thread i copies chunk c0 = i % KC of rows r0 = i / KC, r0 + kPassRows, ...: its addresses are computed once
  // here, and a stage adds constants (the swizzle depends on row % 8 only and kPassRows is a multiple of 8). The
  // row / chunk arithmetic per copy and stage it replaces was most of the k loop's instructions (SASS, session 17:
  // ~300 integer instructions per stage against 64 mma per warp; Nsight: issue-bound, "wait" and "not selected").
  constexpr int kPassRows = kThreads / KC;
  static_assert(kPassRows % 8 == 0 && (BM * KC) % kThreads == 0 && (BN * KC) % kThreads == 0, "whole passes");
  const int r0 = threadIdx.x / KC, c0 = threadIdx.x % KC;
  const int s0 = swizzle<KC>(r0, c0);
  const uint4* xa0 = xa + static_cast<size_t>(r0) * row_vecs + c0;
  const uint4* wb0 = wb + static_cast<size_t>(r0) * row_vecs + c0;
  const size_t pass_vecs = static_cast<size_t>(kPassRows) * row_vecs;
  auto load_stage = [&](int stage, int kt) {  // every row exists: m_padded, n_padded are tile multiples
#pragma unroll
    for (int j = 0; j < BM * KC / kThreads; ++j) {
      cp_async_16(sa + stage * BM * KC + s0 + j * kPassRows * KC, xa0 + j * pass_vecs + kt * KC, true);
    }
#pragma unroll
    for (int j = 0; j < BN * KC / kThreads; ++j) {
      cp_async_16(sb + stage * BN * KC + s0 + j * kPassRows * KC, wb0 + j * pass_vecs + kt * KC, true);
    }
  };

  int pc[WM][WN][4] = {};      // AND-popcounts of the current group (all of k per channel)
  float acc[GROUPED ? WM : 1][GROUPED ? WN : 1][4] = {};  // sum over finished groups of scale * (4 P - 2 A)
  const int steps_per_group = p.group_size >= 256 ? p.group_size / 256 : 1;
  const int last_step = p.k_padded / 256 - 1;

  // Adds scale * (4 P - 2 A) of group grp to acc (groups past the last hold only padding: skipped).
  auto finish_group = [&](int grp, int (&d)[WM][WN][4]) {
    if constexpr (GROUPED) {
      if (grp < p.groups) {
        float2 ws[WN];
#pragma unroll
        for (int ni = 0; ni < WN; ++ni) {
          ws[ni] = __ldg(reinterpret_cast<const float2*>(p.wscale + static_cast<size_t>(grp) * p.n_padded + n0 + wn0 +
                                                         8 * ni + 2 * t));
        }
#pragma unroll
        for (int mi = 0; mi < WM; ++mi) {
          const int32_t* ap = p.xpopc + static_cast<size_t>(grp) * p.m_padded + m0 + wm0 + 16 * mi + g;
          const int a0 = __ldg(ap), a1 = __ldg(ap + 8);
#pragma unroll
          for (int ni = 0; ni < WN; ++ni) {
            acc[mi][ni][0] = fmaf(ws[ni].x, static_cast<float>(4 * d[mi][ni][0] - 2 * a0), acc[mi][ni][0]);
            acc[mi][ni][1] = fmaf(ws[ni].y, static_cast<float>(4 * d[mi][ni][1] - 2 * a0), acc[mi][ni][1]);
            acc[mi][ni][2] = fmaf(ws[ni].x, static_cast<float>(4 * d[mi][ni][2] - 2 * a1), acc[mi][ni][2]);
            acc[mi][ni][3] = fmaf(ws[ni].y, static_cast<float>(4 * d[mi][ni][3] - 2 * a1), acc[mi][ni][3]);
          }
        }
      }
    }
  };

#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < ktiles) load_stage(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // stage kt landed for every thread; stage kt - 1 is free to overwrite
    if (kt + STAGES - 1 < ktiles) load_stage((kt + STAGES - 1) % STAGES, kt + STAGES - 1);
    cp_async_commit();
    const uint4* ta = sa + (kt % STAGES) * BM * KC;
    const uint4* tb = sb + (kt % STAGES) * BN * KC;
#pragma unroll
    for (int ks = 0; ks < KC / 2; ++ks) {
      const int q = lane / 8, r8 = lane % 8;
      uint32_t a[WM][4], b[WN][2];
#pragma unroll
      for (int mi = 0; mi < WM; ++mi) {  // matrices: (rows 0-7, k lo), (8-15, lo), (0-7, hi), (8-15, hi)
        const int r = wm0 + 16 * mi + (q % 2) * 8 + r8;
        ldmatrix_x4(a[mi], ta + swizzle<KC>(r, 2 * ks + q / 2));
      }
#pragma unroll
      for (int np = 0; np < WN / 2; ++np) {  // matrices: (cols 0-7, k lo), (0-7, hi), (8-15, lo), (8-15, hi)
        const int r = wn0 + 16 * np + (q / 2) * 8 + r8;
        uint32_t v[4];
        ldmatrix_x4(v, tb + swizzle<KC>(r, 2 * ks + q % 2));
        b[2 * np][0] = v[0];
        b[2 * np][1] = v[1];
        b[2 * np + 1][0] = v[2];
        b[2 * np + 1][1] = v[3];
      }
      const int step = kt * (KC / 2) + ks;
      if constexpr (SUB == 1) {
#pragma unroll
        for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
          for (int ni = 0; ni < WN; ++ni) mma_b1(pc[mi][ni], a[mi], b[ni][0], b[ni][1]);
        }
        if (GROUPED && ((step + 1) % steps_per_group == 0 || step == last_step)) {
          finish_group(step / steps_per_group, pc);
#pragma unroll
          for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
            for (int ni = 0; ni < WN; ++ni) {
#pragma unroll
              for (int e = 0; e < 4; ++e) pc[mi][ni][e] = 0;
            }
          }
        }
      } else {
        // Group s of this step is k [s * 256 / SUB, (s + 1) * 256 / SUB): b0 covers k 32t.., b1 128 + 32t..
        const int sub0 = (32 * t) / (256 / SUB), sub1 = (128 + 32 * t) / (256 / SUB);
#pragma unroll
        for (int s = 0; s < SUB; ++s) {
#pragma unroll
          for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
            for (int ni = 0; ni < WN; ++ni) {
              pc[mi][ni][0] = pc[mi][ni][1] = pc[mi][ni][2] = pc[mi][ni][3] = 0;
              mma_b1(pc[mi][ni], a[mi], sub0 == s ? b[ni][0] : 0u, sub1 == s ? b[ni][1] : 0u);
            }
          }
          finish_group(step * SUB + s, pc);
        }
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: y = x_scale * (acc + cterm) + bias, rows (tokens) < m. The row terms of this lane's 2 WM rows are
  // loaded once, the column terms once per column pair: written inside the row loop, the compiler reloaded them for
  // every row (the stores to y may alias them), 208 loads and 1800 instructions per thread against a k loop of
  // ~1450 at K = 8192 (SASS, session 17). xscale / xpopc hold m_padded rows and wscale / cterm n_padded columns, so
  // the loads need no bounds; bias holds n.
  Out* y = static_cast<Out*>(p.y);
  float xs[WM][2];
  int apop[WM][2];
#pragma unroll
  for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = m0 + wm0 + 16 * mi + g + 8 * half;
      xs[mi][half] = __ldg(p.xscale + row);
      apop[mi][half] = GROUPED ? 0 : __ldg(p.xpopc + row);
    }
  }
#pragma unroll
  for (int ni = 0; ni < WN; ++ni) {
    const int n = n0 + wn0 + 8 * ni + 2 * t;
    if (n >= p.n) continue;
    float ws[2], ct[2], bs[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      ws[e] = GROUPED ? 0.0f : __ldg(p.wscale + n + e);
      ct[e] = __ldg(p.cterm + n + e);
      bs[e] = bias_at(p.bias, n + e < p.n ? n + e : n);
    }
#pragma unroll
    for (int mi = 0; mi < WM; ++mi) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = m0 + wm0 + 16 * mi + g + 8 * half;
        if (row >= p.m) continue;
        float v[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float dot;
          if constexpr (GROUPED) {
            dot = acc[mi][ni][2 * half + e];
          } else {
            dot = ws[e] * static_cast<float>(4 * pc[mi][ni][2 * half + e] - 2 * apop[mi][half]);
          }
          v[e] = xs[mi][half] * (dot + ct[e]) + bs[e];
        }
        store_out(y + static_cast<size_t>(row) * p.n, n, p.n, v[0], v[1]);
      }
    }
  }
}

template <typename Out, int WM, int WN, int SUB, bool GROUPED, int KC = 4, int STAGES = 4, int MINB = 1>
void launch_gemm_variant(const W1A1Problem& p, cudaStream_t stream) {
  constexpr int BM = kWarpsM * WM * 16, BN = kWarpsN * WN * 8;
  const int smem = STAGES * (BM + BN) * KC * 16;
  auto kernel = w1a1_gemm_kernel<Out, WM, WN, SUB, GROUPED, KC, STAGES, MINB>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  const dim3 grid(p.n_padded / BN, p.m_padded / BM);
  kernel<<<grid, kWarpsM * kWarpsN * 32, smem, stream>>>(p);
}

// Per-channel tile shapes, A/B on the H200 (session 16, 8192 x 8192, W1A1 GEMM alone at 1024 / 4096 / 8192 tokens;
// the b1 mma.sync peak there is 19656 MAC/clk/SM at 32 warps per SM, benchmarks/bench_b1_mma.py):
//   1 = 128 x 256 tiles, 512 bits per stage, 4 stages, one block (8 warps) per SM: 59.2 / 216.1 / 424.3 us
//   2 = 1 with 1024 bits per stage, 3 stages (half the barriers per mma):          53.7 / 191.4 / 368.4 us
//   3 = 64 x 256 tiles in <= 128 registers, two blocks (16 warps) per SM:           56.5 / 199.6 / 384.7 us
//   4 = 3 with 1024 bits per stage, 2 stages:                                       50.4 / 171.7 / 326.3 us
//   5 = 128 x 128 tiles (warps of 64 x 32), otherwise 4 (next call, same build):    47.6 / 162.1 / 312.5 us
//                                                                     (shape 4 there: 50.4 / 170.5 / 326.6 us)
//   5 with a third stage (96 KB per block, two per SM; call 4):                         - / 167.8 / -  (5: 162.2)
//   6 = 5 with the tile staged through shared memory and 16-byte row stores (session 18, removed): GEMM 119.0 vs
//       119.4 us at 4096 tokens, the layer 3.16x vs 3.34x at 1024: the epilogue's stores were not the cost.
// Shape 5 runs (3 where k_padded % 1024 != 0); QTOOL_W1A1=1..5 forces one (2, 4, 5 need k_padded % 1024 == 0).
// At 4096 tokens shape 5 runs 275 G MAC in 162 us (~6500 MAC/clk/SM, a third of the mma peak); with each thread's
// copy addresses computed once (session 17) in 137 us, ~7700 MAC/clk/SM.
int forced_w1a1_shape() {
  static const int forced = [] {
    const char* env = std::getenv("QTOOL_W1A1");
    return env ? std::atoi(env) : 0;
  }();
  return forced;
}

template <typename Out>
void launch_per_channel(const W1A1Problem& p, cudaStream_t stream) {
  const bool long_stages = p.k_padded % 1024 == 0;
  switch (forced_w1a1_shape()) {
    case 1: return launch_gemm_variant<Out, 4, 8, 1, false>(p, stream);
    case 2:
      if (long_stages) return launch_gemm_variant<Out, 4, 8, 1, false, 8, 3, 1>(p, stream);
      return launch_gemm_variant<Out, 4, 8, 1, false>(p, stream);
    case 3: return launch_gemm_variant<Out, 2, 8, 1, false, 4, 4, 2>(p, stream);
    case 4:
      if (long_stages) return launch_gemm_variant<Out, 2, 8, 1, false, 8, 2, 2>(p, stream);
      break;
    default: break;
  }
  if (long_stages) return launch_gemm_variant<Out, 4, 4, 1, false, 8, 2, 2>(p, stream);
  launch_gemm_variant<Out, 2, 8, 1, false, 4, 4, 2>(p, stream);
}

template <typename Out>
void launch_gemm_typed(const W1A1Problem& p, cudaStream_t stream) {
  if (p.group_size <= 0) return launch_per_channel<Out>(p, stream);
  switch (p.group_size) {  // ops_w1.cpp admits 32, 64, 128 and multiples of 256
    case 32: return launch_gemm_variant<Out, 2, 4, 8, true>(p, stream);
    case 64: return launch_gemm_variant<Out, 2, 4, 4, true>(p, stream);
    case 128: return launch_gemm_variant<Out, 2, 4, 2, true>(p, stream);
    default: return launch_gemm_variant<Out, 2, 4, 1, true>(p, stream);
  }
}

}  // namespace

void launch_w1a1_gemm(const W1A1Problem& p, cudaStream_t stream) {
  switch (p.out) {
    case OutKind::kHalf: return launch_gemm_typed<__half>(p, stream);
    case OutKind::kBFloat16: return launch_gemm_typed<__nv_bfloat16>(p, stream);
    default: return launch_gemm_typed<float>(p, stream);
  }
}

}  // namespace qtool
