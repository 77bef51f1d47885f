// One coarse-to-fine step of the narrow band: classify cells, compact the kept ones ("parents"),
// split each into 8 children and number the new lattice points they need, each once. The CPU and
// CUDA kernels share these per-parent functions. Cells are the sparse cell sets of
// sparse_cells.h, which sparse marching cubes consumes.
//
// A parent covers the 3 x 3 x 3 fine lattice points with local coordinates l in {0, 1, 2}^3
// (local id l0 * 9 + l1 * 3 + l2). The 8 with even l are its corners (values known); the 19 others
// are new. A new point on a face or edge is shared with the kept face/edge neighbours; its owner
// is the sharing parent with the smallest key, which emits it and writes its slot into the
// corners of every child that uses it. Hence no sort or hash: every new point is numbered once,
// in parent order (so batch-major), and the children are written straight into key order.
#pragma once

#include "../iso_level.h"
#include "../sparse_cells.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>

namespace get3dhuman::narrow_band {

constexpr int kLocalPoints = 27;
constexpr int kNoCell = -1;

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

// The first index i in sorted keys[0, count) with keys[i] >= target, searched outward from
// `from`: the cost grows with the log of the distance, and lattice neighbours are near in key order.
C10_HOST_DEVICE inline int64_t gallop_lower_bound(const int64_t* keys, int64_t count, int64_t from, int64_t target) {
  int64_t below, at_or_above;  // keys[below] < target (or below == -1); keys[at_or_above] >= target (or == count)
  int64_t step = 1;
  if (from < count && keys[from] < target) {
    below = from;
    at_or_above = from + 1;
    while (at_or_above < count && keys[at_or_above] < target) {
      below = at_or_above;
      step *= 2;
      at_or_above = from + step;
    }
    if (at_or_above > count) at_or_above = count;
  } else {
    at_or_above = from;
    below = from - 1;
    while (below >= 0 && keys[below] >= target) {
      at_or_above = below;
      step *= 2;
      below = from - step;
    }
    if (below < -1) below = -1;
  }
  while (at_or_above - below > 1) {
    const int64_t middle = below + (at_or_above - below) / 2;
    if (keys[middle] < target) {
      below = middle;
    } else {
      at_or_above = middle;
    }
  }
  return at_or_above;
}

C10_HOST_DEVICE inline bool is_corner(int local_id) {
  return (local_id / 9) % 2 == 0 && (local_id / 3 % 3) % 2 == 0 && (local_id % 3) % 2 == 0;
}

// The axes (bit 2 - a for axis a) along which a new point at local coordinates l lies on the
// parent's boundary (l = 0 or 2), where the neighbour at offset l - 1 shares it.
C10_HOST_DEVICE inline int sharing_axes(const int* l) {
  return (l[0] != 1 ? 4 : 0) | (l[1] != 1 ? 2 : 0) | (l[2] != 1 ? 1 : 0);
}

// The neighbour index (see survey_parent) of the parent that shares the point at local l across
// the axes in `subset` (a subset of sharing_axes(l)).
C10_HOST_DEVICE inline int sharer_index(const int* l, int subset) {
  int index = 0;
  for (int a = 0; a < 3; ++a) index = 3 * index + 1 + ((subset >> (2 - a)) & 1 ? l[a] - 1 : 0);
  return index;
}

// Where a parent's children go in the key-sorted child list: child (o0, o1, o2) at
// first + o0 * slab_stride + o1 * row_stride + o2. Children of the parents of one slab (same
// batch and first coordinate) fill two fine slabs; within them, each row of parents fills two
// fine rows. So a parent at index p of row [r, r + L) of slab [s, s + S) has
// first = 8 s + 4 (r - s) + 2 (p - r), slab_stride = 4 S, row_stride = 2 L.
struct Placement {
  int64_t first, slab_stride, row_stride;

