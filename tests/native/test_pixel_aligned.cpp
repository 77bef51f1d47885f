// Native test of the registered pixel_aligned_sample op, called through the dispatcher.
// Oracle: bilinear interpolation reproduces a feature map that is affine in (x, y) exactly,
// so samples inside the image equal the affine function at the projected point.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <optional>

namespace {

int failures = 0;

void expect(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

at::Tensor call_sample(const at::Tensor& features, const at::Tensor& points, const at::Tensor& calib,
                       double depth_scale) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("get3dhuman::pixel_aligned_sample", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                               const std::optional<at::Tensor>&, const std::optional<at::Tensor>&)>();
  return op.call(features, points, calib, depth_scale, std::nullopt, std::nullopt);
}

}  // namespace

int main() {
  const int64_t height = 6, width = 9, channels = 3;
  // F[c, y, x] = a_c * x + b_c * y + d_c in pixel units.
  const double a[channels] = {0.5, -1.0, 0.25}, b[channels] = {2.0, 0.0, -0.75}, d[channels] = {1.0, 3.0, 0.0};
  at::Tensor features = at::empty({1, channels, height, width}, at::kDouble);
  auto f = features.accessor<double, 4>();
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t y = 0; y < height; ++y)
      for (int64_t x = 0; x < width; ++x) f[0][c][y][x] = a[c] * x + b[c] * y + d[c];

  // A calibration that scales by 0.5 and shifts x by 0.1.
  at::Tensor calib = at::eye(4, at::kDouble).unsqueeze(0);
  calib.index_put_({0, 0, 0}, 0.5);
  calib.index_put_({0, 1, 1}, 0.5);
  calib.index_put_({0, 2, 2}, 0.5);
  calib.index_put_({0, 0, 3}, 0.1);
  at::Tensor points = at::rand({1, 64, 3}, at::kDouble) * 3.6 - 1.8;  // inside: |ndc| <= 1
  const double depth_scale = 1.28;
  at::Tensor out = call_sample(features, points, calib, depth_scale);
  expect(out.sizes() == at::IntArrayRef({1, 64, channels + 1}), "output is [B, N, C + 1]");

  auto p = points.accessor<double, 3>();
  auto o = out.accessor<double, 3>();
  for (int64_t n = 0; n < 64; ++n) {
    const double u = 0.5 * p[0][n][0] + 0.1, v = 0.5 * p[0][n][1], z = 0.5 * p[0][n][2];
    const double x = (u + 1) / 2 * (width - 1), y = (v + 1) / 2 * (height - 1);
    for (int64_t c = 0; c < channels; ++c) {
      const bool inside = u >= -1 && u <= 1 && v >= -1 && v <= 1;
      if (inside) expect(std::abs(o[0][n][c] - (a[c] * x + b[c] * y + d[c])) < 1e-12, "affine map reproduced");
    }
    expect(std::abs(o[0][n][channels] - z * depth_scale) < 1e-12, "depth feature");
  }

  // Far outside the image every corner is zero padding.
  at::Tensor outside = call_sample(features, at::full({1, 1, 3}, 10.0, at::kDouble), calib, depth_scale);
  expect(outside.slice(2, 0, channels).abs().sum().item<double>() == 0.0, "zero padding outside");

  // A malformed call raises instead of reading out of bounds.
  bool raised = false;
  try {
    call_sample(features, points.slice(2, 0, 2), calib, depth_scale);
  } catch (const c10::Error&) {
    raised = true;
  }
  expect(raised, "points [B, N, 2] is rejected");

  std::printf("%s\n", failures == 0 ? "pixel_aligned: all checks passed" : "pixel_aligned: FAILED");
  return failures == 0 ? 0 : 1;
}
