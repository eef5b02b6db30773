// Interface between ops.cpp (PyTorch-facing checks, compiled by the host compiler) and the
// weight-only CUDA kernels (.cu files, which include no PyTorch headers).
//
// Weight layout (written by kernels/layout.py, read by every kernel here):
//   qweight [n_padded / 16, k_padded / chunk_k, chunk_vecs, 4] int32. One "stripe" is 16 weight rows;
//   one "chunk" is the k-range one lane covers with one 16-byte load: 128 k for 2- and 3-bit, 64 k for
//   int4, 32 for int8.
//   Lane l of a warp loads element [stripe, chunk, l, :] and finds there exactly its A fragments of
//   mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16") for the 16x16 subtiles of the chunk:
//   register p (0..3) of lane l = two consecutive k of row 8 * (p & 1) + l / 4, starting at
//   k = 2 * (l % 4) + 8 * (p / 2). Codes are unsigned (q + 8 or q + 128); wo_decode.cuh says where
//   each code sits inside a word. A warp reading one chunk of a stripe reads 512 contiguous bytes.
//   2-bit: 8 subtiles per chunk, 2 per word. 3-bit: the low 2 bits of each code are a 2-bit chunk (32
//   rows of 16 bytes), followed by the high bits: 16 more rows (256 bytes) where lane l's 8 bytes start at
//   byte 8l, so the warp still reads 768 contiguous bytes per chunk, the low plane with aligned 16-byte
//   loads and the high plane with 8-byte loads (chunk_vecs = 48 rows in all); wo_decode.cuh,
//   low_bit_nibbles, merges the planes. 3 bits per weight, against 4 for a single 3-bit field padded.
//   scale, zero [groups_padded, n_padded] float32: group-major, so the 16 rows a warp needs for one
//   group are 64 contiguous bytes. Padding rows have scale 0; padding k have code = zero point.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace qtool {

enum class ScalarKind { kHalf, kBFloat16 };
enum class Activation { kNone, kSilu, kGelu };

constexpr int kStripeRows = 16;  // weight rows per stripe: the M of mma.m16n8k16
constexpr int kPadK = 64;        // K is padded to a multiple of this at repack time (pad_k: 128 for 2-/3-bit)
constexpr int kMaxGemvTokens = 8;

// 2- and 3-bit codes: 128-k chunks of 8 subtiles (the low 2 bits of each code in the 16-byte load).
constexpr bool is_low_bits(int bits) { return bits == 2 || bits == 3; }

// k covered by one lane's 16-byte load: 4096 / bits codes per warp over 16 rows (low bits: 2-bit codes).
constexpr int chunk_k(int bits) { return is_low_bits(bits) ? 128 : 256 / bits; }

// K of a packed weight is a multiple of this: whole chunks (kernels/layout.py, pad_k).
constexpr int pad_k(int bits) { return chunk_k(bits) > kPadK ? chunk_k(bits) : kPadK; }

// 16x16 subtiles per chunk.
constexpr int chunk_subtiles(int bits) { return chunk_k(bits) / 16; }

// 16-byte rows of qweight per chunk: one per lane, and 16 more for the high bits of 3-bit codes.
constexpr int chunk_vecs(int bits) { return bits == 3 ? 48 : 32; }

// Smallest group the kernels take: 16 k, or 32 for 128-k chunks (at most 4 groups per chunk).
constexpr int min_group(int bits) { return is_low_bits(bits) ? 32 : 16; }

struct PackedWeightView {
  const int32_t* qweight;  // [n_padded / 16, k_padded / chunk_k, chunk_vecs, 4] fragment-ordered codes
  const float* scale;      // [groups_padded, n_padded]
  const float* zero;       // [groups_padded, n_padded] zero points; nullptr when symmetric
  int n;                   // output features
  int n_padded;            // n rounded up to 16
  int k_padded;            // input features rounded up to pad_k(num_bits)
  int group_shift;         // log2(group size); 31 when one group spans the row (per channel)
  int num_bits;            // 2, 3, 4 or 8
};

// The most of a next layer's weight a GEMV pulls into L2 (WoProblem::prefetch, W8GemvProblem::prefetch): how much
// to ask for is Python's (quantize/linear.py, link_prefetch hands a view of that many bytes); this cap only keeps a
// mistaken caller from asking for more than the L2 holds (60 MB on the H200).
constexpr long long kPrefetchCapBytes = 64LL << 20;

