// Interface between ops_attention.cpp (PyTorch-facing checks) and decode_attention.cu (no PyTorch headers): attention
// of one query token per sequence over a KV cache with grouped query heads, out = softmax(q k^T * scale, masked) v.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "wo_kernels.h"  // ScalarKind

namespace qtool {

struct DecodeAttentionProblem {
  const void* q;     // [batch, heads, dim]: (b, h, d) at b * q_batch + h * q_head + d
  const void* k;     // [batch, kv_heads, length, dim]: (b, j, l, d) at b * kv_batch + j * kv_head + l * kv_pos + d
  const void* v;     // the shape and strides of k
  const bool* mask;  // [batch, length]: (b, l) at b * mask_batch + l * mask_pos, true = attend; nullptr: attend to all
  void* out;         // [batch, heads, dim] contiguous, q's dtype
  float* partial;    // splits > 1: [batch, kv_heads, splits, heads / kv_heads, dim + 2] float32 (sums, max, total)
  int64_t batch, heads, kv_heads, length, dim;
  int64_t q_batch, q_head, kv_batch, kv_head, kv_pos, mask_batch, mask_pos;
  float scale;
  int splits;  // pieces of the cache per (sequence, KV head), one block each; 1: no combine step
  ScalarKind dtype;
  bool pdl = false;  // wait for the kernel before in the stream on the device, let the next launch at once (pdl.cuh)
  int variant = 0;   // 1 online softmax, 2 two passes (attention_two_pass.cuh); 0 the default (decode_attention.cu)
  // Rotary-and-write mode (rope_decode_attention; the two-pass kernel only), where cos is set: q points at the raw
  // q/k/v projection [batch, (heads + 2 kv_heads) * dim] (q_head = dim), the query rows are rotated by cos / sin
  // [batch, dim] ((b, d) at b * rope_batch + d) as they are staged, and the block whose piece holds cache row *slot
  // rotates the new key, writes it and the new value into k / v there, and stages both over their stale copies.
  // Rows after *slot (a static cache's future positions) are not attended, with or without a mask.
  const void* cos = nullptr;
  const void* sin = nullptr;
  const int64_t* slot = nullptr;
  int64_t rope_batch = 0;
};

constexpr int kDecodeAttentionMaxGroup = 16;  // query heads per KV head the kernels take
constexpr int kDecodeAttentionMaxChunk = 256;  // cache positions one block stages in shared memory

// The pieces a launch uses: `requested` (<= 0: one block per (sequence, KV head) up to kDecodeAttentionMaxChunk
// positions, beyond that pieces of >= 64 positions, as many as fill the SMs once), at least enough that no piece
// is longer than kDecodeAttentionMaxChunk, and no empty piece. p.splits must be this.
int decode_attention_splits(int64_t batch, int64_t kv_heads, int64_t length, int requested, int num_sms);

cudaError_t launch_decode_attention(const DecodeAttentionProblem& p, cudaStream_t stream);

}  // namespace qtool
