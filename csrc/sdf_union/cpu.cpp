// CPU kernel of the smooth union of primitives: blocks of points in parallel, each block walking
// its batch row's primitive table (a few kilobytes, so it stays in cache) one primitive at a time
// for all its points.
#include "sdf_union.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace get3dhuman::sdf {
namespace {

constexpr int kLanes = 16;  // points evaluated together, one primitive at a time (vectorised loops)
constexpr int64_t kPointGrain = 1024;

// Points [begin, end) of the flattened [B * count] points, in blocks of kLanes within a batch row
// (a short block is padded with its last point).
template <bool kGradient>
void evaluate_points(const float* points, const float* rows, const int32_t* kinds, const int32_t* parts,
                     int64_t count, int64_t primitive_count, float blend, float absent, int64_t begin, int64_t end,
                     float* distance, float* gradient, int64_t* nearest) {
  for (int64_t start = begin; start < end;) {
    const int64_t row = start / count;
    const int64_t used = std::min<int64_t>({kLanes, end - start, (row + 1) * count - start});
    float x[kLanes], y[kLanes], z[kLanes], d[kLanes], g[3 * kLanes];
    int64_t n[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      const float* p = points + 3 * (start + std::min<int64_t>(l, used - 1));
      x[l] = p[0], y[l] = p[1], z[l] = p[2];
    }
    evaluate<kGradient, kLanes>(rows + row * primitive_count * kWidth, kinds, parts, primitive_count, blend, absent,
                                x, y, z, d, g, n);
    std::copy(d, d + used, distance + start);
    std::copy(n, n + used, nearest + start);
    if constexpr (kGradient) std::copy(g, g + 3 * used, gradient + 3 * start);
    start += used;
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> sdf_union_cpu(const at::Tensor& points_in, const at::Tensor& primitives_in,
                                                             const at::Tensor& kinds_in, const at::Tensor& parts_in,
                                                             double blend, double absent, bool with_gradient) {
  check_args(points_in, primitives_in, kinds_in, parts_in, blend);
  const at::Tensor points = points_in.contiguous(), primitives = primitives_in.contiguous();
  const at::Tensor kinds = kinds_in.contiguous(), parts = parts_in.contiguous();
  const int64_t batch = points.size(0), count = points.size(1), primitive_count = primitives.size(1);
  at::Tensor distance = at::empty({batch, count}, points.options());
  at::Tensor gradient = at::empty({with_gradient ? batch : 0, count, 3}, points.options());
  at::Tensor nearest = at::empty({batch, count}, points.options().dtype(at::kLong));
  const float* point_data = points.const_data_ptr<float>();
  const float* row_data = primitives.const_data_ptr<float>();
  const int32_t* kind_data = kinds.const_data_ptr<int32_t>();
  const int32_t* part_data = parts.const_data_ptr<int32_t>();
  float* distance_data = distance.mutable_data_ptr<float>();
  float* gradient_data = with_gradient ? gradient.mutable_data_ptr<float>() : nullptr;
  int64_t* nearest_data = nearest.mutable_data_ptr<int64_t>();
  const float blend_f = static_cast<float>(blend), absent_f = static_cast<float>(absent);
  at::parallel_for(0, batch * count, kPointGrain, [&](int64_t begin, int64_t end) {
    (with_gradient ? evaluate_points<true> : evaluate_points<false>)(
        point_data, row_data, kind_data, part_data, count, primitive_count, blend_f, absent_f, begin, end,
        distance_data, gradient_data, nearest_data);
  });
  return {distance, gradient, nearest};
}

TORCH_LIBRARY_IMPL(get3dhuman, CPU, m) { m.impl("sdf_union", &sdf_union_cpu); }

}  // namespace get3dhuman::sdf