  C10_HOST_DEVICE int64_t child(int o0, int o1, int o2) const { return first + o0 * slab_stride + o1 * row_stride + o2; }
};

// Pass 1 for parent p of the sorted kept keys [count] over `lattice`: the kept index of each
// neighbour that can share a new point (offsets d in {-1, 0, 1}^3 with a zero component; index
// (d0 + 1) * 9 + (d1 + 1) * 3 + d2 + 1; kNoCell when absent), the children's placement, and the
// mask of the new local points p owns (bit = local id). Returns how many it owns.
C10_HOST_DEVICE inline int survey_parent(const SparseLattice& lattice, const int64_t* keys, int64_t count, int64_t p,
                                         int32_t* neighbours, Placement* placement, int32_t* owned_mask) {
  const int64_t* dims = lattice.dims;
  const int64_t key = keys[p];
  int64_t coords[3];
  lattice.decode(key, coords);
  for (int n = 0; n < kLocalPoints; ++n) {
    const int d[3] = {n / 9 - 1, n / 3 % 3 - 1, n % 3 - 1};
    neighbours[n] = kNoCell;
    if (d[0] != 0 && d[1] != 0 && d[2] != 0) continue;  // shares only a parent corner
    bool inside = true;
    for (int a = 0; a < 3; ++a) inside &= coords[a] + d[a] >= 0 && coords[a] + d[a] < dims[a];
    if (!inside) continue;
    const int64_t target = key + d[0] * lattice.stride[0] + d[1] * lattice.stride[1] + d[2];
    const int64_t found = gallop_lower_bound(keys, count, p, target);
    if (found < count && keys[found] == target) neighbours[n] = static_cast<int32_t>(found);
  }
  const int64_t row_key = key - coords[2], slab_key = row_key - coords[1] * dims[2];
  const int64_t row = gallop_lower_bound(keys, count, p, row_key);
  const int64_t row_end = gallop_lower_bound(keys, count, p, row_key + dims[2]);
  const int64_t slab = gallop_lower_bound(keys, count, p, slab_key);
  const int64_t slab_end = gallop_lower_bound(keys, count, p, slab_key + dims[1] * dims[2]);
  *placement = Placement{8 * slab + 4 * (row - slab) + 2 * (p - row), 4 * (slab_end - slab), 2 * (row_end - row)};
  int32_t mask = 0;
  int owned = 0;
  for (int id = 0; id < kLocalPoints; ++id) {
    if (is_corner(id)) continue;
    const int l[3] = {id / 9, id / 3 % 3, id % 3};
    int32_t owner = static_cast<int32_t>(p);
    const int shared = sharing_axes(l);
    for (int subset = shared;; subset = (subset - 1) & shared) {
      const int32_t sharer = neighbours[sharer_index(l, subset)];
      if (sharer != kNoCell && sharer < owner) owner = sharer;
      if (subset == 0) break;
    }
    if (owner == p) {
      mask |= int32_t(1) << id;
      ++owned;
    }
  }
  *owned_mask = mask;
  return owned;
}

// Pass 2 for parent p (after an exclusive scan of the owned counts into first_point): writes its
// 8 children's keys and corner slots into the value table [new points' values (P), the parents'
// corner values (8 per source cell)]: a corner at a parent corner reads the parent's value at
// P + 8 * source + corner (int32: the table holds under 2^31 values); each new point p owns gets its key and its slot in the corners of
// every child that uses it, including the neighbours' children.
C10_HOST_DEVICE inline void emit_parent(const SparseLattice& lattice, const int64_t* keys, int64_t p,
                                        int64_t parent_corner_slot, const int32_t* neighbours,
                                        const Placement* placements, const int32_t* owned_masks,
                                        const int64_t* first_point, int64_t* child_keys, int32_t* point_slots,
                                        int64_t* new_points) {
  const int64_t* dims = lattice.dims;
  int64_t coords[3];
  const int64_t batch = lattice.decode(keys[p], coords);
  const Placement& own = placements[p];
  for (int child = 0; child < 8; ++child) {
    const int o[3] = {(child >> 2) & 1, (child >> 1) & 1, child & 1};
    const int64_t index = own.child(o[0], o[1], o[2]);
    child_keys[index] = ((batch * 2 * dims[0] + 2 * coords[0] + o[0]) * 2 * dims[1] + 2 * coords[1] + o[1]) * 2 * dims[2] +
                        2 * coords[2] + o[2];
    for (int q = 0; q < 8; ++q) {
      const int l[3] = {o[0] + ((q >> 2) & 1), o[1] + ((q >> 1) & 1), o[2] + (q & 1)};
      if (l[0] % 2 == 0 && l[1] % 2 == 0 && l[2] % 2 == 0) {
        point_slots[8 * index + q] = static_cast<int32_t>(parent_corner_slot + (l[0] / 2) * 4 + (l[1] / 2) * 2 + l[2] / 2);
      }
    }
  }
  const int32_t mask = owned_masks[p];
  int64_t slot = first_point[p];
  for (int id = 0; id < kLocalPoints; ++id) {
    if (!((mask >> id) & 1)) continue;
    const int l[3] = {id / 9, id / 3 % 3, id % 3};
    int64_t point = batch;
    for (int a = 0; a < 3; ++a) point = point * (2 * dims[a] + 1) + 2 * coords[a] + l[a];
    new_points[slot] = point;
    const int shared = sharing_axes(l);
    for (int subset = shared;; subset = (subset - 1) & shared) {
      const int32_t sharer = neighbours[sharer_index(l, subset)];
      if (sharer != kNoCell) {
        const Placement& placement = placements[sharer];
        int local[3];  // the point in the sharing parent's frame
        for (int a = 0; a < 3; ++a) local[a] = (subset >> (2 - a)) & 1 ? 2 - l[a] : l[a];
        // Its children holding the point: along an axis where local is 1 both, else the one at local / 2.
        const int both = (local[0] == 1 ? 4 : 0) | (local[1] == 1 ? 2 : 0) | (local[2] == 1 ? 1 : 0);
        for (int upper = both;; upper = (upper - 1) & both) {
          int o[3];
          for (int a = 0; a < 3; ++a) o[a] = local[a] == 1 ? (upper >> (2 - a)) & 1 : local[a] / 2;
          const int q = (local[0] - o[0]) * 4 + (local[1] - o[1]) * 2 + (local[2] - o[2]);
          point_slots[8 * placement.child(o[0], o[1], o[2]) + q] = static_cast<int32_t>(slot);
          if (upper == 0) break;
        }
      }
      if (subset == 0) break;
    }
    ++slot;
  }
}

// Shape, dtype and device checks of the closed set passed with a frontier to open_faces.
inline void check_closed_cells(const at::Tensor& closed, const at::Tensor& frontier) {
  TORCH_CHECK_VALUE(closed.dim() == 1 && closed.scalar_type() == at::kLong, "closed must be int64 [C], got ",
                    closed.scalar_type(), " ", closed.sizes());
  TORCH_CHECK_VALUE(closed.device() == frontier.device(), "closed and frontier must share a device");
}

// The per-parent tables of the refine step for `parents` kept cells (int64 `options`): keys and
// source cell indices [parents], neighbours [parents, 27] int32, placements [parents, 3] (Placement),
// owned masks [parents] int32 and owned counts [parents].
struct ParentTables {
  at::Tensor keys, source, neighbours, placements, owned_masks, owned_counts;

