// PyTorch bindings of the 1-bit kernels, in the `qtool_cuda` namespace (kernels/binary.py calls them):
//   torch.ops.qtool_cuda.w1_gemv    W1A16 GEMV, 1 <= m <= 8, weight in binary.py's GEMV layout
//   torch.ops.qtool_cuda.binarize   W1A1 activations: sign bits, mean |x| and per-group popcounts
//   torch.ops.qtool_cuda.w1a1_gemm  W1A1 GEMM on the b1 tensor cores
// Every check names the tensor and the shape it got.
#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "w1_kernels.h"

namespace qtool {
namespace {

ScalarKind w1_kind(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
              ": activations must be float16 or bfloat16, got ", x.scalar_type());
  return x.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16;
}

// Groups the 1-bit kernels take: 32, 64, 128 or a multiple of 256 (whole chunks / mma steps); <= 0: per row.
void check_group(int64_t group_size, const char* op) {
  TORCH_CHECK(group_size <= 0 || group_size == 32 || group_size == 64 || group_size == 128 || group_size % 256 == 0,
              op, ": group_size must be 32, 64, 128, a multiple of 256, or -1 for one scale per row; got ", group_size);
}

const float* bias_f32(const std::optional<at::Tensor>& bias, int64_t n, const at::Tensor& x, at::Tensor& keep,
                      const char* op) {
  if (!bias.has_value()) return nullptr;
  TORCH_CHECK(bias->device() == x.device() && bias->numel() == n, op, ": bias must be [", n, "] on ", x.device(),
              ", got ", bias->sizes(), " on ", bias->device());
  keep = bias->to(at::kFloat).contiguous();
  return keep.data_ptr<float>();
}

at::Tensor w1_gemv(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                   const std::optional<at::Tensor>& bias, int64_t group_size, int64_t out_features) {
  const ScalarKind kind = w1_kind(x, "w1_gemv");
  check_group(group_size, "w1_gemv");
  TORCH_CHECK(qweight.is_cuda() && qweight.scalar_type() == at::kInt && qweight.dim() == 4 && qweight.size(2) == 32 &&
                  qweight.size(3) == 4 && qweight.is_contiguous() && qweight.size(0) % 2 == 0 &&
                  reinterpret_cast<uintptr_t>(qweight.data_ptr()) % 16 == 0,
              "w1_gemv: qweight must be a contiguous, 16-byte aligned CUDA int32 [n_padded / 16 (even), k_padded / 256, "
              "32, 4] tensor (kernels/binary.py), got ", qweight.scalar_type(), " ", qweight.sizes(), " on ", qweight.device());
  const int64_t n_padded = qweight.size(0) * 16, chunks = qweight.size(1), k_padded = chunks * kW1ChunkK;
  TORCH_CHECK(out_features > n_padded - kW1GemvRows && out_features <= n_padded, "w1_gemv: out_features=",
              out_features, " does not fit qweight ", qweight.sizes());
  TORCH_CHECK(x.device() == qweight.device() && x.dim() == 2 && x.size(1) == k_padded && x.is_contiguous() &&
                  x.size(0) <= kMaxW1GemvTokens && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
              "w1_gemv: x must be a contiguous, 16-byte aligned [m <= ", kMaxW1GemvTokens, ", k_padded=", k_padded,
              "] tensor on ", qweight.device(), ", got ", x.sizes(), " on ", x.device());
  const int gpc = group_size <= 0 ? 0 : group_size >= 256 ? 1 : static_cast<int>(256 / group_size);
  const auto expected = gpc == 0 ? std::vector<int64_t>{n_padded}
                                 : std::vector<int64_t>{n_padded / 16, chunks, 8, 2, gpc};
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.device() == x.device() &&
                  scale.sizes() == at::IntArrayRef(expected) && reinterpret_cast<uintptr_t>(scale.data_ptr()) % 16 == 0,
              "w1_gemv: scale must be contiguous, 16-byte aligned float32 ", at::IntArrayRef(expected), " for group_size=", group_size,
              ", got ", scale.scalar_type(), " ", scale.sizes(), " on ", scale.device());
  at::Tensor keep;
  const float* b = bias_f32(bias, out_features, x, keep, "w1_gemv");
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  if (x.size(0) == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  W1GemvProblem p{x.data_ptr(), reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>()), scale.data_ptr<float>(),
                  b, y.data_ptr(), static_cast<int>(x.size(0)), static_cast<int>(out_features),
                  static_cast<int>(n_padded), static_cast<int>(k_padded), gpc, kind};
  launch_w1_gemv(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

// (bits [m_padded, k_padded / 32] int32, scale [m_padded] float32, popc [groups, m_padded] int32).
std::tuple<at::Tensor, at::Tensor, at::Tensor> binarize(const at::Tensor& x, int64_t group_size, int64_t k_padded) {
  const ScalarKind kind = w1_kind(x, "binarize");
  check_group(group_size, "binarize");
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1, "binarize: x must be a CUDA [m, k] tensor with "
              "contiguous rows, got ", x.sizes(), " strides ", x.strides(), " on ", x.device());
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(k_padded % kW1A1PadK == 0 && k_padded >= k && k > 0, "binarize: k_padded=", k_padded,
              " must be a multiple of ", kW1A1PadK, " and >= k=", k);
  const int64_t m_padded = std::max<int64_t>(kW1A1PadM, (m + kW1A1PadM - 1) / kW1A1PadM * kW1A1PadM);
  const int64_t groups = group_size <= 0 ? 1 : (k + group_size - 1) / group_size;
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor bits = at::empty({m_padded, k_padded / 32}, x.options().dtype(at::kInt));
  at::Tensor scale = at::empty({m_padded}, x.options().dtype(at::kFloat));
  at::Tensor popc = at::empty({groups, m_padded}, x.options().dtype(at::kInt));
  BinarizeProblem p{x.data_ptr(), x.stride(0), reinterpret_cast<uint32_t*>(bits.data_ptr<int32_t>()),
                    scale.data_ptr<float>(), popc.data_ptr<int32_t>(), static_cast<int>(m), static_cast<int>(m_padded),
                    static_cast<int>(k), static_cast<int>(k_padded), static_cast<int>(group_size),
                    static_cast<int>(groups), kind};
  launch_binarize(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {bits, scale, popc};
}

at::Tensor w1a1_gemm(const at::Tensor& xbits, const at::Tensor& xscale, const at::Tensor& xpopc,
                     const at::Tensor& wbits, const at::Tensor& wscale, const at::Tensor& cterm,
                     const std::optional<at::Tensor>& bias, int64_t m, int64_t out_features, int64_t group_size,
                     at::ScalarType out_dtype) {
  check_group(group_size, "w1a1_gemm");
  TORCH_CHECK(out_dtype == at::kHalf || out_dtype == at::kBFloat16 || out_dtype == at::kFloat,
              "w1a1_gemm: out_dtype must be float16, bfloat16 or float32, got ", out_dtype);
  const auto is_int_matrix = [](const at::Tensor& t) {
    return t.is_cuda() && t.scalar_type() == at::kInt && t.dim() == 2 && t.is_contiguous();
  };
  TORCH_CHECK(is_int_matrix(xbits) && is_int_matrix(wbits) && xbits.size(1) == wbits.size(1) &&
                  xbits.device() == wbits.device() && (xbits.size(1) * 32) % kW1A1PadK == 0 &&
                  xbits.size(0) % kW1A1PadM == 0 && wbits.size(0) % kW1A1PadN == 0,
              "w1a1_gemm: xbits [m_padded % ", kW1A1PadM, " == 0, k_padded / 32] and wbits [n_padded % ", kW1A1PadN,
              " == 0, k_padded / 32] must be contiguous CUDA int32 with k_padded % ", kW1A1PadK, " == 0, got ",
              xbits.sizes(), " and ", wbits.sizes());
  const int64_t m_padded = xbits.size(0), n_padded = wbits.size(0), k_padded = xbits.size(1) * 32;
  TORCH_CHECK(m >= 0 && m <= m_padded && out_features > 0 && out_features <= n_padded, "w1a1_gemm: m=", m,
              " and out_features=", out_features, " must fit xbits ", xbits.sizes(), " and wbits ", wbits.sizes());
  const int64_t groups = xpopc.size(0);
  const auto check_f32 = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device() == xbits.device() && t.sizes() == shape,
                "w1a1_gemm: ", name, " must be contiguous float32 ", shape, " on ", xbits.device(), ", got ",
                t.scalar_type(), " ", t.sizes(), " on ", t.device());
  };
  check_f32(xscale, {m_padded}, "xscale");
  check_f32(wscale, {groups, n_padded}, "wscale");
  check_f32(cterm, {n_padded}, "cterm");
  TORCH_CHECK(xpopc.scalar_type() == at::kInt && xpopc.is_contiguous() && xpopc.dim() == 2 &&
                  xpopc.size(1) == m_padded && (group_size > 0 || groups == 1),
              "w1a1_gemm: xpopc must be contiguous int32 [groups, m_padded=", m_padded, "], got ", xpopc.sizes());
  at::Tensor keep;
  const float* b = bias_f32(bias, out_features, xbits, keep, "w1a1_gemm");
  at::Tensor y = at::empty({m, out_features}, xbits.options().dtype(out_dtype));
  if (m == 0) return y;
  const c10::cuda::CUDAGuard guard(xbits.device());
  const OutKind out = out_dtype == at::kHalf ? OutKind::kHalf : out_dtype == at::kBFloat16 ? OutKind::kBFloat16
                                                                                           : OutKind::kFloat;
  W1A1Problem p{reinterpret_cast<const uint32_t*>(xbits.data_ptr<int32_t>()), xscale.data_ptr<float>(),
                xpopc.data_ptr<int32_t>(), reinterpret_cast<const uint32_t*>(wbits.data_ptr<int32_t>()),
                wscale.data_ptr<float>(), cterm.data_ptr<float>(), b, y.data_ptr(), static_cast<int>(m),
                static_cast<int>(m_padded), static_cast<int>(out_features), static_cast<int>(n_padded),
                static_cast<int>(k_padded), static_cast<int>(group_size), static_cast<int>(groups), out};
  launch_w1a1_gemm(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace
}  // namespace qtool

TORCH_LIBRARY_FRAGMENT(qtool_cuda, m) {
  m.def("w1_gemv(Tensor x, Tensor qweight, Tensor scale, Tensor? bias, int group_size, int out_features) -> Tensor");
  m.def("binarize(Tensor x, int group_size, int k_padded) -> (Tensor, Tensor, Tensor)");
  m.def(
      "w1a1_gemm(Tensor xbits, Tensor xscale, Tensor xpopc, Tensor wbits, Tensor wscale, Tensor cterm, Tensor? bias, "
      "int m, int out_features, int group_size, ScalarType out_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(qtool_cuda, CUDA, m) {
  m.impl("w1_gemv", &qtool::w1_gemv);
  m.impl("binarize", &qtool::binarize);
  m.impl("w1a1_gemm", &qtool::w1a1_gemm);
}
