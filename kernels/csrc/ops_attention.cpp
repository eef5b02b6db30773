// PyTorch binding of the decode attention kernel (decode_attention.cu), in the `qtool_cuda` namespace
// (kernels/attention.py calls it):
//   torch.ops.qtool_cuda.decode_attention(q [B, H, D], k [B, KV, L, D], v [B, KV, L, D], mask [B, L] bool or None,
//                                         scale, splits=0 (the kernel's default), pdl=0, variant=0) -> out [B, H, D]
//   torch.ops.qtool_cuda.rope_decode_attention(qkv [B, (H + 2 KV) D], cos [B, D], sin [B, D], k, v, slot [1] int64,
//                                              mask, scale, heads, splits=0, pdl=0) -> out [B, H, D]
//     (the rotary of q and the new k, the new k and v written into k / v at row slot, then the attention; the
//     two-pass kernel; reference.rope_decode_attention is its oracle)
// Every check names the tensor and what it got.
#include <optional>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "attention.h"

namespace qtool {
namespace {

// k and v: [batch, kv_heads, length, dim] caches of `like`'s dtype and device, rows copied in 16-byte pieces.
void check_caches(const char* op, const at::Tensor& k, const at::Tensor& v, int64_t batch, int64_t heads,
                  int64_t dim, const at::Tensor& like) {
  for (const at::Tensor* t : {&k, &v}) {
    const char* name = t == &k ? "k" : "v";
    TORCH_CHECK(t->device() == like.device() && t->scalar_type() == like.scalar_type() && t->dim() == 4 &&
                    t->size(0) == batch && t->size(3) == dim,
                op, ": ", name, " must be [", batch, ", kv_heads, length, ", dim, "] ", like.scalar_type(), " on ",
                like.device(), ", got ", t->sizes(), " ", t->scalar_type(), " on ", t->device());
    TORCH_CHECK(t->stride(3) == 1 && t->stride(2) % 8 == 0 && t->stride(1) % 8 == 0 && t->stride(0) % 8 == 0 &&
                    reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0,
                op, ": ", name, " must have unit last stride, the other strides multiples of 8 and a 16-byte "
                "aligned start (rows are copied in 16-byte pieces), got strides ", t->strides());
  }
  TORCH_CHECK(v.sizes() == k.sizes() && v.strides() == k.strides(), op, ": v must have k's shape and strides, got ",
              v.sizes(), " / ", v.strides(), " against ", k.sizes(), " / ", k.strides());
  const int64_t kv_heads = k.size(1);
  TORCH_CHECK(kv_heads > 0 && heads % kv_heads == 0 && heads / kv_heads <= kDecodeAttentionMaxGroup, op, ": heads (",
              heads, ") must be a multiple of kv_heads (", kv_heads, ") with at most ", kDecodeAttentionMaxGroup,
              " query heads per KV head");
  TORCH_CHECK(k.size(2) > 0, op, ": the cache must hold at least one position, got length 0");
}

void check_mask(const char* op, const std::optional<at::Tensor>& mask, int64_t batch, int64_t length,
                const at::Tensor& like) {
  if (!mask.has_value()) return;
  TORCH_CHECK(mask->device() == like.device() && mask->scalar_type() == at::kBool && mask->dim() == 2 &&
                  mask->size(0) == batch && mask->size(1) == length,
              op, ": mask must be a bool [", batch, ", ", length, "] tensor on ", like.device(), ", got ",
              mask->sizes(), " ", mask->scalar_type(), " on ", mask->device());
}

// p with its query fields (q, q_batch, q_head) and rotary fields set: the rest from the caches and mask, launched.
at::Tensor launch(DecodeAttentionProblem& p, const at::Tensor& like, int64_t heads, int64_t dim, const at::Tensor& k,
                  const at::Tensor& v, const std::optional<at::Tensor>& mask, double scale, int64_t splits,
                  int64_t pdl, int64_t variant) {
  const int64_t batch = like.size(0), kv_heads = k.size(1), length = k.size(2);
  if (batch == 0) return at::empty({0, heads, dim}, like.options());
  const c10::cuda::CUDAGuard guard(like.device());
  int num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, like.device().index()));
  p.k = k.data_ptr(), p.v = v.data_ptr();
  p.mask = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  p.batch = batch, p.heads = heads, p.kv_heads = kv_heads, p.length = length, p.dim = dim;
  p.kv_batch = k.stride(0), p.kv_head = k.stride(1), p.kv_pos = k.stride(2);
  p.mask_batch = mask.has_value() ? mask->stride(0) : 0, p.mask_pos = mask.has_value() ? mask->stride(1) : 0;
  p.scale = static_cast<float>(scale);
  p.splits = decode_attention_splits(batch, kv_heads, length, static_cast<int>(splits), num_sms);
  p.dtype = like.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16;
  p.pdl = pdl != 0;
  TORCH_CHECK(variant >= 0 && variant <= 2, "decode_attention: variant must be 0 (the default), 1 or 2, got ", variant);
  p.variant = static_cast<int>(variant);
  at::Tensor out = at::empty({batch, heads, dim}, like.options());
  at::Tensor partial;
  if (p.splits > 1) {
    partial = at::empty({batch * kv_heads * p.splits * (heads / kv_heads) * (dim + 2)},
                        like.options().dtype(at::kFloat));
    p.partial = partial.data_ptr<float>();
  } else {
    p.partial = nullptr;
  }
  p.out = out.data_ptr();
  C10_CUDA_CHECK(launch_decode_attention(p, c10::cuda::getCurrentCUDAStream()));
  return out;
}

