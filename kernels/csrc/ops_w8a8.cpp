// PyTorch bindings of the 8-bit kernels, in the `qtool_cuda` namespace (kernels/scaled_mm.py calls them):
//   torch.ops.qtool_cuda.act_quant  fused per-token / per-tensor / 1 x g activation quantization
//   torch.ops.qtool_cuda.w8_gemv    8-bit weights [n, k] x 16-bit activations, m <= 32
//   torch.ops.qtool_cuda.sm90_scaled_mm  W8A8 GEMM with per-token x per-channel scales on Hopper, from
//                                   libqtool_sm90 (kernels/sm90.py loads it; looked up here by name)
// Every check names the tensor and the shape it got.
#include <dlfcn.h>

#include <optional>
#include <string>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "sm90/sm90_scaled_mm.h"
#include "w8a8.h"

namespace qtool {
namespace {

ScalarKind activation_kind(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
              ": activations must be float16 or bfloat16, got ", x.scalar_type());
  return x.scalar_type() == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16;
}

std::pair<CodeFormat, at::ScalarType> parse_format(const std::string& fmt) {
  if (fmt == "int8") return {CodeFormat::kInt8, at::kChar};
  if (fmt == "e4m3") return {CodeFormat::kE4M3, at::kFloat8_e4m3fn};
  if (fmt == "e5m2") return {CodeFormat::kE5M2, at::kFloat8_e5m2};
  TORCH_CHECK(false, "act_quant: fmt must be 'int8', 'int8x2', 'e4m3' or 'e5m2', got '", fmt, "'");
}

CodeFormat weight_format(at::ScalarType dtype) {
  if (dtype == at::kChar) return CodeFormat::kInt8;
  if (dtype == at::kFloat8_e4m3fn) return CodeFormat::kE4M3;
  TORCH_CHECK(dtype == at::kFloat8_e5m2, "w8_gemv: w must be int8, float8_e4m3fn or float8_e5m2, got ", dtype);
  return CodeFormat::kE5M2;
}

// bias [n] (any float dtype) as contiguous float32 on `device`, or an undefined tensor without one.
at::Tensor float_bias(const std::optional<at::Tensor>& bias, int64_t n, const at::Device& device, const char* op) {
  if (!bias.has_value()) return at::Tensor();
  TORCH_CHECK(bias->device() == device && bias->numel() == n, op, ": bias must be [", n, "] on ", device, ", got ",
              bias->sizes(), " on ", bias->device());
  return bias->to(at::kFloat).contiguous();
}

// Returns (codes [m, k], scale): scale [m, 1] per token and for a static scale (every row holds it: the
// GEMM epilogue reads one scale per row), or [m, groups] column-major (stride (1, m), the layout
// block-wise GEMMs read) for 1 x group_size groups. fmt "int8x2": int8 codes [2m, k] and scales [2m, 1], row r's
// two planes at r and m + r (w8a8.h, ActQuantProblem::split); per token only.
std::tuple<at::Tensor, at::Tensor> act_quant(const at::Tensor& x, const std::string& fmt, int64_t group_size,
                                             const std::optional<at::Tensor>& static_scale) {
  const ScalarKind kind = activation_kind(x, "act_quant");
  const bool split = fmt == "int8x2";
  const auto [format, code_dtype] = parse_format(split ? "int8" : fmt);
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1, "act_quant: x must be a CUDA [m, k] tensor with "
              "contiguous rows, got ", x.sizes(), " strides ", x.strides(), " on ", x.device());
  const int64_t m = x.size(0), k = x.size(1);
  TORCH_CHECK(!split || (group_size <= 0 && !static_scale.has_value() && k <= kMaxSplitK && k % 8 == 0 &&
                         x.stride(0) % 8 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0),
              "act_quant: int8x2 is per token and needs k <= ", kMaxSplitK, ", k % 8 == 0 and 16-byte aligned rows; "
              "got group_size=", group_size, ", static_scale ", static_scale.has_value(), ", x ", x.sizes(),
              " strides ", x.strides());
  const int64_t planes = split ? 2 : 1;
  const bool groups = group_size > 0 && !static_scale.has_value();
  if (groups) {
    TORCH_CHECK(group_size >= 8 && group_size <= 256 && (group_size & (group_size - 1)) == 0 && k % 8 == 0 &&
                    x.stride(0) % 8 == 0 && reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
                "act_quant: groups need a power-of-two group_size in 8..256, k % 8 == 0 and 16-byte aligned rows; "
                "got group_size=", group_size, ", x ", x.sizes(), " strides ", x.strides());
  }
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor q = at::empty({planes * m, k}, x.options().dtype(code_dtype));
  at::Tensor scale, static_f32;
  ActQuantProblem p{x.data_ptr(), x.stride(0), q.data_ptr(), nullptr, 0, 0, nullptr, static_cast<int>(m),
                    static_cast<int>(k), groups ? static_cast<int>(group_size) : 0, kind, format};
  if (static_scale.has_value()) {
    TORCH_CHECK(static_scale->numel() == 1 && static_scale->device() == x.device(),
                "act_quant: static_scale must hold one value on ", x.device(), ", got ", static_scale->sizes(),
                " on ", static_scale->device());
    static_f32 = static_scale->to(at::kFloat).contiguous();
    p.static_scale = static_f32.data_ptr<float>();
  }
  if (groups) {
    const int64_t g = (k + group_size - 1) / group_size;
    scale = at::empty_strided({m, g}, {1, std::max<int64_t>(m, 1)}, x.options().dtype(at::kFloat));
    p.scale = scale.data_ptr<float>();
    p.s_row = 1;
    p.s_col = m;
  } else {
    scale = at::empty({planes * m, 1}, x.options().dtype(at::kFloat));
    p.scale = scale.data_ptr<float>();
  }
  p.split = split;
  launch_act_quant(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {q, scale};
}

at::Tensor w8_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale,
                   const std::optional<at::Tensor>& bias, int64_t block_n, int64_t block_k, int64_t pdl,
                   const std::optional<at::Tensor>& prefetch, int64_t swiglu) {
  const ScalarKind kind = activation_kind(x, "w8_gemv");
  const CodeFormat format = weight_format(w.scalar_type());
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous() && x.size(0) <= kMaxW8Tokens &&
                  reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
              "w8_gemv: x must be a contiguous, 16-byte aligned CUDA [m <= ", kMaxW8Tokens, ", k] tensor, got ",
              x.sizes(), " on ", x.device());
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  TORCH_CHECK(w.device() == x.device() && w.dim() == 2 && w.size(1) == k && w.is_contiguous() && k % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0,
              "w8_gemv: w must be a contiguous, 16-byte aligned [n, k=", k, "] tensor with k % 16 == 0 on ",
              x.device(), ", got ", w.sizes(), " on ", w.device());
  const bool blocked = block_n > 0;
  const bool folds = kind == ScalarKind::kBFloat16 && format != CodeFormat::kInt8;  // w8_gemv.cu, kBlockFold
  const int64_t tiles_per_block = block_k / 64;  // w8_gemv.cu: the folded kernels shift by its log2
  const bool folds_blocks =
      folds && n % 32 == 0 && tiles_per_block > 0 && (tiles_per_block & (tiles_per_block - 1)) == 0;
  TORCH_CHECK(!swiglu || (m <= 8 && n % 2 == 0 && (!blocked || folds_blocks)), "w8_gemv: swiglu=1 (y = "
              "silu(gate) * up of w = [gate; up]) takes at most 8 tokens and an even row count, and block scales "
              "only for FP8 codes, bf16 activations, n % 32 == 0 and block_k = 64 * 2^j, got block ", block_n, " x ",
              block_k, ", x ", x.sizes(), " ", x.scalar_type(), ", w ", w.sizes(), " ", w.scalar_type());
  if (blocked) {
    TORCH_CHECK(block_n % 32 == 0 && block_k % 64 == 0, "w8_gemv: blocks need block_n % 32 == 0 and "
                "block_k % 64 == 0, got ", block_n, " x ", block_k);
    const int64_t nb = (n + block_n - 1) / block_n, kb = (k + block_k - 1) / block_k;
    TORCH_CHECK(scale.sizes() == at::IntArrayRef({nb, kb}), "w8_gemv: block scale must be [", nb, ", ", kb,
                "], got ", scale.sizes());
  } else {
    TORCH_CHECK(scale.numel() == n, "w8_gemv: scale must hold one value per output channel (", n, "), got ",
                scale.sizes());
  }
  TORCH_CHECK(scale.device() == x.device() && scale.scalar_type() == at::kFloat && scale.is_contiguous(),
              "w8_gemv: scale must be contiguous float32 on ", x.device(), ", got ", scale.scalar_type(), " on ",
              scale.device());
  const at::Tensor bias_f32 = float_bias(bias, n, x.device(), "w8_gemv");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty({m, swiglu ? n / 2 : n}, x.options());
  W8GemvProblem p{x.data_ptr(), static_cast<const uint8_t*>(w.data_ptr()), scale.data_ptr<float>(),
                  bias_f32.defined() ? bias_f32.data_ptr<float>() : nullptr, y.data_ptr(), static_cast<int>(m),
                  static_cast<int>(n), static_cast<int>(k), static_cast<int>(blocked ? block_n : 0),
                  static_cast<int>(blocked ? block_k : 0), kind, format, pdl != 0};
  p.swiglu = swiglu != 0;
  if (prefetch.has_value() && prefetch->device() == x.device() && prefetch->is_contiguous()) {
    p.prefetch = prefetch->data_ptr();
    p.prefetch_bytes = prefetch_range_bytes(prefetch->numel() * prefetch->element_size());
  }
  launch_w8_gemv(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

// The entry points of libqtool_sm90 once Python has loaded it with RTLD_GLOBAL; null before.
template <typename Fn>
Fn sm90_symbol(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name));
}

