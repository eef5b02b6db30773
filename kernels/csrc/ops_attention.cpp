// PyTorch binding of the decode attention kernel (decode_attention.cu), in the `qtool_cuda` namespace
// (kernels/attention.py calls it):
//   torch.ops.qtool_cuda.decode_attention(q [B, H, D], k [B, KV, L, D], v [B, KV, L, D], mask [B, L] bool or None,
//                                         scale, splits=0 (the kernel's default), pdl=0, variant=0) -> out [B, H, D]
// Every check names the tensor and what it got.
#include <optional>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "attention.h"

namespace qtool {

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& mask, double scale, int64_t splits, int64_t pdl,
                            int64_t variant) {
  TORCH_CHECK(q.is_cuda() && q.dim() == 3, "decode_attention: q must be a CUDA [batch, heads, dim] tensor, got ",
              q.sizes(), " on ", q.device());
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
              "decode_attention: q must be float16 or bfloat16, got ", q.scalar_type());
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(2);
  TORCH_CHECK(dim == 64 || dim == 128, "decode_attention: the head dimension must be 64 or 128, got ", dim);
  for (const at::Tensor* t : {&k, &v}) {
    const char* name = t == &k ? "k" : "v";
    TORCH_CHECK(t->device() == q.device() && t->scalar_type() == q.scalar_type() && t->dim() == 4 &&
                    t->size(0) == batch && t->size(3) == dim,
                "decode_attention: ", name, " must be [", batch, ", kv_heads, length, ", dim, "] ", q.scalar_type(),
                " on ", q.device(), ", got ", t->sizes(), " ", t->scalar_type(), " on ", t->device());
    TORCH_CHECK(t->stride(3) == 1 && t->stride(2) % 8 == 0 && t->stride(1) % 8 == 0 && t->stride(0) % 8 == 0 &&
                    reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0,
                "decode_attention: ", name, " must have unit last stride, the other strides multiples of 8 and a "
                "16-byte aligned start (rows are copied in 16-byte pieces), got strides ", t->strides());
  }
  TORCH_CHECK(v.sizes() == k.sizes() && v.strides() == k.strides(), "decode_attention: v must have k's shape and "
              "strides, got ", v.sizes(), " / ", v.strides(), " against ", k.sizes(), " / ", k.strides());
  const int64_t kv_heads = k.size(1), length = k.size(2);
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0 && heads / kv_heads <= kDecodeAttentionMaxGroup,
              "decode_attention: heads (", heads, ") must be a multiple of kv_heads (", kv_heads, ") with at most ",
              kDecodeAttentionMaxGroup, " query heads per KV head");
  TORCH_CHECK(length > 0, "decode_attention: the cache must hold at least one position, got length 0");
  TORCH_CHECK(q.stride(2) == 1, "decode_attention: q must have unit last stride, got strides ", q.strides());
  if (mask.has_value()) {
    TORCH_CHECK(mask->device() == q.device() && mask->scalar_type() == at::kBool && mask->dim() == 2 &&
                    mask->size(0) == batch && mask->size(1) == length,
                "decode_attention: mask must be a bool [", batch, ", ", length, "] tensor on ", q.device(), ", got ",
                mask->sizes(), " ", mask->scalar_type(), " on ", mask->device());
  }
  if (batch == 0) return at::empty({0, heads, dim}, q.options());
  const c10::cuda::CUDAGuard guard(q.device());
  int num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, q.device().index()));
  DecodeAttentionProblem p;
  p.q = q.data_ptr(), p.k = k.data_ptr(), p.v = v.data_ptr();
  p.mask = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  p.batch = batch, p.heads = heads, p.kv_heads = kv_heads, p.length = length, p.dim = dim;
  p.q_batch = q.stride(0), p.q_head = q.stride(1);
  p.kv_batch = k.stride(0), p.kv_head = k.stride(1), p.kv_pos = k.stride(2);
  p.mask_batch = mask.has_value() ? mask->stride(0) : 0, p.mask_pos = mask.has_value() ? mask->stride(1) : 0;
  p.scale = static_cast<float>(scale);
  p.splits = decode_attention_splits(batch, kv_heads, length, static_cast<int>(splits), num_sms);
  p.dtype = q.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16;
  p.pdl = pdl != 0;
  TORCH_CHECK(variant >= 0 && variant <= 2, "decode_attention: variant must be 0 (the default), 1 or 2, got ", variant);
  p.variant = static_cast<int>(variant);
  at::Tensor out = at::empty({batch, heads, dim}, q.options());
  at::Tensor partial;
  if (p.splits > 1) {
    partial = at::empty({batch * kv_heads * p.splits * (heads / kv_heads) * (dim + 2)}, q.options().dtype(at::kFloat));
    p.partial = partial.data_ptr<float>();
  } else {
    p.partial = nullptr;
  }
  p.out = out.data_ptr();
  C10_CUDA_CHECK(launch_decode_attention(p, c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace qtool

TORCH_LIBRARY_FRAGMENT(qtool_cuda, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, int splits=0, int pdl=0, "
        "int variant=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(qtool_cuda, CUDA, m) { m.impl("decode_attention", &qtool::decode_attention); }