// Bytes of a prefetch range of `bytes`: capped, and a multiple of 16 (the bulk prefetch's granularity).
constexpr long long prefetch_range_bytes(long long bytes) {
  return (bytes < kPrefetchCapBytes ? bytes : kPrefetchCapBytes) & ~15LL;
}

struct WoProblem {
  const void* x;       // [m, k_padded] fp16/bf16 activations, row-major, 16-byte aligned
  PackedWeightView w;  // the weight
  const float* bias;   // [n] float32, or nullptr
  void* y;             // [m, n] output in x's dtype
  float* workspace;    // wo_gemm's split-K partial sums: [m, n] zeroed float32, or [splits, m, n] with
                       // split_counters; else nullptr
  int m;               // tokens
  ScalarKind dtype;    // dtype of x and y
  Activation act;      // epilogue after the bias
  // wo_gemv only: bytes to pull into L2 once this kernel's own weight loads are done, normally the start of the
  // next layer's packed weight (quantize/linear.py, link_prefetch), or nullptr / 0.
  const void* prefetch = nullptr;
  long long prefetch_bytes = 0;
  // wo_gemv only (wo_gemv.cu): 0 the default; 1 "lean": at most 64 registers, so 4 blocks per SM instead
  // of 3, with a ring of 4 chunks per lane instead of 8 (weights with one group per chunk; others run 0).
  int gemv_variant = 0;
  // wo_gemv's ring GEMV and wo_gemm (QTOOL_WO_GEMM_PDL): launched with programmatic dependent launch (pdl.cuh), so
  // its first weight loads may run before the kernel before it has finished. Only for weights no kernel writes
  // while they are in use (the GEMV op's variant + kPdlFlag, which kernels/weight_only.py passes for prepared
  // layers; wo_gemm's knob is an A/B for prepared layers).
  bool pdl = false;
  // wo_planes_gemv only: x as the planes x_planes wrote ([2m, k_padded] int8, plane_slot order) and each token's
  // scale ([m] float32); x is unused then. nullptr: the planes kernel stages them from x itself.
  const int8_t* planes = nullptr;
  const float* xscale = nullptr;
  // wo_gemm only: a counter per output tile (wo_gemm_tiles), zero between launches (each launch leaves them zero):
  // the splits store their partials in slots and the last one adds them in split order (no memset, no second
  // kernel, the same bits on every run). nullptr: atomicAdd into the zeroed workspace, then finish_split_k.
  int* split_counters = nullptr;
  // wo_gemm only, with the atomic adds: the workspace is the kept sums (wo_gemm_kept_sums), zero between launches,
  // so finish_split_k (or with split_counters, the last split of each tile) zeroes each sum it reads (no at::zeros
  // node before the launch).
  bool kept_sums = false;
  // wo_planes_gemv only (planes.cuh, store_stripes): the rows are a gated MLP's gate/up interleaved by 8 (each
  // stripe 8 gate rows, then their 8 up rows: quantize/mlp.py) and y [m, n / 2] = silu(gate) * up.
  bool gated_out = false;
};
// Added to wo_gemv's variant argument: the weight is static (prepared), PDL allowed.
constexpr int kPdlFlag = 16;
// Added to wo_planes_gemv's variant: the rows are interleaved gate/up, y = silu(gate) * up (WoProblem::gated_out).
constexpr int kGatedFlag = 32;

// Tensor-core GEMV for 1 <= m <= kMaxGemvTokens (wo_gemv.cu): one 16-row stripe per block, x staged in
// shared memory, a ring of loads (gemv_variant 0, 1, 2).
void launch_wo_gemv(const WoProblem& p, cudaStream_t stream);

// gemv_variant 3, "stream" (wo_stream.cu): 1 <= m <= kMaxStreamTokens, stripes of a block sharing x read
// through L1, the loads of several chunks issued before their math.
constexpr int kMaxStreamTokens = 32;
void launch_wo_stream(const WoProblem& p, cudaStream_t stream);

