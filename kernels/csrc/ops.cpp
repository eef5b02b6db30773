// PyTorch bindings of the weight-only kernels (and the gated MLP's silu_mul), as ops in the `qtool_cuda` namespace:
//   torch.ops.qtool_cuda.wo_gemv      tensor-core GEMV, 1 <= m <= 8, or 32 with variant 3 (2-, 3-, 4-, 8-bit)
//   torch.ops.qtool_cuda.wo_gemm      tensor-core GEMM, any m (best for small to moderate m)
//   torch.ops.qtool_cuda.wo_gemm_v3   tensor-core GEMM for small m (5..64), deep weight stream, sm_90 clusters
//   torch.ops.qtool_cuda.dequant_int  dense [n, k_padded] weight for cuBLAS at large m (2-, 3-, 4-, 8-bit)
// All take the repacked layout of kernels/layout.py; qtool::weight_only_linear (declared in Python)
// dispatches to them by m. Every check names the tensor and the shape it got.
#include <algorithm>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "mlp.h"
#include "wo_kernels.h"

namespace qtool {
namespace {

Activation parse_activation(const std::string& name) {
  if (name == "none") return Activation::kNone;
  if (name == "silu") return Activation::kSilu;
  if (name == "gelu") return Activation::kGelu;
  TORCH_CHECK(false, "activation must be 'none', 'silu' or 'gelu', got '", name, "'");
}

ScalarKind scalar_kind(at::ScalarType dtype, const char* op) {
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, op, ": activations must be float16 or bfloat16, got ",
              dtype);
  return dtype == at::kHalf ? ScalarKind::kHalf : ScalarKind::kBFloat16;
}

int group_shift(int64_t group_size, int num_bits, const char* op) {
  if (group_size <= 0) return 31;  // one group per row
  int shift = 0;
  while ((int64_t{1} << shift) < group_size) ++shift;
  TORCH_CHECK(group_size >= min_group(num_bits) && (int64_t{1} << shift) == group_size, op,
              ": group_size must be a power of two >= ", min_group(num_bits), " for ", num_bits,
              "-bit weights, or -1 for one scale per row; got ", group_size);
  return shift;
}

PackedWeightView check_weight(const char* op,                         // op name for messages
                              const at::Tensor& qweight,              // [n_padded/16, k_padded/chunk, chunk_vecs, 4] int32
                              const at::Tensor& scale,                // [groups_padded, n_padded] float32
                              const std::optional<at::Tensor>& zero,  // like scale, or none
                              int64_t num_bits,                       // 2, 3, 4 or 8
                              int64_t group_size,                     // power of two >= 16, or -1
                              int64_t out_features) {                 // n
  TORCH_CHECK(num_bits == 2 || num_bits == 3 || num_bits == 4 || num_bits == 8, op,
              ": num_bits must be 2, 3, 4 or 8, got ", num_bits);
  const int bits = static_cast<int>(num_bits);
  TORCH_CHECK(qweight.is_cuda() && qweight.scalar_type() == at::kInt && qweight.dim() == 4 &&
                  qweight.size(2) == chunk_vecs(bits) && qweight.size(3) == 4 && qweight.is_contiguous(),
              op, ": qweight must be a contiguous CUDA int32 tensor [n_padded / 16, k_padded / ", chunk_k(bits), ", ",
              chunk_vecs(bits), ", 4] for ", bits, "-bit codes (kernels/layout.py), got ", qweight.scalar_type(), " ",
              qweight.sizes(), " on ", qweight.device());
  const int64_t n_padded = qweight.size(0) * kStripeRows;
  const int64_t k_padded = qweight.size(1) * chunk_k(bits);
  TORCH_CHECK(out_features > n_padded - kStripeRows && out_features <= n_padded, op, ": out_features=", out_features,
              " does not fit qweight ", qweight.sizes(), " (", qweight.size(0), " stripes of 16 rows)");
  TORCH_CHECK(k_padded % pad_k(bits) == 0, op, ": qweight ", qweight.sizes(), " covers k_padded=", k_padded,
              ", which is not a multiple of ", pad_k(bits));
  const int shift = group_shift(group_size, bits, op);
  const int64_t groups = group_size <= 0 ? 1 : (k_padded + group_size - 1) / group_size;
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.device() == qweight.device() &&
                  scale.sizes() == at::IntArrayRef({groups, n_padded}),
              op, ": scale must be contiguous float32 [groups_padded=", groups, ", n_padded=", n_padded,
              "] on qweight's device for group_size=", group_size, " and k_padded=", k_padded, ", got ",
              scale.scalar_type(), " ", scale.sizes(), " on ", scale.device());
  if (zero.has_value()) {
    TORCH_CHECK(zero->scalar_type() == at::kFloat && zero->is_contiguous() && zero->device() == qweight.device() &&
                    zero->sizes() == scale.sizes(),
                op, ": zero must be contiguous float32 shaped like scale ", scale.sizes(), ", got ",
                zero->scalar_type(), " ", zero->sizes(), " on ", zero->device());
  }
  return PackedWeightView{qweight.data_ptr<int32_t>(),
                          scale.data_ptr<float>(),
                          zero.has_value() ? zero->data_ptr<float>() : nullptr,
                          static_cast<int>(out_features),
                          static_cast<int>(n_padded),
                          static_cast<int>(k_padded),
                          shift,
                          static_cast<int>(num_bits)};
}

