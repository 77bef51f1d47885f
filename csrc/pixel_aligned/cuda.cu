// CUDA kernels of pixel-aligned sampling. A warp serves one point: its lanes stride over the
// channels, so reads of the channels-last map and writes of the point-major output coalesce.
#include "pixel_aligned.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace get3dhuman::pixel_aligned {
namespace {

constexpr int kWarp = 32;
constexpr int kPointsPerBlock = 8;  // warps per block

int64_t point_blocks(int64_t points) { return (points + kPointsPerBlock - 1) / kPointsPerBlock; }

template <typename scalar_t, typename acc_t>
__global__ void sample_forward_kernel(const scalar_t* __restrict__ map, const scalar_t* __restrict__ pts,
                                      const scalar_t* __restrict__ cal, const scalar_t* __restrict__ bias,
                                      const scalar_t* __restrict__ depth_weight, scalar_t* __restrict__ out,
                                      int64_t total, int64_t count, int64_t channels, int64_t height,
                                      int64_t width, acc_t depth_scale) {
  const int64_t i = int64_t(blockIdx.x) * kPointsPerBlock + threadIdx.y;
  if (i >= total) return;
  const int64_t b = i / count;
  const auto c = locate<scalar_t, acc_t>(pts + 3 * i, cal + 16 * b, height, width, depth_scale);
  const scalar_t* image = map + b * height * width * channels;
  scalar_t* row = out + i * (channels + 1);
  for (int64_t k = threadIdx.x; k < channels; k += kWarp) {
    acc_t value = bias != nullptr ? acc_t(bias[k]) + acc_t(depth_weight[k]) * c.depth : acc_t(0);
#pragma unroll
    for (int corner = 0; corner < 4; ++corner) {
      value += c.weight[corner] * acc_t(image[c.index[corner] * channels + k]);
    }
    row[k] = static_cast<scalar_t>(value);
  }
  if (threadIdx.x == 0) row[channels] = static_cast<scalar_t>(c.depth);
}

template <typename acc_t>
__device__ acc_t warp_sum(acc_t value) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

template <typename scalar_t, typename acc_t>
__global__ void sample_backward_kernel(const scalar_t* __restrict__ map, const scalar_t* __restrict__ pts,
                                       const scalar_t* __restrict__ cal, const scalar_t* __restrict__ grad,
                                       scalar_t* __restrict__ grad_uv, acc_t* __restrict__ grad_map,
                                       int64_t total, int64_t count, int64_t channels, int64_t height,
                                       int64_t width) {
  const int64_t i = int64_t(blockIdx.x) * kPointsPerBlock + threadIdx.y;
  if (i >= total) return;  // whole warps leave together: i is uniform across a warp
  const int64_t b = i / count;
  const auto c = locate<scalar_t, acc_t>(pts + 3 * i, cal + 16 * b, height, width, acc_t(0));
  const scalar_t* image = map + b * height * width * channels;
  acc_t* grad_image = grad_map != nullptr ? grad_map + b * height * width * channels : nullptr;
  const scalar_t* g = grad + i * (channels + 1);
  acc_t dot[4] = {0, 0, 0, 0};
  for (int64_t k = threadIdx.x; k < channels; k += kWarp) {
    const acc_t gk = acc_t(g[k]);
#pragma unroll
    for (int corner = 0; corner < 4; ++corner) {
      if (!c.valid[corner]) continue;
      const int64_t offset = c.index[corner] * channels + k;
      dot[corner] += gk * acc_t(image[offset]);
      if (grad_image != nullptr) atomicAdd(grad_image + offset, c.weight[corner] * gk);
    }
  }
#pragma unroll
  for (int corner = 0; corner < 4; ++corner) dot[corner] = warp_sum(dot[corner]);
  if (threadIdx.x == 0) {
    const acc_t gx = (dot[1] - dot[0]) * (acc_t(1) - c.ty) + (dot[3] - dot[2]) * c.ty;
    const acc_t gy = (dot[2] - dot[0]) * (acc_t(1) - c.tx) + (dot[3] - dot[1]) * c.tx;
    grad_uv[2 * i] = static_cast<scalar_t>(gx * acc_t(width - 1) / acc_t(2));
    grad_uv[2 * i + 1] = static_cast<scalar_t>(gy * acc_t(height - 1) / acc_t(2));
  }
}

}  // namespace

at::Tensor sample_cuda(const at::Tensor& features, const at::Tensor& points, const at::Tensor& calib,
                       double depth_scale, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& depth_weight) {
  const Prepared in = prepare(features, points, calib, bias, depth_weight, std::nullopt);
  const c10::cuda::CUDAGuard guard(features.device());
  at::Tensor out = at::empty({in.batch, in.count, in.channels + 1}, features.options());
  const int64_t total = in.total();
  if (total == 0) return out;
  const dim3 block(kWarp, kPointsPerBlock);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "pixel_aligned_sample_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    sample_forward_kernel<scalar_t, acc_t><<<point_blocks(total), block, 0, stream>>>(
        in.map.const_data_ptr<scalar_t>(), in.points.const_data_ptr<scalar_t>(),
        in.calib.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(in.bias),
        data_or_null<scalar_t>(in.depth_weight), out.mutable_data_ptr<scalar_t>(), total, in.count,
        in.channels, in.height, in.width, static_cast<acc_t>(depth_scale));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> sample_backward_cuda(const at::Tensor& grad_out,
                                                        const at::Tensor& features,
                                                        const at::Tensor& points,
                                                        const at::Tensor& calib,
                                                        bool features_requires_grad) {
  const Prepared in = prepare(features, points, calib, std::nullopt, std::nullopt, grad_out);
  const c10::cuda::CUDAGuard guard(features.device());
  at::Tensor grad_uv = at::empty({in.batch, in.count, 2}, points.options());
  at::Tensor grad_features;
  const int64_t total = in.total();
  const dim3 block(kWarp, kPointsPerBlock);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "pixel_aligned_sample_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Accumulate in acc_t (float for half/bfloat16): atomics on 16-bit values lose precision.
    at::Tensor accum;
    if (features_requires_grad) {
      accum = at::zeros({in.batch, in.height, in.width, in.channels},
                        features.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    }
    if (total > 0) {
      sample_backward_kernel<scalar_t, acc_t><<<point_blocks(total), block, 0, stream>>>(
          in.map.const_data_ptr<scalar_t>(), in.points.const_data_ptr<scalar_t>(),
          in.calib.const_data_ptr<scalar_t>(), in.grad.const_data_ptr<scalar_t>(),
          grad_uv.mutable_data_ptr<scalar_t>(), accum.defined() ? accum.mutable_data_ptr<acc_t>() : nullptr,
          total, in.count, in.channels, in.height, in.width);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (accum.defined()) grad_features = accum.permute({0, 3, 1, 2}).to(features.scalar_type());
  });
  return {grad_features, grad_uv};
}

TORCH_LIBRARY_IMPL(get3dhuman, CUDA, m) {
  m.impl("pixel_aligned_sample", &sample_cuda);
  m.impl("pixel_aligned_sample_backward", &sample_backward_cuda);
}

}  // namespace get3dhuman::pixel_aligned
