// CPU kernels of pixel-aligned sampling. Gathers read a channels-last map, so each corner
// is one contiguous run of C values and the channel loop vectorises.
#include "pixel_aligned.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

namespace get3dhuman::pixel_aligned {
namespace {

// Points per parallel task: enough work to amortise scheduling, small enough to balance.
constexpr int64_t kPointGrain = 256;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// The wheel targets baseline x86-64; clone the hot loop for AVX2/AVX-512 machines.
#define GET3DHUMAN_CPU_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define GET3DHUMAN_CPU_CLONES
#endif

// out[k] = base[k] + sum_c w[c] * corner[c][k]; `base` is bias + depth_weight * depth
// (or zero). float gets its own multiversioned copy; other types use the template.
GET3DHUMAN_CPU_CLONES
void blend_float(float* __restrict out, const float* __restrict c0, const float* __restrict c1,
                 const float* __restrict c2, const float* __restrict c3, float w0, float w1,
                 float w2, float w3, const float* __restrict bias,
                 const float* __restrict depth_weight, float depth, int64_t channels) {
  if (bias != nullptr) {
    for (int64_t k = 0; k < channels; ++k) {
      out[k] = bias[k] + depth_weight[k] * depth + w0 * c0[k] + w1 * c1[k] + w2 * c2[k] +
               w3 * c3[k];
    }
  } else {
    for (int64_t k = 0; k < channels; ++k) {
      out[k] = w0 * c0[k] + w1 * c1[k] + w2 * c2[k] + w3 * c3[k];
    }
  }
}

template <typename scalar_t, typename acc_t>
void blend(scalar_t* out, const scalar_t* const corner[4], const acc_t weight[4],
           const scalar_t* bias, const scalar_t* depth_weight, acc_t depth, int64_t channels) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    blend_float(out, corner[0], corner[1], corner[2], corner[3], weight[0], weight[1], weight[2],
                weight[3], bias, depth_weight, depth, channels);
  } else {
    for (int64_t k = 0; k < channels; ++k) {
      acc_t value = bias != nullptr ? acc_t(bias[k]) + acc_t(depth_weight[k]) * depth : acc_t(0);
      for (int c = 0; c < 4; ++c) value += weight[c] * acc_t(corner[c][k]);
      out[k] = scalar_t(value);
    }
  }
}

}  // namespace