  ParentTables(int64_t parents, const at::TensorOptions& options)
      : keys(at::empty({parents}, options)),
        source(at::empty({parents}, options)),
        neighbours(at::empty({parents, kLocalPoints}, options.dtype(at::kInt))),
        placements(at::empty({parents, 3}, options)),
        owned_masks(at::empty({parents}, options.dtype(at::kInt))),
        owned_counts(at::empty({parents}, options)) {
    TORCH_CHECK_VALUE(parents < (int64_t(1) << 31), "narrow_band_refine keeps at most 2^31 - 1 cells, got ", parents);
  }

  Placement* placement_data() { return reinterpret_cast<Placement*>(placements.mutable_data_ptr<int64_t>()); }
};

// The refine step's outputs: child keys [8 parents], point slots [8 parents, 8] int32 into the
// value table of `points` new values and 8 per input cell (`count`), new point keys [points].
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_refined(const at::TensorOptions& options, int64_t count,
                                                                       int64_t parents, int64_t points) {
  TORCH_CHECK_VALUE(points + 8 * count < (int64_t(1) << 31), "narrow_band_refine: the value table holds at most ",
                    "2^31 - 1 values, got ", points, " new points and ", count, " cells");
  return {at::empty({8 * parents}, options), at::empty({8 * parents, 8}, options.dtype(at::kInt)),
          at::empty({points}, options)};
}

// The closure of the finest level (a face crossed by the surface must have a cell on each side):
// bit 2 * axis + side of the result is set when the cell's face on `side` (0: low, 1: high) of
// `axis` has corners on both sides of the level and the face neighbour there lies inside the
// lattice but not in the sorted `closed` keys [count].
template <typename T>
C10_HOST_DEVICE inline int open_faces(const SparseLattice& lattice, int64_t key, const T* corners, T level,
                                      const int64_t* closed, int64_t count) {
  int64_t coords[3];
  lattice.decode(key, coords);
  int64_t hint = -1;
  int open = 0;
  for (int axis = 0; axis < 3; ++axis) {
    for (int side = 0; side < 2; ++side) {
      const int64_t neighbour = coords[axis] + 2 * side - 1;
      if (neighbour < 0 || neighbour >= lattice.dims[axis]) continue;
      bool any_above = false, any_below = false;
      for (int c = 0; c < 8; ++c) {
        if (((c >> (2 - axis)) & 1) != side) continue;
        any_above |= corners[c] > level;
        any_below |= !(corners[c] > level);
      }
      if (!(any_above && any_below)) continue;
      if (hint < 0) hint = gallop_lower_bound(closed, count, 0, key);
      const int64_t target = key + (2 * side - 1) * lattice.stride[axis];
      const int64_t found = gallop_lower_bound(closed, count, hint, target);
      if (found == count || closed[found] != target) open |= 1 << (2 * axis + side);
    }
  }
  return open;
}

C10_HOST_DEVICE inline int count_bits(int mask) {
  int count = 0;
  for (; mask; mask &= mask - 1) ++count;
  return count;
}

// The face neighbours' keys of the open faces (open_faces' mask) of the cell `key`, in face order.
C10_HOST_DEVICE inline void write_open_neighbours(const SparseLattice& lattice, int64_t key, int open, int64_t* out) {
  for (int face = 0; face < 6; ++face) {
    if ((open >> face) & 1) *out++ = key + (2 * (face & 1) - 1) * lattice.stride[face / 2];
  }
}

}  // namespace get3dhuman::narrow_band
