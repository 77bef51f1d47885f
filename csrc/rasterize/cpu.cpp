// CPU kernel of the z-buffer rasterizer: bands of rows in parallel (each band walks every
// triangle and keeps the pixels of its rows, so no two threads write one pixel), then the
// winners' barycentric weights per pixel.
#include "rasterize.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

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
      int64_t first_row, last_row, first_column, last_column;
      pixel_range(min3(t.y), max3(t.y), height, &first_row, &last_row);
      if (first_row < row_begin) first_row = row_begin;
      if (last_row > row_end - 1) last_row = row_end - 1;
      if (first_row > last_row) continue;
      pixel_range(min3(t.x), max3(t.x), width, &first_column, &last_column);
      for (int64_t row = first_row; row <= last_row; ++row) {
        for (int64_t column = first_column; column <= last_column; ++column) {
          float weights[3];
          if (!barycentric(t, float(column), float(row), weights)) continue;
          const uint64_t key = make_key(interpolated_depth(t, weights), face);
          uint64_t& pixel = keys[row * width + column];
          if (key > pixel) pixel = key;
        }
      }
    }
  });

  at::Tensor face_index = at::empty({height, width}, faces.options());
  at::Tensor weights_out = at::zeros({height, width, 3}, vertices.options());
  int64_t* index_data = face_index.mutable_data_ptr<int64_t>();
  float* weight_data = weights_out.mutable_data_ptr<float>();
  at::parallel_for(0, height * width, kPixelGrain, [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      if (keys[pixel] == 0) {
        index_data[pixel] = -1;
        continue;
      }
      const int64_t face = key_face(keys[pixel]);
      const Triangle t = load_triangle(vertex_data, face_data, face, height, width);
      barycentric(t, float(pixel % width), float(pixel / width), weight_data + 3 * pixel);
      index_data[pixel] = face;
    }
  });
  return {face_index, weights_out};
}

TORCH_LIBRARY_IMPL(get3dhuman, CPU, m) { m.impl("rasterize", &rasterize_cpu); }

}  // namespace get3dhuman::rasterize
