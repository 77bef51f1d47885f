// Pixel-aligned sampling: orthographic projection by a [B,4,4] calibration, bilinear
// sampling of a channels-last feature map (align_corners=True, zero padding) and a depth
// feature z * depth_scale. The output is point-major [B, N, C + 1]:
//   out[b, n, k] = bias[k] + depth_weight[k] * zf + sum_corners w * F[b, y, x, k]   (k < C)
//   out[b, n, C] = zf,   zf = z_ndc * depth_scale
// bias/depth_weight are optional; they let a decoder's first linear layer, applied to the
// feature map beforehand, receive its bias and depth term in the same pass.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>

namespace get3dhuman::pixel_aligned {

// The four bilinear corners of one projected point. Invalid corners (outside the map) have
// weight 0 and index 0, so kernels can read them unconditionally and stay branch-free.
template <typename acc_t>
struct Corners {
  int64_t index[4];  // pixel offsets y * W + x of (x0,y0), (x1,y0), (x0,y1), (x1,y1)
  acc_t weight[4];
  bool valid[4];
  acc_t tx, ty;      // fractional position inside the cell
  acc_t depth;       // z_ndc * depth_scale
};

// Projects one point: ndc = calib[:3,:3] @ p + calib[:3,3]; the 4th row is ignored
// (orthographic). `calib` points at 16 row-major values.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline Corners<acc_t> locate(const scalar_t* point, const scalar_t* calib,
                                             int64_t height, int64_t width, acc_t depth_scale) {
  const acc_t px = point[0], py = point[1], pz = point[2];
  acc_t ndc[3];
  for (int r = 0; r < 3; ++r) {
    ndc[r] = acc_t(calib[4 * r]) * px + acc_t(calib[4 * r + 1]) * py +
             acc_t(calib[4 * r + 2]) * pz + acc_t(calib[4 * r + 3]);
  }
  Corners<acc_t> c;
  c.depth = ndc[2] * depth_scale;
  // Same formula as grid_sample's align_corners=True unnormalisation.
  const acc_t x = (ndc[0] + acc_t(1)) / acc_t(2) * acc_t(width - 1);
  const acc_t y = (ndc[1] + acc_t(1)) / acc_t(2) * acc_t(height - 1);
  // Far outside (or NaN): every corner invalid; also keeps floor() within int64 range.
  const bool inside_band = x > acc_t(-2) && x < acc_t(width + 1) && y > acc_t(-2) &&
                           y < acc_t(height + 1);
  const acc_t fx = inside_band ? std::floor(x) : acc_t(-2);
  const acc_t fy = inside_band ? std::floor(y) : acc_t(-2);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  c.tx = inside_band ? x - fx : acc_t(0);
  c.ty = inside_band ? y - fy : acc_t(0);
  const acc_t wx[2] = {acc_t(1) - c.tx, c.tx};
  const acc_t wy[2] = {acc_t(1) - c.ty, c.ty};
  for (int corner = 0; corner < 4; ++corner) {
    const int64_t cx = x0 + (corner & 1), cy = y0 + (corner >> 1);
    const bool valid = cx >= 0 && cx < width && cy >= 0 && cy < height;
    c.valid[corner] = valid;
    c.index[corner] = valid ? cy * width + cx : 0;
    c.weight[corner] = valid ? wx[corner & 1] * wy[corner >> 1] : acc_t(0);
  }
  return c;
}

