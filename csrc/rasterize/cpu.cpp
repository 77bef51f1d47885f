// CPU kernel of the z-buffer rasterizer: bands of rows in parallel (each band walks every
// triangle and keeps the pixels of its rows, so no two threads write one pixel), then the
// winners' barycentric weights per pixel.
#include "rasterize.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace get3dhuman::rasterize {
namespace {

constexpr int64_t kRowGrain = 8;
constexpr int64_t kPixelGrain = 4096;

}  // namespace

std::tuple<at::Tensor, at::Tensor> rasterize_cpu(const at::Tensor& vertices_in, const at::Tensor& faces_in,
                                                 int64_t height, int64_t width) {
  check_args(vertices_in, faces_in, height, width);
  const at::Tensor vertices = vertices_in.contiguous(), faces = faces_in.contiguous();
  const float* vertex_data = vertices.const_data_ptr<float>();
  const int64_t* face_data = faces.const_data_ptr<int64_t>();
  const int64_t face_count = faces.size(0);
  at::Tensor keys_tensor = at::zeros({height * width}, faces.options());
  auto* keys = reinterpret_cast<uint64_t*>(keys_tensor.mutable_data_ptr<int64_t>());

  at::parallel_for(0, height, kRowGrain, [&](int64_t row_begin, int64_t row_end) {
    for (int64_t face = 0; face < face_count; ++face) {
      const Triangle t = load_triangle(vertex_data, face_data, face, height, width);
      if (!t.valid) continue;
      int64_t first_row, last_row;
      pixel_range(min3(t.y), max3(t.y), height, &first_row, &last_row);
      cover_rows(t, face, std::max(first_row, row_begin), std::min(last_row, row_end - 1), width,
                 [&](int64_t pixel, uint64_t key) { keys[pixel] = std::max(keys[pixel], key); });
    }
  });

  at::Tensor face_index = at::empty({height, width}, faces.options());
  at::Tensor weights_out = at::zeros({height, width, 3}, vertices.options());
  int64_t* index_data = face_index.mutable_data_ptr<int64_t>();
  float* weight_data = weights_out.mutable_data_ptr<float>();
  at::parallel_for(0, height * width, kPixelGrain, [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      resolve_pixel(vertex_data, face_data, keys[pixel], pixel, height, width, index_data, weight_data);
    }
  });
  return {face_index, weights_out};
}

TORCH_LIBRARY_IMPL(get3dhuman, CPU, m) { m.impl("rasterize", &rasterize_cpu); }

}  // namespace get3dhuman::rasterize
