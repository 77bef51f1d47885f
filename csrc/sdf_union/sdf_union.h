// Smooth union of signed-distance primitives (the synthetic humans' field), shared by the CPU and
// CUDA kernels: per point, each part's distance is the minimum over its active primitives (a part
// with none gets `absent`), and the field is -blend * logsumexp(-d_part / blend) over the parts,
// with its gradient with respect to the point and the index of the nearest part. The formulas
// are those of get3dhuman.ops.sdf (the pure-torch reference); gradients are their analytic
// derivatives (zero where the reference's clamps are active).
//
// A primitive is one row of kWidth floats; its last entry is 1 when the primitive is active for
// that batch row, 0 when not:
//   kEllipsoid:     centre (3), radii (3)                       the bound k0 (k0 - 1) / k1
//   kCapsule:       start (3), end (3), radius at start, at end  tapered capsule
//   kCone:          bottom y, top y, radius at bottom, at top    vertical frustum on x = z = 0
//   kCutEllipsoid:  centre (3), radii (3), y0, z0, slope         max(ellipsoid, plane), the plane
//                   (y0 + slope (z - z0) - y) / sqrt(1 + slope^2) cutting off what lies above it
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace get3dhuman::sdf {

constexpr int64_t kWidth = 12;
constexpr int kEllipsoid = 0, kCapsule = 1, kCone = 2, kCutEllipsoid = 3;
constexpr int kKinds = 4;
constexpr float kTiny = 1e-18f;  // squared metres: the reference's safe_norm clamp
// sqrtf, expf and logf name the host's C functions and CUDA's device ones alike.

C10_HOST_DEVICE inline float min_(float a, float b) { return a < b ? a : b; }
C10_HOST_DEVICE inline float max_(float a, float b) { return a > b ? a : b; }
C10_HOST_DEVICE inline float clamp01(float v) { return min_(max_(v, 0.f), 1.f); }

// Each primitive returns its distance at (x, y, z) and, with kGradient, writes its gradient to
// g[3]; branch-free, so that the CPU kernel's loops over lanes of points vectorise.
template <bool kGradient>
C10_HOST_DEVICE inline float ellipsoid(const float* row, float x, float y, float z, float* g) {
  const float local[3] = {x - row[0], y - row[1], z - row[2]};
  float s0 = 0.f, s1 = 0.f;
  for (int i = 0; i < 3; ++i) {
    const float r = row[3 + i];
    const float a = local[i] / r, b = local[i] / (r * r);
    s0 += a * a;
    s1 += b * b;
  }
  const float k0 = sqrtf(max_(s0, kTiny)), k1_raw = sqrtf(max_(s1, kTiny));
  const float k1 = max_(k1_raw, 1e-9f);
  if constexpr (kGradient) {
    const float dk0 = s0 > kTiny ? 1.f / k0 : 0.f;
    const float dk1 = ((s1 > kTiny) & (k1_raw > 1e-9f)) ? 1.f / k1 : 0.f;
    for (int i = 0; i < 3; ++i) {
      const float r2 = row[3 + i] * row[3 + i];
      const float g0 = dk0 * local[i] / r2, g1 = dk1 * local[i] / (r2 * r2);
      g[i] = ((2.f * k0 - 1.f) * g0 * k1 - k0 * (k0 - 1.f) * g1) / (k1 * k1);
    }
  }
  return k0 * (k0 - 1.f) / k1;
}

template <bool kGradient>
C10_HOST_DEVICE inline float capsule(const float* row, float x, float y, float z, float* g) {
  const float p[3] = {x, y, z};
  float axis[3], length_sq = 0.f, along = 0.f;
  for (int i = 0; i < 3; ++i) {
    axis[i] = row[3 + i] - row[i];
    length_sq += axis[i] * axis[i];
    along += (p[i] - row[i]) * axis[i];
  }
  length_sq = max_(length_sq, 1e-12f);
  const float t_raw = along / length_sq, t = clamp01(t_raw);
  float v[3], norm_sq = 0.f;
  for (int i = 0; i < 3; ++i) {
    v[i] = p[i] - (row[i] + t * axis[i]);
    norm_sq += v[i] * v[i];
  }
  const float norm = sqrtf(max_(norm_sq, kTiny));
  if constexpr (kGradient) {
    const float to_unit = norm_sq > kTiny ? 1.f / norm : 0.f;
    float n_axis = 0.f;
    for (int i = 0; i < 3; ++i) n_axis += v[i] * to_unit * axis[i];
    const bool sliding = (t_raw > 0.f) & (t_raw < 1.f);  // the closest point moves with p
    const float k = sliding ? (n_axis + (row[7] - row[6])) / length_sq : 0.f;
    for (int i = 0; i < 3; ++i) g[i] = v[i] * to_unit - k * axis[i];
  }
  return norm - (row[6] + t * (row[7] - row[6]));
}

template <bool kGradient>
C10_HOST_DEVICE inline float cone(const float* row, float x, float y, float z, float* g) {
  const float bottom = row[0], top = row[1], r_bottom = row[2], r_top = row[3];
  const float half = (top - bottom) / 2.f;
  const float radial_sq = x * x + z * z;
  const float radial = sqrtf(max_(radial_sq, kTiny));
  const float axial = y - (top + bottom) / 2.f;
  const float cap_radius = axial < 0.f ? r_bottom : r_top;
  const float cap_x = radial - min_(radial, cap_radius), cap_y = fabsf(axial) - half;
  const float dir_x = r_top - r_bottom, dir_y = 2.f * half;
  const float rim_x = radial - r_top, rim_y = axial - half;
  const float along = clamp01((-(rim_x * dir_x + rim_y * dir_y)) / (dir_x * dir_x + dir_y * dir_y));
  const float side_x = rim_x + dir_x * along, side_y = rim_y + dir_y * along;
  const bool inside = (side_x < 0.f) & (cap_y < 0.f);
  const float cap_sq = cap_x * cap_x + cap_y * cap_y, side_sq = side_x * side_x + side_y * side_y;
  const float nearest_sq = min_(cap_sq, side_sq);
  const float distance = sqrtf(max_(nearest_sq, kTiny));
  if constexpr (kGradient) {
    // In the (radial, axial) plane the distance's gradient is the nearest feature's offset over
    // the distance (a slid side point stays perpendicular to the side, so no extra term).
    const float axial_sign = float(axial > 0.f) - float(axial < 0.f);
    const bool on_cap = cap_sq <= side_sq;
    const float scale = nearest_sq > kTiny ? (inside ? -1.f : 1.f) / distance : 0.f;
    const float g_radial = (on_cap ? cap_x : side_x) * scale;
    const float to_radial = radial_sq > kTiny ? 1.f / radial : 0.f;
    g[0] = g_radial * x * to_radial;
    g[1] = (on_cap ? cap_y * axial_sign : side_y) * scale;
    g[2] = g_radial * z * to_radial;
  }
  return inside ? -distance : distance;
}

template <bool kGradient>
C10_HOST_DEVICE inline float cut_ellipsoid(const float* row, float x, float y, float z, float* g) {
  const float shell = ellipsoid<kGradient>(row, x, y, z, g);
  const float slope = row[8], norm = sqrtf(1.f + slope * slope);
  const float plane = (row[6] + slope * (z - row[7]) - y) / norm;
  const bool cut = plane > shell;
  if constexpr (kGradient) {
    g[0] = cut ? 0.f : g[0];
    g[1] = cut ? -1.f / norm : g[1];
    g[2] = cut ? slope / norm : g[2];
  }
  return cut ? plane : shell;
}

template <int kKind, bool kGradient>
C10_HOST_DEVICE inline float primitive(const float* row, float x, float y, float z, float* g) {
  if constexpr (kKind == kEllipsoid) return ellipsoid<kGradient>(row, x, y, z, g);
  if constexpr (kKind == kCapsule) return capsule<kGradient>(row, x, y, z, g);
  if constexpr (kKind == kCone) return cone<kGradient>(row, x, y, z, g);
  return cut_ellipsoid<kGradient>(row, x, y, z, g);
}

constexpr int64_t kMaxPrimitives = 64;  // per table, so at most as many parts (a stack array each)
// Parts further than this many blends beyond the nearest add less than e^-24 (below float
// rounding) to the union's sum, so their exponentials are skipped.
constexpr float kNegligible = 24.f;

// Folds primitive `row` of kind kKind into the part minimum of each of kLanes points (the
// primitive first into local arrays, then merged: loops the compiler vectorises).
template <int kKind, bool kGradient, int kLanes>
C10_HOST_DEVICE inline void fold(const float* __restrict__ row, const float* __restrict__ x,
                                 const float* __restrict__ y, const float* __restrict__ z,
                                 float* __restrict__ part_distance, float (*__restrict__ part_grad)[kLanes]) {
  float d[kLanes], g[3][kLanes];
  for (int l = 0; l < kLanes; ++l) {
    float gradient[3];
    d[l] = primitive<kKind, kGradient>(row, x[l], y[l], z[l], gradient);
    if constexpr (kGradient) g[0][l] = gradient[0], g[1][l] = gradient[1], g[2][l] = gradient[2];
  }
  for (int l = 0; l < kLanes; ++l) {
    const bool closer = d[l] < part_distance[l];
    part_distance[l] = closer ? d[l] : part_distance[l];
    if constexpr (kGradient) {
      for (int i = 0; i < 3; ++i) part_grad[i][l] = closer ? g[i][l] : part_grad[i][l];
    }
  }
}

// The field at kLanes points (x, y, z [kLanes]) of one batch row: rows [Q, kWidth], kinds/parts
// [Q] (parts nondecreasing from 0; count <= kMaxPrimitives). Writes per lane the distance, with
// kGradient the gradient (grad [kLanes, 3]) and the nearest part (the first of equal distances,
// as torch.argmin).
template <bool kGradient, int kLanes>
C10_HOST_DEVICE inline void evaluate(const float* rows, const int32_t* kinds, const int32_t* parts, int64_t count,
                                     float blend, float absent, const float* x, const float* y, const float* z,
                                     float* distance, float* grad, int64_t* nearest) {
  constexpr int64_t kGradParts = kGradient ? kMaxPrimitives : 1;
  float part_distance[kMaxPrimitives][kLanes], part_grad[kGradParts][3][kLanes];
  float best[kLanes];
  int64_t best_part[kLanes];
  for (int l = 0; l < kLanes; ++l) best[l] = INFINITY, best_part[l] = 0;
  int64_t part_count = 0;
  for (int64_t q = 0; q < count;) {
    const int32_t part = parts[q];
    float* d_part = part_distance[part_count];
    float(*g_part)[kLanes] = part_grad[kGradient ? part_count : 0];
    for (int l = 0; l < kLanes; ++l) {
      d_part[l] = INFINITY;
      if constexpr (kGradient) g_part[0][l] = g_part[1][l] = g_part[2][l] = 0.f;
    }
    for (; q < count && parts[q] == part; ++q) {
      const float* row = rows + q * kWidth;
      if (row[kWidth - 1] == 0.f) continue;
      switch (kinds[q]) {
        case kEllipsoid:
          fold<kEllipsoid, kGradient, kLanes>(row, x, y, z, d_part, g_part);
          break;
        case kCapsule:
          fold<kCapsule, kGradient, kLanes>(row, x, y, z, d_part, g_part);
          break;
        case kCone:
          fold<kCone, kGradient, kLanes>(row, x, y, z, d_part, g_part);
          break;
        default:
          fold<kCutEllipsoid, kGradient, kLanes>(row, x, y, z, d_part, g_part);
      }
    }
    for (int l = 0; l < kLanes; ++l) {
      d_part[l] = d_part[l] == INFINITY ? absent : d_part[l];  // no active primitive: gradient 0
      const bool closer = d_part[l] < best[l];
      best[l] = closer ? d_part[l] : best[l];
      best_part[l] = closer ? part : best_part[l];
    }
    ++part_count;
  }
  // logsumexp of -d / blend about its peak -best / blend, with the softmax-weighted gradients.
  for (int l = 0; l < kLanes; ++l) {
    float total = 0.f, sum_grad[3] = {0.f, 0.f, 0.f};
    for (int64_t k = 0; k < part_count; ++k) {
      const float excess = (part_distance[k][l] - best[l]) / blend;
      if (excess > kNegligible) continue;
      const float w = expf(-excess);
      total += w;
      if constexpr (kGradient) {
        for (int i = 0; i < 3; ++i) sum_grad[i] += w * part_grad[k][i][l];
      }
    }
    distance[l] = -blend * (-best[l] / blend + logf(total));
    if constexpr (kGradient) {
      for (int i = 0; i < 3; ++i) grad[3 * l + i] = sum_grad[i] / total;
    }
    nearest[l] = best_part[l];
  }
}

inline void check_args(const at::Tensor& points, const at::Tensor& primitives, const at::Tensor& kinds,
                       const at::Tensor& parts, double blend) {
  TORCH_CHECK_VALUE(points.dim() == 3 && points.size(2) == 3, "points must be [B, N, 3], got ", points.sizes());
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat, "points must be float32, got ", points.scalar_type());
  TORCH_CHECK_VALUE(primitives.dim() == 3 && primitives.size(0) == points.size(0) && primitives.size(2) == kWidth,
                    "primitives must be [B, Q, ", kWidth, "] with B = ", points.size(0), ", got ", primitives.sizes());
  TORCH_CHECK_TYPE(primitives.scalar_type() == at::kFloat, "primitives must be float32, got ",
                   primitives.scalar_type());
  TORCH_CHECK_VALUE(primitives.size(1) >= 1 && primitives.size(1) <= kMaxPrimitives,
                    "primitives must hold 1 to ", kMaxPrimitives, " primitives, got ", primitives.size(1));
  for (const at::Tensor* index : {&kinds, &parts}) {
    TORCH_CHECK_VALUE(index->dim() == 1 && index->size(0) == primitives.size(1),
                      "kinds and parts must be [Q] with Q = ", primitives.size(1), ", got ", index->sizes());
    TORCH_CHECK_TYPE(index->scalar_type() == at::kInt, "kinds and parts must be int32, got ", index->scalar_type());
  }
  TORCH_CHECK_VALUE(blend > 0, "blend must be > 0, got ", blend);
  TORCH_CHECK_VALUE(primitives.device() == points.device() && kinds.device() == points.device() &&
                        parts.device() == points.device(),
                    "points, primitives, kinds and parts must share a device");
}

}  // namespace get3dhuman::sdf
