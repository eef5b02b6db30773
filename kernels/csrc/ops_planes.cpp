// PyTorch binding of norm_planes (norm_planes.cu), in the `qtool_cuda` namespace (kernels/norm_planes.py puts it in
// compiled decode graphs; reference.norm_planes is its oracle):
//   torch.ops.qtool_cuda.norm_planes(x [m, k], residual [m, k] or None, weight [k], eps, pdl=0, natural=0)
//     -> (sum [m, k] (residual + x; [0] without residual), planes [2m, k] int8, xscale [m] float32)
// Every check names the tensor and what it got.
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "wo_kernels.h"

namespace qtool {
namespace {

void check_row(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.sizes() == x.sizes() &&
                  t.is_contiguous() && reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0,
              "norm_planes: ", name, " must be a contiguous, 16-byte aligned ", x.sizes(), " ", x.scalar_type(),
              " tensor on ", x.device(), " (x's), got ", t.sizes(), " ", t.scalar_type(), " on ", t.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_planes(const at::Tensor& x,
                                                           const std::optional<at::Tensor>& residual,
                                                           const at::Tensor& weight, double eps, int64_t pdl,
                                                           int64_t natural) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16),
              "norm_planes: x must be a float16 or bfloat16 CUDA [m, k] tensor, got ", x.sizes(), " ",
              x.scalar_type(), " on ", x.device());
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(k % kPadK == 0 && k > 0 && k <= kNormPlanesMaxK, "norm_planes: k must be a positive multiple of ",
              kPadK, " up to ", kNormPlanesMaxK, ", got ", k);
  check_row(x, "x", x);
  if (residual.has_value()) check_row(*residual, "residual", x);
  TORCH_CHECK(weight.device() == x.device() && weight.scalar_type() == x.scalar_type() && weight.dim() == 1 &&
                  weight.size(0) == k && weight.is_contiguous() &&
                  reinterpret_cast<uintptr_t>(weight.data_ptr()) % 16 == 0,
              "norm_planes: weight must be a contiguous, 16-byte aligned [", k, "] ", x.scalar_type(), " tensor on ",
              x.device(), ", got ", weight.sizes(), " ", weight.scalar_type(), " on ", weight.device());
  at::Tensor sum = residual.has_value() ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor planes = at::empty({2 * m, k}, x.options().dtype(at::kChar));
  at::Tensor xscale = at::empty({m}, x.options().dtype(at::kFloat));
  if (m == 0) return {sum, planes, xscale};
  const c10::cuda::CUDAGuard guard(x.device());
  NormPlanesProblem p{x.data_ptr(),
                      residual.has_value() ? residual->data_ptr() : nullptr,
                      weight.data_ptr(),
                      residual.has_value() ? sum.data_ptr() : nullptr,
                      planes.data_ptr<int8_t>(),
                      xscale.data_ptr<float>(),
                      static_cast<int>(m),
                      static_cast<int>(k),
                      static_cast<float>(eps),
                      x.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16,
                      pdl != 0,
                      natural != 0};
  launch_norm_planes(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sum, planes, xscale};
}

}  // namespace
}  // namespace qtool

TORCH_LIBRARY_FRAGMENT(qtool_cuda, m) {
  m.def("norm_planes(Tensor x, Tensor? residual, Tensor weight, float eps, int pdl=0, int natural=0) -> "
        "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qtool_cuda, CUDA, m) { m.impl("norm_planes", &qtool::norm_planes); }
