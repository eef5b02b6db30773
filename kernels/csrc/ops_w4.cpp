// PyTorch binding of the row-major W4A16 GEMV (w4_gemv.cu), in the `qtool_cuda` namespace:
//   torch.ops.qtool_cuda.w4_gemv   x [m <= 16, k] x rows [n, k / 2] nibbles (kernels/w4_rows.py), group scales
// Not dispatched yet (session 18, unmeasured): dev/session19.sh w4rows measures it. Every check names the tensor
// and the shape it got.
#include <optional>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "wo_kernels.h"

namespace qtool {
namespace {

void check_params(const at::Tensor& t, const char* name, const at::Tensor& x, int64_t n, int64_t groups) {
  TORCH_CHECK(t.device() == x.device() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.sizes() == at::IntArrayRef({n, groups}),
              "w4_gemv: ", name, " must be contiguous float32 [", n, ", ", groups, "] on ", x.device(), ", got ",
              t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

}  // namespace

at::Tensor w4_gemv(const at::Tensor& x, const at::Tensor& rows, const at::Tensor& scale,
                   const std::optional<at::Tensor>& zero, const std::optional<at::Tensor>& bias, int64_t group_size) {
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "w4_gemv: activations must be float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous() && x.size(0) <= kMaxW4RowsTokens &&
                  x.size(1) % 128 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
              "w4_gemv: x must be a contiguous, 16-byte aligned CUDA [m <= ", kMaxW4RowsTokens,
              ", k % 128 == 0] tensor, got ", x.sizes(), " on ", x.device());
  const int64_t m = x.size(0), k = x.size(1), n = rows.size(0);
  TORCH_CHECK(rows.device() == x.device() && rows.scalar_type() == at::kByte && rows.dim() == 2 &&
                  rows.size(1) == k / 2 && n % 16 == 0 && rows.is_contiguous() &&
                  reinterpret_cast<uintptr_t>(rows.data_ptr()) % 16 == 0,
              "w4_gemv: rows must be a contiguous, 16-byte aligned uint8 [n % 16 == 0, k / 2 = ", k / 2, "] tensor on ",
              x.device(), ", got ", rows.scalar_type(), " ", rows.sizes(), " on ", rows.device());
  TORCH_CHECK(group_size > 0 && group_size % 128 == 0 && k % group_size == 0,
              "w4_gemv: group_size must be a multiple of 128 dividing k = ", k, ", got ", group_size);
  const int64_t groups = k / group_size;
  check_params(scale, "scale", x, n, groups);
  if (zero.has_value()) check_params(*zero, "zero", x, n, groups);
  at::Tensor bias_f32;
  if (bias.has_value()) {
    TORCH_CHECK(bias->device() == x.device() && bias->numel() == n, "w4_gemv: bias must be [", n, "] on ",
                x.device(), ", got ", bias->sizes(), " on ", bias->device());
    bias_f32 = bias->to(at::kFloat).contiguous();
  }
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({m, n}, x.options());
  const W4GemvProblem p{x.data_ptr(), rows.data_ptr<uint8_t>(), scale.data_ptr<float>(),
                        zero.has_value() ? zero->data_ptr<float>() : nullptr,
                        bias.has_value() ? bias_f32.data_ptr<float>() : nullptr, y.data_ptr(), static_cast<int>(m),
                        static_cast<int>(n), static_cast<int>(k), static_cast<int>(group_size),
                        x.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16};
  launch_w4_gemv(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace qtool

TORCH_LIBRARY_FRAGMENT(qtool_cuda, m) {
  m.def("w4_gemv(Tensor x, Tensor rows, Tensor scale, Tensor? zero, Tensor? bias, int group_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(qtool_cuda, CUDA, m) { m.impl("w4_gemv", &qtool::w4_gemv); }
