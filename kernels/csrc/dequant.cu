// Dequantize the repacked weight to a dense [n, k_padded] bf16/fp16 matrix, for large m where a
// cuBLAS GEMM on the dense weight is compute-bound and the extra pass over the weight is cheap.
// One warp per (stripe, chunk): each lane decodes its 16 bytes and computes (q - z) * s in float32,
// rounded once, exactly as the reference does. The pairs go to shared memory in fragment order
// first and leave as 16-byte row segments: written straight from the fragment layout, a warp store
// touched 8 rows x 16 bytes, half of each 32-byte sector (NOTES.md, hypothesis 4).
#include <cstdint>

#include "wo_common.cuh"

namespace qtool {
namespace {

constexpr int kWarps = 8;  // (stripe, chunk) pairs per block

template <typename T,   // output type: __half or __nv_bfloat16
          int BITS>     // weight code width: 2, 3, 4 or 8
__global__ void __launch_bounds__(kWarps * 32) dequant_kernel(const PackedWeightView w,  // the weight
                                                               T* __restrict__ out) {    // [n, k_padded]
  constexpr int SUB = chunk_subtiles(BITS);
  constexpr int KC = chunk_k(BITS);
  constexpr float kBias = BITS == 8 ? kInt8Bias : kNibbleBias<BITS>;
  const int lane = threadIdx.x % 32;
  const int nchunks = w.k_padded / KC;
  const size_t tile = static_cast<size_t>(blockIdx.x) * kWarps + threadIdx.x / 32;  // stripe * nchunks + chunk
  if (tile >= static_cast<size_t>(w.n_padded / kStripeRows) * nchunks) return;
  const int stripe = static_cast<int>(tile / nchunks), chunk = static_cast<int>(tile % nchunks);

  LaneChunk<BITS> chunk_words;
  chunk_words.load(reinterpret_cast<const uint4*>(w.qweight) + tile * chunk_vecs(BITS), 0, lane);
  uint32_t words[4];
  words_of(chunk_words.lo, words);
  float v[SUB][4][2];
  if constexpr (is_low_bits(BITS)) {
    const uint32_t hi[2] = {chunk_words.hi.x, chunk_words.hi.y};
    decode_low_chunk<BITS>(words, hi, v);
  } else {
    decode_chunk<BITS>(words, v);
  }

  // The warp's 16 x KC tile; rows padded by 16 bytes so that the 8 rows one store instruction
  // touches fall in distinct banks (row stride = 4 banks mod 32), and rows stay 16-byte aligned.
  constexpr int kRowWords = KC / 2 + 4;
  __shared__ __align__(16) uint32_t staged[kWarps][kStripeRows][kRowWords];
  uint32_t (&st)[kStripeRows][kRowWords] = staged[threadIdx.x / 32];
  const int row0 = stripe * kStripeRows + lane / 4;  // this lane's rows: row0 (r even), row0 + 8 (r odd)
#pragma unroll
  for (int j = 0; j < SUB; ++j) {
    const int k0 = chunk * KC + 16 * j;
    const float2 sz[2] = {group_params(w, k0 >> w.group_shift, row0), group_params(w, k0 >> w.group_shift, row0 + 8)};
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float z = kBias + sz[r % 2].y, s = sz[r % 2].x;
      st[frag_row(lane, r)][(16 * j + frag_col(lane, r)) / 2] = float2_to_pair((v[j][r][0] - z) * s, (v[j][r][1] - z) * s, T{});
    }
  }
  __syncwarp();

  constexpr int SEGS = KC / 8;  // 16-byte segments (8 elements) per row of the tile
  T* dst = out + static_cast<size_t>(chunk) * KC;
#pragma unroll
  for (int i = lane; i < kStripeRows * SEGS; i += 32) {
    const int r = i / SEGS, seg = i % SEGS;
    const int row = stripe * kStripeRows + r;
    if (row < w.n)
      *reinterpret_cast<uint4*>(dst + static_cast<size_t>(row) * w.k_padded + 8 * seg) =
          *reinterpret_cast<const uint4*>(&st[r][4 * seg]);
  }
}

template <typename T>  // output type
void launch_typed(const PackedWeightView& w,  // the weight
                  void* out,                  // [n, k_padded] of T
                  cudaStream_t stream) {      // the caller's stream
  const size_t tiles = static_cast<size_t>(w.n_padded / kStripeRows) * (w.k_padded / chunk_k(w.num_bits));
  const unsigned blocks = static_cast<unsigned>((tiles + kWarps - 1) / kWarps);
  switch (w.num_bits) {
    case 2:
      dequant_kernel<T, 2><<<blocks, kWarps * 32, 0, stream>>>(w, static_cast<T*>(out));
      break;
    case 3:
      dequant_kernel<T, 3><<<blocks, kWarps * 32, 0, stream>>>(w, static_cast<T*>(out));
      break;
    case 4:
      dequant_kernel<T, 4><<<blocks, kWarps * 32, 0, stream>>>(w, static_cast<T*>(out));
      break;
    default:
      dequant_kernel<T, 8><<<blocks, kWarps * 32, 0, stream>>>(w, static_cast<T*>(out));
  }
}

}  // namespace

void launch_dequant(const PackedWeightView& w, ScalarKind dtype, void* out, cudaStream_t stream) {
  dtype == ScalarKind::kBFloat16 ? launch_typed<__nv_bfloat16>(w, out, stream) : launch_typed<__half>(w, out, stream);
}

}  // namespace qtool
