// Z-buffer rasterization of a triangle mesh under an orthographic camera, shared by the CPU and
// CUDA kernels so that both pick the same triangle for every pixel.
//
// Conventions (those of get3dhuman.render's cameras). Vertices are in NDC: x and y in [-1, 1]
// span the image with align_corners=True (pixel (row i, column j) has its centre at
// x = -1 + 2j/(W-1), y = -1 + 2i/(H-1)), z is the depth, larger nearer the camera. A pixel is
// covered by a triangle when its centre lies inside or on the triangle's edges; an edge's
// function is always evaluated from its lower vertex index, so the two triangles that share it
// get exactly opposite values and a welded mesh has no cracks. Of the triangles covering a
// pixel the nearest wins, ties to the lowest face index: each candidate is a 64-bit key,
// (depth mapped to an order-preserving uint32) << 32 | (~face index), and the pixel keeps the
// largest (0: nothing covers it). Both orientations are drawn (no back-face culling).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace get3dhuman::rasterize {

// Rounded float arithmetic without fused multiply-adds, so that CPU and CUDA agree to the bit.
C10_HOST_DEVICE inline float mul(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
C10_HOST_DEVICE inline float add(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
C10_HOST_DEVICE inline float sub(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
C10_HOST_DEVICE inline float div(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

C10_HOST_DEVICE inline bool finite(float value) {
#ifdef __CUDA_ARCH__
  return isfinite(value);
#else
  return std::isfinite(value);
#endif
}

// Maps floats to unsigned integers of the same order (negative values below positive ones).
C10_HOST_DEVICE inline uint32_t ordered_bits(float value) {
#ifdef __CUDA_ARCH__
  const uint32_t bits = __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
#endif
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

C10_HOST_DEVICE inline uint64_t make_key(float depth, int64_t face) {
  return (uint64_t(ordered_bits(depth)) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(face));
}

C10_HOST_DEVICE inline int64_t key_face(uint64_t key) { return int64_t(0xFFFFFFFFu - uint32_t(key & 0xFFFFFFFFu)); }

// One triangle in pixel coordinates: x = column, y = row.
struct Triangle {
  float x[3], y[3], z[3];
  int64_t id[3];
  bool valid;  // finite corners
};

C10_HOST_DEVICE inline Triangle load_triangle(const float* vertices, const int64_t* faces, int64_t face, int64_t height,
                                              int64_t width) {
  Triangle t;
  t.valid = true;
  const float sx = 0.5f * float(width - 1), sy = 0.5f * float(height - 1);
  for (int c = 0; c < 3; ++c) {
    const int64_t v = faces[3 * face + c];
    t.id[c] = v;
    t.x[c] = mul(add(vertices[3 * v], 1.0f), sx);
    t.y[c] = mul(add(vertices[3 * v + 1], 1.0f), sy);
    t.z[c] = vertices[3 * v + 2];
    t.valid = t.valid && finite(t.x[c]) && finite(t.y[c]) && finite(t.z[c]);
  }
  return t;
}

// The edge function of corners (a, b) at pixel (px, py), evaluated from the lower vertex index
// and negated for the other direction: positive on the left of a -> b (rows grow downwards).
C10_HOST_DEVICE inline float edge_function(const Triangle& t, int a, int b, float px, float py) {
  const bool forward = t.id[a] < t.id[b] || (t.id[a] == t.id[b] && a < b);
  const int lo = forward ? a : b, hi = forward ? b : a;
  const float value = sub(mul(sub(t.x[hi], t.x[lo]), sub(py, t.y[lo])), mul(sub(t.y[hi], t.y[lo]), sub(px, t.x[lo])));
  return forward ? value : -value;
}

// Barycentric weights of the pixel centre (px, py); false when it is outside the triangle or
// the triangle has no area.
C10_HOST_DEVICE inline bool barycentric(const Triangle& t, float px, float py, float* weights) {
  const float w0 = edge_function(t, 1, 2, px, py), w1 = edge_function(t, 2, 0, px, py);
  const float w2 = edge_function(t, 0, 1, px, py);
  const bool inside = (w0 >= 0.0f && w1 >= 0.0f && w2 >= 0.0f) || (w0 <= 0.0f && w1 <= 0.0f && w2 <= 0.0f);
  const float total = add(add(w0, w1), w2);
  if (!inside || total == 0.0f) return false;
  weights[0] = div(w0, total);
  weights[1] = div(w1, total);
  weights[2] = div(w2, total);
  return true;
}

C10_HOST_DEVICE inline float interpolated_depth(const Triangle& t, const float* weights) {
  return add(add(mul(weights[0], t.z[0]), mul(weights[1], t.z[1])), mul(weights[2], t.z[2]));
}

// The inclusive pixel range [first, last] of coordinates in [0, size) that lie in [low, high].
C10_HOST_DEVICE inline void pixel_range(float low, float high, int64_t size, int64_t* first, int64_t* last) {
  const float limit = float(size);  // clamped first: casting a huge float is undefined
  *first = int64_t(ceilf(fminf(fmaxf(low, -1.0f), limit)));
  *last = int64_t(floorf(fminf(fmaxf(high, -1.0f), limit)));
  if (*first < 0) *first = 0;
  if (*last > size - 1) *last = size - 1;
}

C10_HOST_DEVICE inline float min3(const float* v) { return fminf(fminf(v[0], v[1]), v[2]); }
C10_HOST_DEVICE inline float max3(const float* v) { return fmaxf(fmaxf(v[0], v[1]), v[2]); }

// Calls write(pixel, key) for each pixel of rows [first_row, last_row] whose centre the
// triangle `face` covers, key its candidate key there.
#ifdef __CUDACC__
#pragma nv_exec_check_disable  // instantiated with host lambdas on the CPU, device lambdas on the GPU
#endif
template <typename Write>
C10_HOST_DEVICE inline void cover_rows(const Triangle& t, int64_t face, int64_t first_row, int64_t last_row,
                                       int64_t width, Write write) {
  int64_t first_column, last_column;
  pixel_range(min3(t.x), max3(t.x), width, &first_column, &last_column);
  for (int64_t row = first_row; row <= last_row; ++row) {
    for (int64_t column = first_column; column <= last_column; ++column) {
      float weights[3];
      if (barycentric(t, float(column), float(row), weights)) {
        write(row * width + column, make_key(interpolated_depth(t, weights), face));
      }
    }
  }
}

// Writes pixel's face index (-1 when no triangle covers it, key 0) and the winner's barycentric
// weights, recomputed exactly as when it won.
C10_HOST_DEVICE inline void resolve_pixel(const float* vertices, const int64_t* faces, uint64_t key, int64_t pixel,
                                          int64_t height, int64_t width, int64_t* face_index, float* weights) {
  if (key == 0) {
    face_index[pixel] = -1;
    return;
  }
  const int64_t face = key_face(key);
  const Triangle t = load_triangle(vertices, faces, face, height, width);
  barycentric(t, float(pixel % width), float(pixel / width), weights + 3 * pixel);
  face_index[pixel] = face;
}

// Checks of the registered op's arguments (the Python wrapper checks user input more fully).
inline void check_args(const at::Tensor& vertices, const at::Tensor& faces, int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(vertices.dim() == 2 && vertices.size(1) == 3, "vertices must be [V, 3], got ", vertices.sizes());
  TORCH_CHECK_TYPE(vertices.scalar_type() == at::kFloat, "vertices must be float32, got ", vertices.scalar_type());
  TORCH_CHECK_VALUE(faces.dim() == 2 && faces.size(1) == 3, "faces must be [F, 3], got ", faces.sizes());
  TORCH_CHECK_TYPE(faces.scalar_type() == at::kLong, "faces must be int64, got ", faces.scalar_type());
  TORCH_CHECK_VALUE(faces.size(0) < int64_t(0xFFFFFFFFu), "faces must number fewer than 2^32 - 1, got ", faces.size(0));
  TORCH_CHECK_VALUE(height >= 2 && width >= 2, "height and width must be >= 2, got ", height, " and ", width);
  TORCH_CHECK_VALUE(vertices.device() == faces.device(), "vertices and faces must share a device");
}

}  // namespace get3dhuman::rasterize