// Memory-safety checks shared by the CPU and CUDA entry points. The Python wrapper performs
// the user-facing checks with full messages; these guard direct calls of the registered op.
inline void check_sample_args(const at::Tensor& features, const at::Tensor& points,
                              const at::Tensor& calib, const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& depth_weight) {
  TORCH_CHECK_VALUE(features.dim() == 4, "features must be [B, C, H, W], got ", features.sizes());
  TORCH_CHECK_VALUE(points.dim() == 3 && points.size(2) == 3, "points must be [B, N, 3], got ",
                    points.sizes());
  TORCH_CHECK_VALUE(calib.dim() == 3 && calib.size(1) == 4 && calib.size(2) == 4,
                    "calib must be [B, 4, 4], got ", calib.sizes());
  const int64_t batch = features.size(0);
  TORCH_CHECK_VALUE(points.size(0) == batch && calib.size(0) == batch,
                    "features, points and calib must share the batch size ", batch, ", got ",
                    points.size(0), " and ", calib.size(0));
  TORCH_CHECK_VALUE(features.size(2) >= 1 && features.size(3) >= 1,
                    "features must have a non-empty image, got ", features.sizes());
  TORCH_CHECK_TYPE(points.scalar_type() == features.scalar_type() &&
                       calib.scalar_type() == features.scalar_type(),
                   "points and calib must have the dtype of features (", features.scalar_type(),
                   "), got ", points.scalar_type(), " and ", calib.scalar_type());
  TORCH_CHECK_VALUE(points.device() == features.device() && calib.device() == features.device(),
                    "points and calib must be on the device of features (", features.device(), ")");
  for (const auto* optional : {&bias, &depth_weight}) {
    if (optional->has_value()) {
      const at::Tensor& t = optional->value();
      TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == features.size(1),
                        "bias and depth_weight must be [C] = [", features.size(1), "], got ",
                        t.sizes());
      TORCH_CHECK_TYPE(t.scalar_type() == features.scalar_type(),
                       "bias and depth_weight must have the dtype of features");
      TORCH_CHECK_VALUE(t.device() == features.device(),
                        "bias and depth_weight must be on the device of features");
    }
  }
}

inline void check_backward_args(const at::Tensor& grad_out, const at::Tensor& features,
                                const at::Tensor& points, const at::Tensor& calib) {
  check_sample_args(features, points, calib, std::nullopt, std::nullopt);
  TORCH_CHECK_VALUE(grad_out.dim() == 3 && grad_out.size(0) == features.size(0) &&
                        grad_out.size(1) == points.size(1) &&
                        grad_out.size(2) == features.size(1) + 1,
                    "grad_out must be [B, N, C + 1], got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == features.scalar_type(),
                   "grad_out must have the dtype of features");
  TORCH_CHECK_VALUE(grad_out.device() == features.device(),
                    "grad_out must be on the device of features");
}

// Validated inputs in the layouts the kernels index: a channels-last map and contiguous
// points, calib, and (when given) bias, depth_weight and grad. Absent tensors are undefined.
struct Prepared {
  at::Tensor map, points, calib, bias, depth_weight, grad;
  int64_t batch, channels, height, width, count;

  int64_t total() const { return batch * count; }
};

inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? tensor->contiguous() : at::Tensor();
}

template <typename T>
const T* data_or_null(const at::Tensor& tensor) {
  return tensor.defined() ? tensor.const_data_ptr<T>() : nullptr;
}

inline Prepared prepare(const at::Tensor& features, const at::Tensor& points, const at::Tensor& calib,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& depth_weight,
                        const std::optional<at::Tensor>& grad_out) {
  if (grad_out.has_value()) {
    check_backward_args(*grad_out, features, points, calib);
  } else {
    check_sample_args(features, points, calib, bias, depth_weight);
  }
  TORCH_CHECK_VALUE(bias.has_value() == depth_weight.has_value(),
                    "bias and depth_weight must be given together");
  return Prepared{features.contiguous(at::MemoryFormat::ChannelsLast),
                  points.contiguous(),
                  calib.contiguous(),
                  contiguous_or_undefined(bias),
                  contiguous_or_undefined(depth_weight),
                  contiguous_or_undefined(grad_out),
                  features.size(0),
                  features.size(1),
                  features.size(2),
                  features.size(3),
                  points.size(1)};
}

// Forward: [B, N, C + 1] point-major samples (see the file comment).
at::Tensor sample_cpu(const at::Tensor& features, const at::Tensor& points, const at::Tensor& calib,
                      double depth_scale, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& depth_weight);
// Backward of the bilinear part: (grad_features [B, C, H, W] channels-last, or an undefined
// tensor when not requested; grad_uv [B, N, 2], the gradient to the projected x/y in NDC).
// The depth, bias and calibration chain rule is done by the caller (cheap, per point).
std::tuple<at::Tensor, at::Tensor> sample_backward_cpu(const at::Tensor& grad_out,
                                                       const at::Tensor& features,
                                                       const at::Tensor& points,
                                                       const at::Tensor& calib,
                                                       bool features_requires_grad);

}  // namespace get3dhuman::pixel_aligned
