// One coarse-to-fine step of the narrow band: classify cells, compact the kept ones, split each
// into 8 children (the CPU and CUDA kernels share these per-cell functions). Cells are the
// sparse cell sets of sparse_cells.h, which sparse marching cubes consumes.
#pragma once

#include "../sparse_cells.h"

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace get3dhuman::narrow_band {

// A cell is kept when the iso-surface can cross it: its corners lie on both sides of the
// level, or one of them lies within `threshold` of it (a surface between corners that the
// corner signs miss, for fields whose slope the caller bounds).
template <typename T>
C10_HOST_DEVICE inline bool keep_cell(const T* corners, T level, T threshold) {
  bool any_above = false, any_below = false, near = false;
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    const T v = corners[c];
    const bool above = v > level;
    any_above |= above;
    any_below |= !above;
    near |= (v > level ? v - level : level - v) <= threshold;
  }
  return (any_above && any_below) || near;
}

// The 8 children of the parent cell `key` of `lattice` (children over twice its cells per axis): keys, corner
// values known from the parent (children's corners at parent corners; 0 elsewhere), and every
// child corner's point key over the (2 * dims + 1)^3 point lattice. Child n and corner q use
// the marching cubes corner order.
template <typename T>
C10_HOST_DEVICE inline void write_children(const SparseLattice& lattice, int64_t key, const T* corners,
                                           int64_t* child_keys, T* child_values, int64_t* point_keys) {
  const int64_t* dims = lattice.dims;
  int64_t coords[3];
  const int64_t batch = lattice.decode(key, coords);
  for (int child = 0; child < 8; ++child) {
    const int offset[3] = {(child >> 2) & 1, (child >> 1) & 1, child & 1};
    int64_t cell[3];
    for (int a = 0; a < 3; ++a) cell[a] = 2 * coords[a] + offset[a];
    child_keys[child] = ((batch * 2 * dims[0] + cell[0]) * 2 * dims[1] + cell[1]) * 2 * dims[2] + cell[2];
    for (int q = 0; q < 8; ++q) {
      const int local[3] = {offset[0] + ((q >> 2) & 1), offset[1] + ((q >> 1) & 1), offset[2] + (q & 1)};
      int64_t point = batch;
      for (int a = 0; a < 3; ++a) point = point * (2 * dims[a] + 1) + cell[a] + (local[a] - offset[a]);
      point_keys[8 * child + q] = point;
      const bool at_parent_corner = local[0] % 2 == 0 && local[1] % 2 == 0 && local[2] % 2 == 0;
      child_values[8 * child + q] =
          at_parent_corner ? corners[(local[0] / 2) * 4 + (local[1] / 2) * 2 + local[2] / 2] : T(0);
    }
  }
}

}  // namespace get3dhuman::narrow_band
