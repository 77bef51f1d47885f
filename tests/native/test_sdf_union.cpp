// Native test of the smooth-union evaluator shared by the CPU and CUDA kernels: the CUDA kernel
// evaluates one point per thread (evaluate<.., 1>), the CPU kernel blocks of 16 in vectorised
// loops (evaluate<.., 16>). Both must give the same distance, gradient and nearest part on the
// host, so the arithmetic the GPU runs is the one the CPU tests check (up to the device's
// sqrtf/expf/logf rounding).
#include "../../csrc/sdf_union/sdf_union.h"

#include <cstdio>
#include <random>
#include <vector>

using namespace get3dhuman::sdf;

namespace {

int failures = 0;

void expect(bool condition, const char* what, int64_t index) {
  if (!condition && failures++ < 10) std::fprintf(stderr, "FAILED: %s at point %lld\n", what, (long long)index);
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> centre(-0.5f, 0.5f), size(0.05f, 0.35f), slope(-1.f, 1.f), unit(0.f, 1.f);
  const int kinds_of[] = {kEllipsoid, kCapsule, kCone, kCutEllipsoid, kCapsule, kEllipsoid, kCone, kCapsule, kCapsule};
  const int parts_of[] = {0, 1, 1, 2, 3, 3, 3, 4, 5};
  const int64_t count = sizeof(kinds_of) / sizeof(int);
  std::vector<float> rows(count * kWidth, 0.f);
  std::vector<int32_t> kinds(kinds_of, kinds_of + count), parts(parts_of, parts_of + count);
  for (int64_t q = 0; q < count; ++q) {
    float* row = rows.data() + q * kWidth;
    for (int i = 0; i < 3; ++i) row[i] = centre(rng);
    for (int i = 3; i < 6; ++i) row[i] = kinds[q] == kCapsule ? centre(rng) : size(rng);
    row[6] = kinds[q] == kCutEllipsoid ? centre(rng) : size(rng);
    row[7] = kinds[q] == kCutEllipsoid ? centre(rng) : size(rng);
    row[8] = slope(rng);
    if (kinds[q] == kCone) row[0] = -0.4f, row[1] = 0.3f, row[2] = size(rng), row[3] = size(rng);
    row[kWidth - 1] = q == 8 ? 0.f : 1.f;  // part 5 has no active primitive: absent
  }
  const int64_t points = 16 * 64;
  std::vector<float> x(points), y(points), z(points);
  for (int64_t i = 0; i < points; ++i) x[i] = 2 * unit(rng) - 1, y[i] = 2 * unit(rng) - 1, z[i] = 2 * unit(rng) - 1;
  const float blend = 0.03f, absent = 5.f;
  for (bool gradient : {false, true}) {
    std::vector<float> d1(points), d16(points), g1(3 * points), g16(3 * points);
    std::vector<int64_t> n1(points), n16(points);
    for (int64_t i = 0; i < points; ++i) {
      if (gradient) {
        evaluate<true, 1>(rows.data(), kinds.data(), parts.data(), count, blend, absent, &x[i], &y[i], &z[i], &d1[i],
                          &g1[3 * i], &n1[i]);
      } else {
        evaluate<false, 1>(rows.data(), kinds.data(), parts.data(), count, blend, absent, &x[i], &y[i], &z[i], &d1[i],
                           nullptr, &n1[i]);
      }
    }
    for (int64_t i = 0; i < points; i += 16) {
      if (gradient) {
        evaluate<true, 16>(rows.data(), kinds.data(), parts.data(), count, blend, absent, &x[i], &y[i], &z[i],
                           &d16[i], &g16[3 * i], &n16[i]);
      } else {
        evaluate<false, 16>(rows.data(), kinds.data(), parts.data(), count, blend, absent, &x[i], &y[i], &z[i],
                            &d16[i], nullptr, &n16[i]);
      }
    }
    for (int64_t i = 0; i < points; ++i) {
      expect(d1[i] == d16[i], "distance of 1 lane == of 16 lanes", i);
      expect(n1[i] == n16[i], "nearest part of 1 lane == of 16 lanes", i);
      expect(n1[i] != 5, "the absent part is never nearest", i);
      expect(d1[i] < 5.f && d1[i] > -1.f, "distance within the box's range", i);
      if (gradient) {
        for (int k = 0; k < 3; ++k) expect(g1[3 * i + k] == g16[3 * i + k], "gradient of 1 lane == of 16 lanes", i);
      }
    }
  }
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("sdf_union: 1-lane and 16-lane evaluations agree\n");
  return 0;
}