// d = (a_scale[m] * (a @ b^T) * b_scale[n] + bias[n]) in out_dtype; a [m, k], b [n, k] int8 or e4m3.
at::Tensor sm90_scaled_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                          const at::Tensor& b_scale, const std::optional<at::Tensor>& bias, at::ScalarType out_dtype,
                          int64_t config) {
  const auto run = sm90_symbol<QtoolSm90ScaledMm>("qtool_sm90_scaled_mm");
  const auto workspace_of = sm90_symbol<QtoolSm90Workspace>("qtool_sm90_workspace");
  TORCH_CHECK(run != nullptr && workspace_of != nullptr,
              "sm90_scaled_mm: libqtool_sm90 is not loaded (kernels/sm90.py load())");
  TORCH_CHECK(a.scalar_type() == b.scalar_type() && (a.scalar_type() == at::kChar || a.scalar_type() == at::kFloat8_e4m3fn),
              "sm90_scaled_mm: a and b must both be int8 or both float8_e4m3fn, got ", a.scalar_type(), " and ",
              b.scalar_type());
  TORCH_CHECK(out_dtype == at::kBFloat16 || out_dtype == at::kHalf, "sm90_scaled_mm: out_dtype must be bfloat16 or "
              "float16, got ", out_dtype);
  const int64_t m = a.size(0), k = a.size(1), n = b.size(0);
  TORCH_CHECK(a.is_cuda() && a.dim() == 2 && b.dim() == 2 && b.size(1) == k && a.is_contiguous() && b.is_contiguous() &&
                  b.device() == a.device() && k % 16 == 0 && n % 8 == 0,
              "sm90_scaled_mm: a [m, k] and b [n, k] must be contiguous on one CUDA device with k % 16 == 0 and "
              "n % 8 == 0, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(a_scale.numel() == m && b_scale.numel() == n && a_scale.scalar_type() == at::kFloat &&
                  b_scale.scalar_type() == at::kFloat && a_scale.is_contiguous() && b_scale.is_contiguous(),
              "sm90_scaled_mm: scales must be contiguous float32 with ", m, " and ", n, " values, got ",
              a_scale.sizes(), " and ", b_scale.sizes());
  const at::Tensor bias_f32 = float_bias(bias, n, a.device(), "sm90_scaled_mm");
  const c10::cuda::CUDAGuard guard(a.device());
  at::Tensor d = at::empty({m, n}, a.options().dtype(out_dtype));
  if (m == 0) return d;
  sm90::ScaledMmArgs args{a.data_ptr(), b.data_ptr(), a_scale.data_ptr<float>(), b_scale.data_ptr<float>(),
                          bias_f32.defined() ? bias_f32.data_ptr<float>() : nullptr, d.data_ptr(), nullptr, 0,
                          static_cast<int>(m), static_cast<int>(n), static_cast<int>(k),
                          a.scalar_type() == at::kFloat8_e4m3fn ? 1 : 0, out_dtype == at::kHalf ? 1 : 0,
                          static_cast<int>(config)};
  const size_t bytes = workspace_of(&args);
  at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, a.options().dtype(at::kByte));
  args.workspace = bytes > 0 ? workspace.data_ptr() : nullptr;
  args.workspace_bytes = bytes;
  const char* err = run(&args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == nullptr, "sm90_scaled_mm: ", err, " (m=", m, ", n=", n, ", k=", k, ")");
  return d;
}

}  // namespace
}  // namespace qtool

TORCH_LIBRARY_FRAGMENT(qtool_cuda, m) {
  m.def("act_quant(Tensor x, str fmt, int group_size, Tensor? static_scale) -> (Tensor, Tensor)");
  m.def("w8_gemv(Tensor x, Tensor w, Tensor scale, Tensor? bias, int block_n, int block_k, int pdl=0, Tensor? prefetch=None, "
        "int swiglu=0) -> Tensor");
  m.def("sm90_scaled_mm(Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, Tensor? bias, ScalarType out_dtype, int config=0) -> Tensor");
}

TORCH_LIBRARY_IMPL(qtool_cuda, CUDA, m) {
  m.impl("act_quant", &qtool::act_quant);
  m.impl("w8_gemv", &qtool::w8_gemv);
  m.impl("sm90_scaled_mm", &qtool::sm90_scaled_mm);
}