void check_activation(const char* op, const char* name, const at::Tensor& t, int64_t dims) {
  TORCH_CHECK(t.is_cuda() && t.dim() == dims, op, ": ", name, " must be a CUDA tensor of ", dims, " dimensions, got ",
              t.sizes(), " on ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, op, ": ", name,
              " must be float16 or bfloat16, got ", t.scalar_type());
}

}  // namespace

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& mask, double scale, int64_t splits, int64_t pdl,
                            int64_t variant) {
  check_activation("decode_attention", "q [batch, heads, dim]", q, 3);
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(2);
  TORCH_CHECK(dim == 64 || dim == 128, "decode_attention: the head dimension must be 64 or 128, got ", dim);
  check_caches("decode_attention", k, v, batch, heads, dim, q);
  TORCH_CHECK(q.stride(2) == 1, "decode_attention: q must have unit last stride, got strides ", q.strides());
  check_mask("decode_attention", mask, batch, k.size(2), q);
  DecodeAttentionProblem p;
  p.q = q.data_ptr(), p.q_batch = q.stride(0), p.q_head = q.stride(1);
  return launch(p, q, heads, dim, k, v, mask, scale, splits, pdl, variant);
}

at::Tensor rope_decode_attention(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                                 const at::Tensor& k, const at::Tensor& v, const at::Tensor& slot,
                                 const std::optional<at::Tensor>& mask, double scale, int64_t heads, int64_t splits,
                                 int64_t pdl) {
  const char* op = "rope_decode_attention";
  check_activation(op, "qkv [batch, (heads + 2 kv_heads) * dim]", qkv, 2);
  TORCH_CHECK(k.dim() == 4, op, ": k must be [batch, kv_heads, length, dim], got ", k.sizes());
  const int64_t batch = qkv.size(0), kv_heads = k.size(1), dim = k.size(3);
  TORCH_CHECK(dim == 64 || dim == 128, op, ": the head dimension must be 64 or 128, got ", dim);
  TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * dim && qkv.stride(1) == 1, op, ": qkv must be [", batch, ", ",
              (heads + 2 * kv_heads) * dim, "] with unit last stride for ", heads, " heads, ", kv_heads,
              " KV heads of ", dim, ", got ", qkv.sizes(), " strides ", qkv.strides());
  check_caches(op, k, v, batch, heads, dim, qkv);
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->device() == qkv.device() && t->scalar_type() == qkv.scalar_type() && t->dim() == 2 &&
                    t->size(0) == batch && t->size(1) == dim && t->stride(1) == 1 && t->stride(0) == cos.stride(0),
                op, ": ", t == &cos ? "cos" : "sin", " must be [", batch, ", ", dim, "] ", qkv.scalar_type(),
                " with unit last stride (sin with cos's strides), got ", t->sizes(), " ", t->scalar_type());
  TORCH_CHECK(slot.device() == qkv.device() && slot.scalar_type() == at::kLong && slot.numel() == 1, op,
              ": slot must be one int64 on ", qkv.device(), ", got ", slot.sizes(), " ", slot.scalar_type());
  check_mask(op, mask, batch, k.size(2), qkv);
  DecodeAttentionProblem p;
  p.q = qkv.data_ptr(), p.q_batch = qkv.stride(0), p.q_head = dim;
  p.cos = cos.data_ptr(), p.sin = sin.data_ptr(), p.rope_batch = cos.stride(0);
  p.slot = slot.data_ptr<int64_t>();
  return launch(p, qkv, heads, dim, k, v, mask, scale, splits, pdl, 2);
}

}  // namespace qtool

TORCH_LIBRARY_FRAGMENT(qtool_cuda, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale, int splits=0, int pdl=0, "
        "int variant=0) -> Tensor");
  m.def("rope_decode_attention(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k, Tensor(b!) v, Tensor slot, "
        "Tensor? mask, float scale, int heads, int splits=0, int pdl=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(qtool_cuda, CUDA, m) {
  m.impl("decode_attention", &qtool::decode_attention);
  m.impl("rope_decode_attention", &qtool::rope_decode_attention);
}