// gemv_variants 4, 5 and 6, "planes" (wo_planes.cu): symmetric 4-bit weights with groups of >= 64 k (or per
// channel), 1 <= m <= kPlanesMaxTokens, x as two int8 planes on the int8 tensor cores; one 16-row stripe per block
// (4), two (5) or four (6) sharing the staged planes. wo_planes_gemv: the same with the planes given (p.planes).
constexpr int kPlanesMaxTokens = 4;
// wo_planes_gemv (given planes) past 4 tokens: 2 or 4 n-tiles of the mma (4 tokens each) per A fragment, each
// n-tile's B from L2 / L1 (session 39: two n-tiles routed at 5-8 tokens; four lose to L2 bandwidth, kernels/NOTES.md).
constexpr int kPlanesGivenMaxTokens = 16;
constexpr int planes_ntiles(int m) { return m <= 4 ? 1 : m <= 8 ? 2 : 4; }
constexpr int kPlanesPadBytes = 64;  // plane rows start 16 banks apart: the two planes' B loads do not collide
constexpr int kPlanesMaxBytes = 96 << 10;  // the staged planes' shared memory, as the ring GEMV's x (kXsMaxBytes)

// Bytes per staged plane row (one token's high or low plane).
constexpr int plane_row_bytes(int k_padded) { return k_padded + kPlanesPadBytes; }
constexpr int planes_smem_bytes(int m, int k_padded) { return 2 * m * plane_row_bytes(k_padded); }

// Byte of a plane row holding x's k: chunk k / 64 (64 bytes), lane t's 16 bytes of it, subtile (k % 64) / 16's four
// bytes, slot b = 2 * (k % 2) + (k % 16) / 8 with t = (k % 8) / 2: lane t's word of subtile j holds k = 16j + (2t,
// 2t + 8, 2t + 1, 2t + 9), the k of its A register in the wo layout (wo_decode.cuh, int4_word_s8x16).
constexpr int plane_slot(int k) {
  return 64 * (k / 64) + 16 * ((k % 8) / 2) + 4 * ((k % 64) / 16) + 2 * (k % 2) + (k % 16) / 8;
}

// Whether variant 4 takes this problem (ops.cpp refuses the rest with a message).
constexpr bool planes_take(int bits, bool symmetric, int group_shift, int m, int k_padded) {
  return bits == 4 && symmetric && group_shift >= 6 && m >= 1 && m <= kPlanesMaxTokens &&
         planes_smem_bytes(m, k_padded) <= kPlanesMaxBytes;
}
void launch_wo_planes(const WoProblem& p, int stripes, cudaStream_t stream);  // stripes: 1, 2 or 4 per block
// wo_planes_gemv variant 3, "tile" (wo_planes_tile.cu; session 39, unmeasured): 4-bit, 1 <= m <=
// kPlanesTileMaxTokens (kPlanesTileMaxAsymTokens with zero points), the planes staged in shared memory for the 128
// rows of a block, split-K over a cluster (sm_90).
constexpr int kPlanesTileMaxTokens = 32;
constexpr int kPlanesTileMaxAsymTokens = 16;
cudaError_t launch_wo_planes_tile(const WoProblem& p, int num_sms, cudaStream_t stream);
// wo_gemv variant 7, "split" (wo_split.cu): 4-bit weights with groups >= 64 (or per channel), 1 <= m <=
// kSplitMaxTokens (kSplitMaxAsymTokens with zero points), x quantized to int8 planes per K slice inside each block,
// split-K over a cluster (sm_90). wo_gemv's variant + kSplitsUnit * s forces s splits (A/Bs; 0: the plan's).
constexpr int kSplitVariant = 7;
constexpr int kSplitMaxTokens = 32;
constexpr int kSplitMaxAsymTokens = 16;
constexpr int kSplitsUnit = 32;
cudaError_t launch_wo_split(const WoProblem& p, int forced_splits, int num_sms, cudaStream_t stream);
// Dynamic shared memory of that launch (the op refuses what the device cannot give).
int wo_split_smem_bytes(int m, int k_padded, int n_padded, bool asym, int forced_splits, int num_sms);
// The same with the planes given for symmetric 2- and 3-bit codes, groups >= 64 (wo_planes_low.cu; unmeasured).
void launch_wo_planes_low(const WoProblem& p, int stripes, cudaStream_t stream);

