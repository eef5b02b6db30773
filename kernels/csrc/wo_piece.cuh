// The staged pieces of wo_gemm_v3.cu (weights in a per-lane register ring; once shared with wo_gemm_v4,
// since removed: kernels/NOTES.md, "wo_gemm v4"): a block of kWarps warps owns a 128-row tile, one
// 16-row stripe per warp; K advances in 128-k pieces whose activations and group parameters a cp.async
// pipeline stages in shared memory; each lane keeps float32 sums per group and folds them into its
// accumulators, scaled, when the group changes (the numerics of wo_gemm.cu).
#pragma once

#include "wo_common.cuh"

namespace qtool {

constexpr int kWarps = 8;                        // stripes per block, one per warp
constexpr int kTileRows = kWarps * kStripeRows;  // 128 weight rows per block
constexpr int kPieceK = 128;                     // k per pipeline stage
constexpr int kRowStride = kPieceK + 8;          // staged x row (elements): +16 bytes, conflict-free ldmatrix
constexpr int kMinPiecesPerSplit = 2;            // a shorter split is all ramp and drain

// Groups of parameters one piece spans: 128 k over the group size, at least 1 (per channel: shift 31).
__host__ __device__ constexpr int groups_per_piece(int group_shift) { return group_shift >= 7 ? 1 : 1 << (7 - group_shift); }

// Where a block's piece lands: the stage's x [TOK][kRowStride] and parameters (scale [gpp][kTileRows],
// then zero, same shape, when asymmetric), and which part of the problem the block covers.
struct PieceStage {
  int tok0, tile_row0, shift, gpp, ngroups;
  bool asym;
};

// x and the group parameters of piece `piece` into one stage with cp.async (the caller commits). Tokens
// past m, k past k_padded, groups past ngroups and rows past n_padded are zero-filled.
template <typename T, int TOK>
__device__ void stage_x_and_params(const WoProblem& p, const PieceStage& b, const T* x, int piece, T* xd, float* pd) {
#pragma unroll 1  // registers: the copies need no ILP (cp.async does not block)
  for (int i = threadIdx.x; i < TOK * (kPieceK / 8); i += kWarps * 32) {
    const int r = i / (kPieceK / 8), col = (i % (kPieceK / 8)) * 8;
    const int tok = b.tok0 + r, k = piece * kPieceK + col;
    const bool valid = tok < p.m && k < p.w.k_padded;
    cp_async_16(xd + r * kRowStride + col, valid ? x + static_cast<size_t>(tok) * p.w.k_padded + k : x, valid);
  }
  const int g_first = (piece * kPieceK) >> b.shift, psegs = b.gpp * (kTileRows / 4);  // 16 bytes = 4 rows
#pragma unroll 1
  for (int i = threadIdx.x; i < psegs * (b.asym ? 2 : 1); i += kWarps * 32) {
    const int which = i / psegs, j = i % psegs;
    const int grp = g_first + j / (kTileRows / 4), r4 = (j % (kTileRows / 4)) * 4, row = b.tile_row0 + r4;
    const bool valid = grp < b.ngroups && row < p.w.n_padded;
    const float* src = (which ? p.w.zero : p.w.scale) + static_cast<size_t>(grp) * p.w.n_padded + row;
    cp_async_16(pd + (which * b.gpp + j / (kTileRows / 4)) * kTileRows + r4, valid ? src : p.w.scale, valid);
  }
}

// A lane's running sums: acc = sum over finished groups of scale * group sum; gacc = the current group.
template <typename T, int BITS, int MT>
struct GroupAccum {
  float acc[MT][4] = {};   // C fragment: rows lrow (i < 2) / lrow + 8, token 2 * (lane % 4) + i % 2 (+ 8 nt)
  float gacc[MT][4] = {};
  float s0 = 0.0f, s1 = 0.0f;  // scales of rows lrow / lrow + 8 in the current group
  float zf[2] = {0.0f, 0.0f};  // kCodeOffset + zero point of the two rows
  uint32_t zp[2] = {0u, 0u};   // the same as pairs of T
  int cur_grp = -1;

  __device__ void flush() {
#pragma unroll
    for (int nt = 0; nt < MT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[nt][i] = fmaf(i < 2 ? s0 : s1, gacc[nt][i], acc[nt][i]);
        gacc[nt][i] = 0.0f;
      }
  }

  // New group: flush, then the two rows' parameters from the stage (ps = scale of row lrow).
  __device__ void enter_group(int grp, const float* ps, int gpp, bool asym) {
    flush();
    s0 = ps[0];
    s1 = ps[8];
    zf[0] = kCodeOffset<T, BITS> + (asym ? ps[gpp * kTileRows] : 0.0f);
    zf[1] = kCodeOffset<T, BITS> + (asym ? ps[gpp * kTileRows + 8] : 0.0f);
    if constexpr (!kViaFloat<T, BITS>) {
      zp[0] = float_to_pair(zf[0], T{});
      zp[1] = float_to_pair(zf[1], T{});
    }
    cur_grp = grp;
  }

  // Subtile j of the lane's chunk (`words`) times the staged x (xsb, at column kk of the piece, the
  // ldmatrix offset of odd matrices included) into the group sums: one A fragment, one mma per n-tile.
  __device__ void mma_subtile(const uint32_t (&words)[4], int j, const T* xsb, int kk) {
    const int lane = threadIdx.x % 32;
    uint32_t a[4];
    a_fragment<T, BITS>(words, j, zf, zp, a);
    if constexpr (MT == 1) {
      uint32_t b[2];
      ldmatrix_x2(b, xsb + (lane % 8) * kRowStride + kk);
      mma_16816<T>(gacc[0], a, b[0], b[1]);
    } else {
#pragma unroll
      for (int nt = 0; nt < MT; nt += 2) {  // matrices: (nt, k), (nt, k + 8), (nt + 1, k), (nt + 1, k + 8)
        uint32_t b[4];
        ldmatrix_x4(b, xsb + (8 * nt + lane % 8 + 8 * (lane / 16)) * kRowStride + kk);
        mma_16816<T>(gacc[nt], a, b[0], b[1]);
        mma_16816<T>(gacc[nt + 1], a, b[2], b[3]);
      }
    }
  }
};

// Split-K factor: the one (<= max_splits, >= kMinPiecesPerSplit pieces each, no empty split) whose
// blocks fill `slots` resident blocks best in whole waves; ties (within 2%) go to fewer splits.
inline int choose_splits(int tiles, int npieces, int slots, int max_splits) {
  const int most = npieces / kMinPiecesPerSplit < 1 ? 1 : npieces / kMinPiecesPerSplit;
  int best = 1;
  double best_fill = 0.0;
  for (int s = 1; s <= max_splits && s <= most; ++s) {
    const int pps = (npieces + s - 1) / s;
    if ((npieces + pps - 1) / pps != s) continue;  // would leave an empty split
    const long long blocks = static_cast<long long>(tiles) * s;
    const long long waves = (blocks + slots - 1) / slots;
    const double fill = static_cast<double>(blocks) / static_cast<double>(waves * slots);
    if (fill > best_fill + 0.02) {
      best = s;
      best_fill = fill;
    }
  }
  return best;
}

}  // namespace qtool
