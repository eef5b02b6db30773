// PyTorch bindings of the producers of x's int8 planes, in the `qtool_cuda` namespace:
//   torch.ops.qtool_cuda.x_planes(x [m, k_padded], pdl=0, natural=0, gated=0) -> (planes [2m, k_padded], xscale [m])
//     (wo_planes.cu; reference.x_planes is its oracle)
//   norm_planes (norm_planes.cu; kernels/norm_planes.py puts it in compiled decode graphs; reference.norm_planes):
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

ScalarKind kind_of(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op, ": activations must be float16 "
              "or bfloat16, got ", x.scalar_type());
  return x.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16;
}

// x [m, k_padded] -> (planes [2m, k_padded] int8, xscale [m] float32) for wo_planes_gemv (wo_kernels.h, XPlanesProblem).
// gated: x is a gated MLP's [m, 2 k_padded] = [gate | up] and the planes are those of silu(gate) * up.
std::tuple<at::Tensor, at::Tensor> x_planes(const at::Tensor& x, int64_t pdl, int64_t natural, int64_t gated) {
  const int64_t parts = gated ? 2 : 1;
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous() && x.size(1) % (parts * kPadK) == 0, "x_planes: x must "
              "be a contiguous CUDA [m, ", gated ? "2 * " : "", "k_padded] tensor with k_padded a multiple of ", kPadK,
              ", got ", x.sizes(), " on ", x.device());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0, "x_planes: x must be 16-byte aligned");
  const int64_t k = x.size(1) / parts;
  TORCH_CHECK(!gated || (!natural && k <= kXPlanesMaxGatedK), "x_planes: the gated form writes plane_slot order for K "
              "<= ", kXPlanesMaxGatedK, ", got natural=", natural, " and K=", k);
  at::Tensor planes = at::empty({2 * x.size(0), k}, x.options().dtype(at::kChar));
  at::Tensor xscale = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  if (x.size(0) == 0) return {planes, xscale};
  const c10::cuda::CUDAGuard guard(x.device());
  launch_x_planes({x.data_ptr(), planes.data_ptr<int8_t>(), xscale.data_ptr<float>(), static_cast<int>(x.size(0)),
                   static_cast<int>(k), kind_of(x, "x_planes"), pdl != 0, natural != 0, gated != 0},
                  c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {planes, xscale};
}

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
  TORCH_CHECK(x.is_cuda() && x.dim() == 2, "norm_planes: x must be a CUDA [m, k] tensor, got ", x.sizes(), " on ",
              x.device());
  const ScalarKind kind = kind_of(x, "norm_planes");
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
                      kind,
                      pdl != 0,
                      natural != 0};
  launch_norm_planes(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {sum, planes, xscale};
}

}  // namespace
}  // namespace qtool

TORCH_LIBRARY_FRAGMENT(qtool_cuda, m) {
  m.def("x_planes(Tensor x, int pdl=0, int natural=0, int gated=0) -> (Tensor, Tensor)");
  m.def("norm_planes(Tensor x, Tensor? residual, Tensor weight, float eps, int pdl=0, int natural=0) -> "
        "(Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(qtool_cuda, CUDA, m) {
  m.impl("x_planes", &qtool::x_planes);
  m.impl("norm_planes", &qtool::norm_planes);
}
