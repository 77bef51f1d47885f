// CUDA kernel of the z-buffer rasterizer: one thread per triangle max-reduces its pixels' keys
// with 64-bit atomics, then one thread per pixel writes the winner's barycentric weights.
#include "rasterize.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace get3dhuman::rasterize {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

__global__ void cover_kernel(const float* vertices, const int64_t* faces, int64_t face_count, int64_t height,
                             int64_t width, unsigned long long* keys) {
  const int64_t face = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (face >= face_count) return;
  const Triangle t = load_triangle(vertices, faces, face, height, width);
  if (!t.valid) return;
  int64_t first_row, last_row;
  pixel_range(min3(t.y), max3(t.y), height, &first_row, &last_row);
  cover_rows(t, face, first_row, last_row, width,
             [&](int64_t pixel, uint64_t key) { atomicMax(keys + pixel, static_cast<unsigned long long>(key)); });
}

__global__ void resolve_kernel(const float* vertices, const int64_t* faces, const unsigned long long* keys,
                               int64_t height, int64_t width, int64_t* face_index, float* weights) {
  const int64_t pixel = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pixel < height * width) resolve_pixel(vertices, faces, keys[pixel], pixel, height, width, face_index, weights);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rasterize_cuda(const at::Tensor& vertices_in, const at::Tensor& faces_in,
                                                  int64_t height, int64_t width) {
  check_args(vertices_in, faces_in, height, width);
  const c10::cuda::CUDAGuard guard(vertices_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor vertices = vertices_in.contiguous(), faces = faces_in.contiguous();
  const int64_t face_count = faces.size(0), pixels = height * width;
  at::Tensor keys = at::zeros({pixels}, faces.options());
  auto* key_data = reinterpret_cast<unsigned long long*>(keys.mutable_data_ptr<int64_t>());
  at::Tensor face_index = at::empty({height, width}, faces.options());
  at::Tensor weights = at::zeros({height, width, 3}, vertices.options());
  if (face_count > 0) {
    cover_kernel<<<blocks_for(face_count), kThreads, 0, stream>>>(
        vertices.const_data_ptr<float>(), faces.const_data_ptr<int64_t>(), face_count, height, width, key_data);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  resolve_kernel<<<blocks_for(pixels), kThreads, 0, stream>>>(vertices.const_data_ptr<float>(),
                                                              faces.const_data_ptr<int64_t>(), key_data, height,
                                                              width, face_index.mutable_data_ptr<int64_t>(),
                                                              weights.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {face_index, weights};
}

TORCH_LIBRARY_IMPL(get3dhuman, CUDA, m) { m.impl("rasterize", &rasterize_cuda); }

}  // namespace get3dhuman::rasterize
