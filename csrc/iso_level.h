// The iso-level as a value of the field's dtype, shared by marching cubes and the narrow band.
#pragma once

#include <cmath>
#include <limits>

namespace get3dhuman {

// The largest T not above `level`. For every value v of type T, v > iso_threshold<T>(level)
// exactly when v > level as real numbers: the comparison scikit-image makes (a float32 volume
// against a double level). Rounding to nearest instead would count a voxel equal to float(0.1)
// as not above 0.1, although it is (float(0.1) > 0.1).
template <typename T>
inline T iso_threshold(double level) {
  const T rounded = static_cast<T>(level);
  if (static_cast<double>(rounded) <= level) return rounded;
  return std::nextafter(rounded, -std::numeric_limits<T>::infinity());
}

}  // namespace get3dhuman