// The tensor-core GEMMs decode 4- and 8-bit chunks only; 2- and 3-bit weights take wo_gemv (up to 8
// tokens) and dequant_int + cuBLAS (kernels/weight_only.py).
void check_gemm_bits(const char* op, int64_t num_bits) {
  TORCH_CHECK(num_bits == 4 || num_bits == 8, op, ": num_bits must be 4 or 8 (2- and 3-bit weights run on wo_gemv ",
              "and dequant_int), got ", num_bits);
}

// Checks x and bias against the weight and fills everything but y and workspace.
WoProblem make_problem(const char* op, const at::Tensor& x, const PackedWeightView& w, const at::Tensor& qweight,
                       const std::optional<at::Tensor>& bias, at::Tensor& bias_f32, const std::string& activation) {
  TORCH_CHECK(x.device() == qweight.device() && x.dim() == 2 && x.size(1) == w.k_padded && x.is_contiguous(), op,
              ": x must be contiguous [m, k_padded=", w.k_padded, "] on ", qweight.device(), ", got ", x.sizes(),
              " on ", x.device());
  TORCH_CHECK(reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0, op,
              ": x must be 16-byte aligned (a fresh tensor, not an offset view)");
  if (bias.has_value()) {
    TORCH_CHECK(bias->device() == x.device() && bias->dim() == 1 && bias->size(0) == w.n, op,
                ": bias must be [out_features=", w.n, "] on ", x.device(), ", got ", bias->sizes(), " on ",
                bias->device());
    bias_f32 = bias->to(at::kFloat).contiguous();
  }
  return WoProblem{x.data_ptr(), w, bias.has_value() ? bias_f32.data_ptr<float>() : nullptr, nullptr, nullptr,
                   static_cast<int>(x.size(0)), scalar_kind(x.scalar_type(), op), parse_activation(activation)};
}


// What variant 7 (wo_split.cu) takes: 4-bit codes, groups >= 64, sm_90 (clusters), the slice's planes within the
// device's shared memory. Returns the device's SM count (the launch's plan).
int check_split(const at::Tensor& x, const PackedWeightView& w, int splits, int64_t group_size) {
  int major = 0, sms = 0, optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.device().index()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.device().index()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, x.device().index()));
  const int smem = wo_split_smem_bytes(std::max<int>(x.size(0), 1), w.k_padded, w.n_padded, w.zero != nullptr,
                                       splits, sms);
  TORCH_CHECK(w.num_bits == 4 && w.group_shift >= 6 && major >= 9 && smem <= optin, "wo_gemv: variant 7 (split) "
              "takes 4-bit weights with groups of >= 64 (or per channel) on sm_90 or newer, its K slice's planes "
              "within the block's shared memory (", optin, " bytes), got ", w.num_bits, "-bit, group_size ",
              group_size, " on sm_", major, "x, ", smem, " bytes for x ", x.sizes(), " and k_padded ", w.k_padded);
  return sms;
}

