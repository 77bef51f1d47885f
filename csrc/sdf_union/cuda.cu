// CUDA kernel of the smooth union of primitives: one thread per point; the small primitive
// tables are read through the read-only cache.
#include "sdf_union.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace get3dhuman::sdf {
namespace {

constexpr int kThreads = 256;

template <bool kGradient>
__global__ void sdf_union_kernel(const float* __restrict__ points, const float* __restrict__ rows,
                                 const int32_t* __restrict__ kinds, const int32_t* __restrict__ parts,
                                 int64_t total, int64_t count, int64_t primitive_count, float blend, float absent,
                                 float* __restrict__ distance, float* __restrict__ gradient,
                                 int64_t* __restrict__ nearest) {
  const int64_t index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= total) return;
  const float x = points[3 * index], y = points[3 * index + 1], z = points[3 * index + 2];
  evaluate<kGradient, 1>(rows + (index / count) * primitive_count * kWidth, kinds, parts, primitive_count, blend,
                         absent, &x, &y, &z, distance + index, kGradient ? gradient + 3 * index : nullptr,
                         nearest + index);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_union_cuda(const at::Tensor& points_in,
                                                              const at::Tensor& primitives_in,
                                                              const at::Tensor& kinds_in, const at::Tensor& parts_in,
                                                              double blend, double absent, bool with_gradient) {
  check_args(points_in, primitives_in, kinds_in, parts_in, blend);
  const c10::cuda::CUDAGuard guard(points_in.device());
  const at::Tensor points = points_in.contiguous(), primitives = primitives_in.contiguous();
  const at::Tensor kinds = kinds_in.contiguous(), parts = parts_in.contiguous();
  const int64_t batch = points.size(0), count = points.size(1), total = batch * count;
  at::Tensor distance = at::empty({batch, count}, points.options());
  at::Tensor gradient = at::empty({with_gradient ? batch : 0, count, 3}, points.options());
  at::Tensor nearest = at::empty({batch, count}, points.options().dtype(at::kLong));
  if (total > 0) {
    const int blocks = static_cast<int>((total + kThreads - 1) / kThreads);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    (with_gradient ? sdf_union_kernel<true> : sdf_union_kernel<false>)<<<blocks, kThreads, 0, stream>>>(
        points.const_data_ptr<float>(), primitives.const_data_ptr<float>(), kinds.const_data_ptr<int32_t>(),
        parts.const_data_ptr<int32_t>(), total, count, primitives.size(1), static_cast<float>(blend),
        static_cast<float>(absent), distance.mutable_data_ptr<float>(),
        with_gradient ? gradient.mutable_data_ptr<float>() : nullptr, nearest.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {distance, gradient, nearest};
}

TORCH_LIBRARY_IMPL(get3dhuman, CUDA, m) { m.impl("sdf_union", &sdf_union_cuda); }

}  // namespace get3dhuman::sdf