at::Tensor sample_cpu(const at::Tensor& features, const at::Tensor& points, const at::Tensor& calib,
                      double depth_scale, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& depth_weight) {
  const Prepared in = prepare(features, points, calib, bias, depth_weight, std::nullopt);
  const int64_t channels = in.channels, height = in.height, width = in.width, count = in.count;
  at::Tensor out = at::empty({in.batch, count, channels + 1}, features.options());
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "pixel_aligned_sample_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* map_ptr = in.map.const_data_ptr<scalar_t>();
    const scalar_t* pts_ptr = in.points.const_data_ptr<scalar_t>();
    const scalar_t* cal_ptr = in.calib.const_data_ptr<scalar_t>();
    const scalar_t* bias_ptr = data_or_null<scalar_t>(in.bias);
    const scalar_t* dw_ptr = data_or_null<scalar_t>(in.depth_weight);
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    const acc_t scale = static_cast<acc_t>(depth_scale);
    at::parallel_for(0, in.total(), kPointGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / count;
        const auto c = locate<scalar_t, acc_t>(pts_ptr + 3 * i, cal_ptr + 16 * b, height, width, scale);
        const scalar_t* image = map_ptr + b * height * width * channels;
        const scalar_t* corner[4];
        for (int k = 0; k < 4; ++k) corner[k] = image + c.index[k] * channels;
        scalar_t* row = out_ptr + i * (channels + 1);
        blend<scalar_t, acc_t>(row, corner, c.weight, bias_ptr, dw_ptr, c.depth, channels);
        row[channels] = static_cast<scalar_t>(c.depth);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sample_backward_cpu(const at::Tensor& grad_out,
                                                       const at::Tensor& features,
                                                       const at::Tensor& points,
                                                       const at::Tensor& calib,
                                                       bool features_requires_grad) {
  const Prepared in = prepare(features, points, calib, std::nullopt, std::nullopt, grad_out);
  const int64_t batch = in.batch, channels = in.channels, height = in.height, width = in.width;
  const int64_t count = in.count;
  at::Tensor grad_uv = at::empty({batch, count, 2}, points.options());
  at::Tensor grad_features;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "pixel_aligned_sample_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* map_ptr = in.map.const_data_ptr<scalar_t>();
    const scalar_t* pts_ptr = in.points.const_data_ptr<scalar_t>();
    const scalar_t* cal_ptr = in.calib.const_data_ptr<scalar_t>();
    const scalar_t* grad_ptr = in.grad.const_data_ptr<scalar_t>();
    const int64_t row = channels + 1;
    const acc_t half_w = acc_t(width - 1) / acc_t(2), half_h = acc_t(height - 1) / acc_t(2);

    // Gradient to the projected x/y: one pass over points.
    scalar_t* guv_ptr = grad_uv.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, batch * count, kPointGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / count;
        const auto c = locate<scalar_t, acc_t>(pts_ptr + 3 * i, cal_ptr + 16 * b, height, width, acc_t(0));
        const scalar_t* image = map_ptr + b * height * width * channels;
        const scalar_t* g = grad_ptr + i * row;
        acc_t dot[4] = {0, 0, 0, 0};
        for (int k = 0; k < 4; ++k) {
          if (!c.valid[k]) continue;
          const scalar_t* f = image + c.index[k] * channels;
          acc_t sum = 0;
          for (int64_t ch = 0; ch < channels; ++ch) sum += acc_t(g[ch]) * acc_t(f[ch]);
          dot[k] = sum;
        }
        const acc_t gx = (dot[1] - dot[0]) * (acc_t(1) - c.ty) + (dot[3] - dot[2]) * c.ty;
        const acc_t gy = (dot[2] - dot[0]) * (acc_t(1) - c.tx) + (dot[3] - dot[1]) * c.tx;
        guv_ptr[2 * i] = static_cast<scalar_t>(gx * half_w);
        guv_ptr[2 * i + 1] = static_cast<scalar_t>(gy * half_h);
      }
    });

    if (!features_requires_grad) return;
    // Scatter to the map. Threads own disjoint channel ranges, so there are no races and the
    // summation order (point order) is deterministic.
    at::Tensor accum = at::zeros({batch, height, width, channels}, features.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    acc_t* acc_ptr = accum.mutable_data_ptr<acc_t>();
    const int64_t channel_grain = std::max<int64_t>(8, channels / std::max(1, at::get_num_threads()));
    at::parallel_for(0, channels, channel_grain, [&](int64_t ch_begin, int64_t ch_end) {
      for (int64_t i = 0; i < batch * count; ++i) {
        const int64_t b = i / count;
        const auto c = locate<scalar_t, acc_t>(pts_ptr + 3 * i, cal_ptr + 16 * b, height, width, acc_t(0));
        const scalar_t* g = grad_ptr + i * row;
        acc_t* image = acc_ptr + b * height * width * channels;
        for (int k = 0; k < 4; ++k) {
          if (!c.valid[k]) continue;
          acc_t* dst = image + c.index[k] * channels;
          const acc_t w = c.weight[k];
          for (int64_t ch = ch_begin; ch < ch_end; ++ch) dst[ch] += w * acc_t(g[ch]);
        }
      }
    });
    // [B, H, W, C] memory viewed as a channels-last [B, C, H, W] tensor.
    grad_features = accum.permute({0, 3, 1, 2}).to(features.scalar_type());
  });
  return {grad_features, grad_uv};
}

TORCH_LIBRARY_IMPL(get3dhuman, CPU, m) {
  m.impl("pixel_aligned_sample", &sample_cpu);
  m.impl("pixel_aligned_sample_backward", &sample_backward_cpu);
}

}  // namespace get3dhuman::pixel_aligned