// x [m, k_padded] -> planes [2m, k_padded] int8 (rows 2r / 2r + 1: token r's high / low plane, plane_slot order) and
// xscale [m] float32, s = max |x_r| / 127, x = s hi + (s / 254) lo within s / 508 (wo_planes.cu: one block per token).
struct XPlanesProblem {
  const void* x;
  int8_t* planes;
  float* xscale;
  int m;
  int k_padded;
  ScalarKind dtype;
  bool pdl;
  bool natural = false;  // bytes in k order (w8_planes_gemv), not plane_slot's
  bool gated = false;    // x is a gated MLP's [m, 2 k_padded] = [gate | up]: the planes of silu(gate) * up
};
void launch_x_planes(const XPlanesProblem& p, cudaStream_t stream);
// norm_planes (norm_planes.cu): x [m, k] (plus residual [m, k] when given: sum = T(residual + x) written) ->
// the planes [2m, k] and scales [m] of n = T(rms_norm(sum) * weight), as x_planes would write them for n.
struct NormPlanesProblem {
  const void* x;         // [m, k] of dtype
  const void* residual;  // [m, k] or nullptr (then the norm is of x, and sum is not written)
  const void* weight;    // [k] of dtype
  void* sum;             // [m, k]: residual + x, the layer's next residual (with residual only)
  int8_t* planes;
  float* xscale;
  int m;
  int k;  // a multiple of kPadK, at most kNormPlanesMaxK
  float eps;
  ScalarKind dtype;
  bool pdl;
  bool natural;
};
void launch_norm_planes(const NormPlanesProblem& p, cudaStream_t stream);
constexpr int kNormPlanesMaxK = 32768;  // 512 threads x 4 subtiles of 16 in registers

// The gated form holds the token in registers (x_planes_kernel, SUBS <= 4; at 4 subtiles, K > 16384, bf16 spills 40
// bytes at 128 registers: 70B's down projection, unmeasured).
constexpr int kXPlanesMaxGatedK = 32768;

// w8_planes_gemv (w8_planes.cu; prepared in session 37, unmeasured): y [m, n] = x W^T s_w + bias for int8 weights
// row-major [n, k] with one scale per row, x as x_planes' planes in k order (natural), 1 <= m <= kPlanesMaxTokens.
// Each lane's 16-byte loads of rows g and g + 8 are its A fragments as they are (no conversion), the planes its B,
// and the sums stay int32 over the whole row (|sum| <= 127 * 128 * k: k <= kW8PlanesMaxK).
constexpr int kW8PlanesMaxK = 1 << 17;
struct W8PlanesProblem {
  const int8_t* planes;  // [2m, k] int8, natural order
  const float* xscale;   // [m]
  const int8_t* w;       // [n, k] int8 codes, row-major, 16-byte aligned, k % 64 == 0
  const float* wscale;   // [n]
  const float* bias;     // [n] or nullptr
  void* y;               // [m, n] of dtype
  int m, n, k;
  ScalarKind dtype;
  bool pdl;
};
void launch_w8_planes(const W8PlanesProblem& p, int stripes, cudaStream_t stream);  // stripes per block: 1, 2, 4

// Tensor-core kernel for any m (wo_gemm.cu); tokens are processed in slices of up to 64.
// wo_gemm_splits() is the split-K factor for this problem on `num_sms` SMs: when it is > 1 the
// caller passes a zeroed workspace and the launcher adds the bias/activation pass, or the slots and
// counters of p.split_counters (wo_gemm_tiles() counters).
int wo_gemm_splits(const WoProblem& p, int num_sms);
int wo_gemm_tiles(const WoProblem& p);
int* wo_gemm_counters(int tiles, cudaStream_t stream);  // kept tile counters, or nullptr (wo_gemm.cu)
float* wo_gemm_kept_sums(size_t count, cudaStream_t stream);  // kept zeroed sums, or nullptr (wo_gemm.cu)
bool wo_gemm_pdl();  // QTOOL_WO_GEMM_PDL=1: wo_gemm launched with PDL (static weights; wo_gemm.cu)
void reload_wo_switches(cudaStream_t stream);  // QTOOL_WO_SPLIT / QTOOL_WO_GEMM_PDL read again (wo_gemm.cu)
void launch_wo_gemm(const WoProblem& p, int splits, cudaStream_t stream);

// v3 tensor-core kernel for small m (wo_gemm_v3.cu): a ring of weight loads per lane, x and the group
// parameters staged per block, split-K reduced inside a thread block cluster (`clusters`: sm_90+;
// without them it never splits). `variant` picks the design knobs compared on the GPU (NOTES.md):
// 0 the default, 1 the other ring depth (4 <-> 8 chunks), 2 no split-K, 3 twice the splits.
// Returns the launch status.
cudaError_t launch_wo_gemm_v3(const WoProblem& p, int variant, int num_sms, bool clusters, cudaStream_t stream);

// Dequantize to a dense [n, k_padded] matrix of `dtype` (dequant.cu), for cuBLAS at large m.
void launch_dequant(const PackedWeightView& w, ScalarKind dtype, void* out, cudaStream_t stream);

}  // namespace qtool