at::Tensor wo_gemv(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                   const std::optional<at::Tensor>& zero, const std::optional<at::Tensor>& bias, int64_t num_bits,
                   int64_t group_size, int64_t out_features, const std::string& activation,
                   const std::optional<at::Tensor>& prefetch, int64_t variant) {
  const PackedWeightView w = check_weight("wo_gemv", qweight, scale, zero, num_bits, group_size, out_features);
  const int64_t given = variant, splits = variant / kSplitsUnit;  // + kSplitsUnit s: forced splits (split only)
  variant %= kSplitsUnit;
  const bool pdl = variant >= kPdlFlag;  // + kPdlFlag: a static weight (wo_kernels.h)
  if (pdl) variant -= kPdlFlag;
  const bool split = variant == kSplitVariant;
  TORCH_CHECK(variant >= 0 && variant <= kSplitVariant && splits <= 8 && (split || splits == 0), "wo_gemv: variant "
              "must be 0 (default), 1 (lean), 2 (wide), 3 (stream), 4, 5 or 6 (planes: one, two or four stripes per "
              "block) or 7 (split; + ", kSplitsUnit, " s for s <= 8 splits), plus 16 for a static weight, got ", given);
  at::Tensor bias_f32;
  WoProblem p = make_problem("wo_gemv", x, w, qweight, bias, bias_f32, activation);
  const bool planes = variant >= 4 && !split;
  const int max_tokens = split ? (w.zero ? kSplitMaxAsymTokens : kSplitMaxTokens) : variant == 3 ? kMaxStreamTokens
                         : planes ? kPlanesMaxTokens : kMaxGemvTokens;
  TORCH_CHECK(p.m <= max_tokens, "wo_gemv: at most ", max_tokens, " tokens with variant ", variant, ", got x ",
              x.sizes());
  TORCH_CHECK(!planes || planes_take(w.num_bits, w.zero == nullptr, w.group_shift, std::max(p.m, 1), w.k_padded),
              "wo_gemv: variant ", variant, " (planes) takes symmetric 4-bit weights with groups of >= 64 (or per channel) and ",
              "at most ", kPlanesMaxBytes, " bytes of staged planes (2 * m * (K + ", kPlanesPadBytes, ")), got ",
              w.num_bits, "-bit, ", w.zero == nullptr ? "symmetric" : "asymmetric", ", group_size ", group_size,
              ", x ", x.sizes());
  const int num_sms = split ? check_split(x, w, static_cast<int>(splits), group_size) : 0;
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  if (p.m == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  p.y = y.data_ptr();
  if (prefetch.has_value() && prefetch->device() == x.device() && prefetch->is_contiguous()) {
    p.prefetch = prefetch->data_ptr();
    p.prefetch_bytes = prefetch_range_bytes(prefetch->numel() * prefetch->element_size());
  }
  p.gemv_variant = static_cast<int>(variant);
  p.pdl = pdl;
  if (split)
    C10_CUDA_CHECK(launch_wo_split(p, static_cast<int>(splits), num_sms, c10::cuda::getCurrentCUDAStream()));
  else if (variant == 3)
    launch_wo_stream(p, c10::cuda::getCurrentCUDAStream());
  else if (planes)
    launch_wo_planes(p, 1 << (variant - 4), c10::cuda::getCurrentCUDAStream());
  else
    launch_wo_gemv(p, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

// y [m, out_features] of `dtype` = x W^T + bias with x given as x_planes' planes and scales (wo_planes.cu, GIVEN).
at::Tensor wo_planes_gemv(const at::Tensor& planes, const at::Tensor& xscale, const at::Tensor& qweight,
                          const at::Tensor& scale, const std::optional<at::Tensor>& zero,
                          const std::optional<at::Tensor>& bias, int64_t group_size, int64_t out_features,
                          at::ScalarType dtype, int64_t variant, int64_t num_bits,
                          const std::optional<at::Tensor>& prefetch) {
  TORCH_CHECK(num_bits == 4 || ((num_bits == 2 || num_bits == 3) && !zero.has_value()), "wo_planes_gemv: 4-bit "
              "weights, or symmetric 2- and 3-bit ones, got ", num_bits, "-bit", zero.has_value() ? " with zero points" : "");
  const PackedWeightView w = check_weight("wo_planes_gemv", qweight, scale, zero, num_bits, group_size, out_features);
  const int64_t given = variant;
  const bool gated = variant >= kGatedFlag;  // interleaved gate/up rows: y = silu(gate) * up (planes.cuh)
  if (gated) variant -= kGatedFlag;
  const bool pdl = variant >= kPdlFlag;
  if (pdl) variant -= kPdlFlag;
  TORCH_CHECK(variant >= 0 && variant <= 3 && (!gated || (variant != 3 && out_features % 16 == 0)), "wo_planes_gemv: "
              "variant must be 0, 1 or 2 (one, two or four stripes per block) or 3 (the tile kernel), plus 16 for a "
              "static weight, plus 32 for interleaved gate/up rows (not on 3; out_features a multiple of 16), got ",
              given, " with out_features ", out_features);
  const bool tile = variant == 3;
  const int64_t m = planes.dim() == 2 ? planes.size(0) / 2 : -1;
  const int64_t max_m = tile ? kPlanesTileMaxTokens : num_bits == 4 ? kPlanesGivenMaxTokens : kPlanesMaxTokens;
  TORCH_CHECK(planes.device() == qweight.device() && planes.scalar_type() == at::kChar && planes.dim() == 2 &&
              planes.size(0) % 2 == 0 && planes.size(1) == w.k_padded && planes.is_contiguous() && m <= max_m,
              "wo_planes_gemv: planes must be contiguous int8 [2m, k_padded=", w.k_padded, "] with m <= ",
              kPlanesGivenMaxTokens, " (4-bit; ", kPlanesMaxTokens, " for 2- and 3-bit, ", kPlanesTileMaxTokens,
              " for the tile kernel) on ", qweight.device(), " (x_planes), got ", planes.sizes(), " ",
              planes.scalar_type(), " on ", planes.device(), " for ", num_bits, "-bit weights");
  int num_sms = 0;
  if (tile) {
    int major = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, planes.device().index()));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, planes.device().index()));
    TORCH_CHECK(num_bits == 4 && major >= 9 && (!zero.has_value() || m <= kPlanesTileMaxAsymTokens), "wo_planes_gemv: "
                "variant 3 (the tile kernel) takes 4-bit weights on sm_90 or newer, with zero points to ",
                kPlanesTileMaxAsymTokens, " tokens, got ", num_bits, "-bit", zero.has_value() ? " with zero points" : "",
                " on sm_", major, "x at ", m, " tokens");
  }
  TORCH_CHECK(xscale.device() == planes.device() && xscale.scalar_type() == at::kFloat && xscale.dim() == 1 &&
              xscale.size(0) == m && xscale.is_contiguous(), "wo_planes_gemv: xscale must be float32 [m=", m,
              "], got ", xscale.sizes(), " ", xscale.scalar_type());
  TORCH_CHECK(w.group_shift >= 6, "wo_planes_gemv: groups of >= 64 (or per channel), got group_size ", group_size);
  at::Tensor bias_f32;
  if (bias.has_value()) {
    TORCH_CHECK(bias->device() == planes.device() && bias->dim() == 1 && bias->size(0) == w.n,
                "wo_planes_gemv: bias must be [out_features=", w.n, "], got ", bias->sizes());
    bias_f32 = bias->to(at::kFloat).contiguous();
  }
  at::Tensor y = at::empty({m, gated ? out_features / 2 : out_features}, planes.options().dtype(dtype));
  if (m == 0) return y;
  const c10::cuda::CUDAGuard guard(planes.device());
  WoProblem p{nullptr, w, bias.has_value() ? bias_f32.data_ptr<float>() : nullptr, y.data_ptr(), nullptr,
              static_cast<int>(m), scalar_kind(dtype, "wo_planes_gemv"), Activation::kNone};
  p.gated_out = gated;
  p.planes = planes.data_ptr<int8_t>();
  p.xscale = xscale.data_ptr<float>();
  p.pdl = pdl;
  if (prefetch.has_value() && prefetch->device() == planes.device() && prefetch->is_contiguous()) {
    p.prefetch = prefetch->data_ptr();  // the next layer's weight, pulled into L2 after ours (wo_common.cuh)
    p.prefetch_bytes = prefetch_range_bytes(prefetch->numel() * prefetch->element_size());
  }
  if (tile)
    C10_CUDA_CHECK(launch_wo_planes_tile(p, num_sms, c10::cuda::getCurrentCUDAStream()));
  else if (num_bits == 4)
    launch_wo_planes(p, 1 << variant, c10::cuda::getCurrentCUDAStream());
  else
    launch_wo_planes_low(p, 1 << variant, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

// y [m, n] of `dtype` = x (w s_w)^T + bias, int8 rows and x as x_planes' planes in k order (wo_kernels.h).
at::Tensor w8_planes_gemv(const at::Tensor& planes, const at::Tensor& xscale, const at::Tensor& w,
                          const at::Tensor& wscale, const std::optional<at::Tensor>& bias, at::ScalarType dtype,
                          int64_t variant) {
  const bool pdl = variant >= kPdlFlag;
  if (pdl) variant -= kPdlFlag;
  TORCH_CHECK(variant >= 0 && variant <= 2, "w8_planes_gemv: variant must be 0, 1 or 2 (one, two or four stripes "
              "per block), plus 16 for a static weight, got ", variant + (pdl ? kPdlFlag : 0));
  TORCH_CHECK(w.is_cuda() && w.scalar_type() == at::kChar && w.dim() == 2 && w.is_contiguous() &&
              w.size(1) % 64 == 0 && w.size(1) <= kW8PlanesMaxK && w.size(0) >= 1 &&
              reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0, "w8_planes_gemv: w must be contiguous 16-byte "
              "aligned int8 [n, k] on CUDA with k a multiple of 64 and <= ", kW8PlanesMaxK, ", got ", w.sizes(), " ",
              w.scalar_type());
  const int64_t m = planes.dim() == 2 ? planes.size(0) / 2 : -1;
  TORCH_CHECK(planes.device() == w.device() && planes.scalar_type() == at::kChar && planes.dim() == 2 &&
              planes.size(0) % 2 == 0 && planes.size(1) == w.size(1) && planes.is_contiguous() &&
              m <= kPlanesMaxTokens, "w8_planes_gemv: planes must be contiguous int8 [2m, k=", w.size(1), "] with m <= ",
              kPlanesMaxTokens, " (x_planes, natural order), got ", planes.sizes(), " ", planes.scalar_type());
  TORCH_CHECK(xscale.device() == w.device() && xscale.scalar_type() == at::kFloat && xscale.dim() == 1 &&
              xscale.size(0) == m && xscale.is_contiguous(), "w8_planes_gemv: xscale must be float32 [m=", m,
              "], got ", xscale.sizes(), " ", xscale.scalar_type());
  TORCH_CHECK(wscale.device() == w.device() && wscale.scalar_type() == at::kFloat && wscale.numel() == w.size(0) &&
              wscale.is_contiguous(), "w8_planes_gemv: wscale must be float32 with one scale per row (", w.size(0),
              "), got ", wscale.sizes(), " ", wscale.scalar_type());
  at::Tensor bias_f32;
  if (bias.has_value()) {
    TORCH_CHECK(bias->device() == w.device() && bias->dim() == 1 && bias->size(0) == w.size(0),
                "w8_planes_gemv: bias must be [n=", w.size(0), "], got ", bias->sizes());
    bias_f32 = bias->to(at::kFloat).contiguous();
  }
  at::Tensor y = at::empty({m, w.size(0)}, planes.options().dtype(dtype));
  if (m == 0) return y;
  const c10::cuda::CUDAGuard guard(w.device());
  launch_w8_planes({planes.data_ptr<int8_t>(), xscale.data_ptr<float>(), w.data_ptr<int8_t>(),
                    wscale.data_ptr<float>(), bias.has_value() ? bias_f32.data_ptr<float>() : nullptr, y.data_ptr(),
                    static_cast<int>(m), static_cast<int>(w.size(0)), static_cast<int>(w.size(1)),
                    scalar_kind(dtype, "w8_planes_gemv"), pdl},
                   1 << variant, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor wo_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                   const std::optional<at::Tensor>& zero, const std::optional<at::Tensor>& bias, int64_t num_bits,
                   int64_t group_size, int64_t out_features, const std::string& activation) {
  check_gemm_bits("wo_gemm", num_bits);
  const PackedWeightView w = check_weight("wo_gemm", qweight, scale, zero, num_bits, group_size, out_features);
  at::Tensor bias_f32;
  WoProblem p = make_problem("wo_gemm", x, w, qweight, bias, bias_f32, activation);
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  if (p.m == 0) return y;
  const c10::cuda::CUDAGuard guard(x.device());
  int num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, x.device().index()));
  const int splits = wo_gemm_splits(p, num_sms);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor workspace;
  if (splits > 1) {
    // (QTOOL_WO_SPLIT) ordered: counters and slots; kept: kept sums and finish_split_k; fused: counters and kept
    // sums, one launch; a part that cannot be had falls back (fused without sums runs ordered)
    p.split_counters = wo_gemm_counters(wo_gemm_tiles(p), stream);
    p.workspace = wo_gemm_kept_sums(static_cast<size_t>(p.m) * out_features, stream);
    p.kept_sums = p.workspace != nullptr;
    if (!p.kept_sums) {
      workspace = p.split_counters != nullptr  // slots, each written in full by its split; else zeroed sums
                      ? at::empty({splits, x.size(0), out_features}, x.options().dtype(at::kFloat))
                      : at::zeros({x.size(0), out_features}, x.options().dtype(at::kFloat));
      p.workspace = workspace.data_ptr<float>();
    }
  }
  p.y = y.data_ptr();
  p.pdl = wo_gemm_pdl();
  launch_wo_gemm(p, splits, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

// v3 (wo_gemm_v3.cu) reduces split-K inside thread block clusters, which need sm_90; before that
// it would run unsplit (a few blocks on a large GPU at small n), so the op runs wo_gemm instead.
at::Tensor wo_gemm_v3(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                      const std::optional<at::Tensor>& zero, const std::optional<at::Tensor>& bias, int64_t num_bits,
                      int64_t group_size, int64_t out_features, const std::string& activation, int64_t variant) {
  TORCH_CHECK(variant >= 0 && variant <= 3, "wo_gemm_v3: variant must be 0..3, got ", variant);
  check_gemm_bits("wo_gemm_v3", num_bits);
  const PackedWeightView w = check_weight("wo_gemm_v3", qweight, scale, zero, num_bits, group_size, out_features);
  at::Tensor bias_f32;
  WoProblem p = make_problem("wo_gemm_v3", x, w, qweight, bias, bias_f32, activation);
  const c10::cuda::CUDAGuard guard(x.device());
  int major = 0, num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.device().index()));
  if (major < 9) return wo_gemm(x, qweight, scale, zero, bias, num_bits, group_size, out_features, activation);
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  if (p.m == 0) return y;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, x.device().index()));
  p.y = y.data_ptr();
  C10_CUDA_CHECK(launch_wo_gemm_v3(p, static_cast<int>(variant), num_sms, true, c10::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor dequant_int(const at::Tensor& qweight, const at::Tensor& scale, const std::optional<at::Tensor>& zero,
                       int64_t num_bits, int64_t group_size, int64_t out_features, at::ScalarType dtype) {
  const PackedWeightView w = check_weight("dequant_int", qweight, scale, zero, num_bits, group_size, out_features);
  const ScalarKind kind = scalar_kind(dtype, "dequant_int");
  at::Tensor out = at::empty({out_features, w.k_padded}, qweight.options().dtype(dtype));
  const c10::cuda::CUDAGuard guard(qweight.device());
  launch_dequant(w, kind, out.data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

// pdl: bit 0 the PDL twin; bit 1 (2) x's gate / up interleaved by 8 (quantize/mlp.py), [g 8 | u 8] per 16 columns.
at::Tensor silu_mul(const at::Tensor& x, int64_t pdl) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1, "silu_mul: x must be a CUDA [m, 2i] tensor with "
              "unit column stride, got ", x.sizes(), " with strides ", x.strides());
  const bool interleaved = (pdl & 2) != 0;
  TORCH_CHECK(x.size(1) % (interleaved ? 16 : 2) == 0 && (!interleaved || (x.stride(0) % 8 == 0 &&
              reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0)), "silu_mul: the last dimension must be ",
              interleaved ? "a multiple of 16 (gate / up interleaved by 8; rows 16-byte aligned)" : "even (gate | up)",
              ", got ", x.sizes(), " with strides ", x.strides());
  const ScalarKind kind = scalar_kind(x.scalar_type(), "silu_mul");
  at::Tensor y = at::empty({x.size(0), x.size(1) / 2}, x.options());
  const c10::cuda::CUDAGuard guard(x.device());
  launch_silu_mul({x.data_ptr(), y.data_ptr(), x.size(0), x.size(1) / 2, x.stride(0), kind, (pdl & 1) != 0,
                   interleaved}, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

}  // namespace qtool

TORCH_LIBRARY(qtool_cuda, m) {
  m.def(
      "wo_gemv(Tensor x, Tensor qweight, Tensor scale, Tensor? zero, Tensor? bias, int num_bits, int group_size, "
      "int out_features, str activation, Tensor? prefetch=None, int variant=0) -> Tensor");
  m.def(
      "wo_gemm(Tensor x, Tensor qweight, Tensor scale, Tensor? zero, Tensor? bias, int num_bits, int group_size, "
      "int out_features, str activation) -> Tensor");
  m.def(
      "wo_gemm_v3(Tensor x, Tensor qweight, Tensor scale, Tensor? zero, Tensor? bias, int num_bits, int group_size, "
      "int out_features, str activation, int variant=0) -> Tensor");
  m.def(
      "dequant_int(Tensor qweight, Tensor scale, Tensor? zero, int num_bits, int group_size, int out_features, "
      "ScalarType dtype) -> Tensor");
  m.def("silu_mul(Tensor x, int pdl=0) -> Tensor");  // the gated MLP's silu(gate) * up: mlp.h
  m.def(
      "w8_planes_gemv(Tensor planes, Tensor xscale, Tensor w, Tensor wscale, Tensor? bias, ScalarType dtype, "
      "int variant=0) -> Tensor");
  m.def(
      "wo_planes_gemv(Tensor planes, Tensor xscale, Tensor qweight, Tensor scale, Tensor? zero, Tensor? bias, "
      "int group_size, int out_features, ScalarType dtype, int variant=0, int num_bits=4, Tensor? prefetch=None) -> Tensor");
  // wo_gemm's switches (QTOOL_WO_SPLIT, QTOOL_WO_GEMM_PDL) read again: dev/step_ab.py's variants in one process
  m.def("reload_switches() -> ()", [] { qtool::reload_wo_switches(c10::cuda::getCurrentCUDAStream()); });
}

TORCH_LIBRARY_IMPL(qtool_cuda, CUDA, m) {
  m.impl("wo_gemv", &qtool::wo_gemv);
  m.impl("wo_gemm", &qtool::wo_gemm);
  m.impl("wo_gemm_v3", &qtool::wo_gemm_v3);
  m.impl("dequant_int", &qtool::dequant_int);
  m.impl("silu_mul", &qtool::silu_mul);
  m.impl("wo_planes_gemv", &qtool::wo_planes_gemv);
  m.impl("w8_planes_gemv", &qtool::w8_planes_gemv);
}
