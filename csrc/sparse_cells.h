// Sparse cell sets, shared by the narrow band (which produces them) and sparse marching cubes
// (which consumes them). A cell is an int64 key ((b * R0 + i) * R1 + j) * R2 + k over a batch of
// R0 x R1 x R2 cell lattices, with its 8 corner values [M, 8] in the marching cubes corner order.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace get3dhuman {

struct SparseLattice {
  int64_t dims[3];  // cells per axis
  int64_t stride[3];

  // Lattice coordinates of `key`; returns its batch index.
  C10_HOST_DEVICE int64_t decode(int64_t key, int64_t* coords) const {
    coords[2] = key % dims[2];
    coords[1] = (key / dims[2]) % dims[1];
    coords[0] = (key / (dims[2] * dims[1])) % dims[0];
    return key / (dims[0] * dims[1] * dims[2]);
  }
};

inline SparseLattice make_lattice(int64_t d0, int64_t d1, int64_t d2) {
  return SparseLattice{{d0, d1, d2}, {d1 * d2, d2, 1}};
}

// Shape, dtype and device checks of (cells, corner_values, dims) for direct calls of the
// registered ops (the Python wrappers check user input with fuller messages).
inline void check_sparse_cells(const at::Tensor& cells, const at::Tensor& corner_values, at::IntArrayRef dims) {
  TORCH_CHECK_VALUE(cells.dim() == 1 && cells.scalar_type() == at::kLong, "cells must be int64 [M], got ",
                    cells.scalar_type(), " ", cells.sizes());
  TORCH_CHECK_VALUE(corner_values.dim() == 2 && corner_values.size(0) == cells.size(0) && corner_values.size(1) == 8,
                    "corner_values must be [M, 8] = [", cells.size(0), ", 8], got ", corner_values.sizes());
  TORCH_CHECK_VALUE(dims.size() == 3 && dims[0] > 0 && dims[1] > 0 && dims[2] > 0,
                    "dims must be three positive cell counts, got ", dims);
  TORCH_CHECK_TYPE(corner_values.scalar_type() == at::kFloat || corner_values.scalar_type() == at::kDouble,
                   "corner_values must be float32 or float64, got ", corner_values.scalar_type());
  TORCH_CHECK_VALUE(cells.device() == corner_values.device(), "cells and corner_values must share a device");
}

}  // namespace get3dhuman
