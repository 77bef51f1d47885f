// Marching cubes on dense volumes and on sparse sets of cells, shared by the CPU and CUDA
// kernels so that both produce the same topology in the same order.
//
// Conventions. A volume is [D, H, W] (axes 0, 1, 2); vertex coordinates are array indices.
// Corner c of a cell sits at offset ((c >> 2) & 1, (c >> 1) & 1, c & 1). Edge e runs along axis
// e >> 2 from corner edge_start(e); its two low bits place it on the other two axes (first other
// axis in bit 1). A corner is "above" when its value > level.
//
// The case table is built here, not copied: for every corner configuration, the iso-contour is
// traced on each cube face (on a face whose above corners sit diagonally, the above corners are
// cut off separately: the decision depends on the face alone, so the two cells that share a
// face agree and the mesh is watertight), the face segments join into loops, and each loop is
// triangulated as a fan. Segments keep the above side on their left seen from outside the
// cube, which orients every triangle's normal towards increasing values.
#pragma once

#include "../iso_level.h"
#include "../sparse_cells.h"

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>

namespace get3dhuman::marching_cubes {

constexpr int kMaxTriangles = 5;  // most triangles of any case (checked when building)
constexpr int kTableWidth = 3 * kMaxTriangles + 1;

struct Tables {
  int8_t triangles[256][kTableWidth];  // edge ids, three per triangle, -1 terminated
  uint8_t count[256];                  // triangles per case
};

C10_HOST_DEVICE inline int corner_bit(int axis) { return 2 - axis; }
C10_HOST_DEVICE inline int first_other(int axis) { return axis == 0 ? 1 : 0; }
C10_HOST_DEVICE inline int second_other(int axis) { return axis == 2 ? 1 : 2; }
C10_HOST_DEVICE inline int edge_axis(int edge) { return edge >> 2; }
C10_HOST_DEVICE inline int edge_start(int edge) {
  const int axis = edge >> 2, q = edge & 3;
  return (((q >> 1) & 1) << corner_bit(first_other(axis))) | ((q & 1) << corner_bit(second_other(axis)));
}
C10_HOST_DEVICE inline int edge_end(int edge) { return edge_start(edge) | (1 << corner_bit(edge_axis(edge))); }
C10_HOST_DEVICE inline int corner_offset(int corner, int axis) { return (corner >> corner_bit(axis)) & 1; }

inline int edge_between(int a, int b) {
  const int start = a < b ? a : b, diff = a ^ b;
  const int axis = diff == 4 ? 0 : (diff == 2 ? 1 : 2);
  return axis * 4 + (corner_offset(start, first_other(axis)) << 1) + corner_offset(start, second_other(axis));
}

// Whether two edges lie on a common cube face (face = an axis and a side).
inline bool share_face(int e1, int e2) {
  for (int a = 0; a < 3; ++a) {
    if (a == edge_axis(e1) || a == edge_axis(e2)) continue;
    if (corner_offset(edge_start(e1), a) == corner_offset(edge_start(e2), a)) return true;
  }
  return false;
}

inline Tables build_tables() {
  Tables tables{};
  for (int config = 0; config < 256; ++config) {
    int next[12];
    for (int& e : next) e = -1;
    for (int axis = 0; axis < 3; ++axis) {
      const int b = first_other(axis), c = second_other(axis);
      // e_b x e_c is +e_axis for (b, c) = (1, 2) and (0, 1), -e_axis for (0, 2).
      const int cross_sign = axis == 1 ? -1 : 1;
      for (int side = 0; side < 2; ++side) {
        static const int walk[4][2] = {{0, 0}, {1, 0}, {1, 1}, {0, 1}};  // counter-clockwise about e_b x e_c
        int cycle[4];
        for (int n = 0; n < 4; ++n) {
          cycle[n] = (side << corner_bit(axis)) | (walk[n][0] << corner_bit(b)) | (walk[n][1] << corner_bit(c));
        }
        if (cross_sign * (2 * side - 1) < 0) {  // make the walk counter-clockwise seen from outside
          const int t = cycle[1];
          cycle[1] = cycle[3];
          cycle[3] = t;
        }
        int crossing[4], leaves[4], n = 0;
        for (int i = 0; i < 4; ++i) {
          const int p = cycle[i], q = cycle[(i + 1) % 4];
          const int above_p = (config >> p) & 1, above_q = (config >> q) & 1;
          if (above_p != above_q) {
            crossing[n] = edge_between(p, q);
            leaves[n] = above_p;
            ++n;
          }
        }
        // A crossing that leaves the above region joins the crossing just before it: the
        // segment cuts off one above corner (or an above side) and keeps it on its left.
        for (int i = 0; i < n; ++i) {
          if (leaves[i]) next[crossing[i]] = crossing[(i + n - 1) % n];
        }
      }
    }
    bool visited[12] = {};
    int written = 0;
    for (int start = 0; start < 12; ++start) {
      if (next[start] < 0 || visited[start]) continue;
      int loop[12], length = 0;
      for (int e = start; !visited[e]; e = next[e]) {
        visited[e] = true;
        loop[length++] = e;
      }
      // Fan from an apex whose diagonals leave the cube faces: a diagonal between two points of
      // one face would also be drawn by the neighbour cell, giving an edge of four triangles.
      int apex = -1;
      for (int candidate = 0; candidate < length && apex < 0; ++candidate) {
        bool inside = true;
        for (int i = 2; i + 1 < length; ++i) inside &= !share_face(loop[candidate], loop[(candidate + i) % length]);
        if (inside) apex = candidate;
      }
      TORCH_CHECK(apex >= 0, "marching cubes case ", config, ": no fan apex keeps its diagonals inside the cube");
      for (int i = 1; i + 1 < length; ++i) {
        TORCH_CHECK(written < 3 * kMaxTriangles, "marching cubes case ", config, " needs more than ",
                    kMaxTriangles, " triangles");
        tables.triangles[config][written++] = static_cast<int8_t>(loop[apex]);
        tables.triangles[config][written++] = static_cast<int8_t>(loop[(apex + i) % length]);
        tables.triangles[config][written++] = static_cast<int8_t>(loop[(apex + i + 1) % length]);
      }
    }
    tables.count[config] = static_cast<uint8_t>(written / 3);
    for (int i = written; i < kTableWidth; ++i) tables.triangles[config][i] = -1;
  }
  return tables;
}

inline const Tables& host_tables() {
  static const Tables tables = build_tables();
  return tables;
}

// Where the iso-surface crosses the edge from value a to value b, as a fraction from a, in
// double with the level as given: a float32 level would be off by up to half its ulp, which
// divided by a small b - a moves the vertex visibly (and away from skimage's, computed so).
// Infinite values (a border padded with +-inf) put the crossing on the finite end.
C10_HOST_DEVICE inline bool is_infinite(double x) {
#if defined(__CUDA_ARCH__)
  return isinf(x);
#else
  return std::isinf(x);
#endif
}

template <typename T>
C10_HOST_DEVICE inline float crossing_fraction(T a, T b, double level) {
  const bool inf_a = is_infinite(a), inf_b = is_infinite(b);
  if (inf_a || inf_b) return inf_a && inf_b ? 0.5f : (inf_a ? 1.0f : 0.0f);
  return static_cast<float>((level - double(a)) / (double(b) - double(a)));
}

// ----------------------------------------------------------------------------------------
// Dense volumes. The kernels first pack "above" into one bit per voxel (rows of `words_per_row`
// uint64 words along axis 2), then work on rows (i, j): a first pass counts each row's vertices
// and its cell row's triangles, a scan turns counts into offsets, a second pass writes. Voxel
// (i, j, k) owns the crossed edges that start at it, so every vertex has one owner. Vertices
// are ordered by (i, j, k, axis), triangles by (i, j, k, table entry).

struct DenseBits {
  const uint64_t* words;
  int64_t depth, height, width, words_per_row;

  C10_HOST_DEVICE uint64_t word(int64_t i, int64_t j, int64_t w) const {
    return words[(i * height + j) * words_per_row + w];
  }
  // Bits of word w that are voxels (k < width - shift).
  C10_HOST_DEVICE uint64_t valid(int64_t w, int64_t shift = 0) const {
    const int64_t left = width - shift - 64 * w;
    return left >= 64 ? ~uint64_t(0) : (left <= 0 ? uint64_t(0) : (uint64_t(1) << left) - 1);
  }
  // Bit k of the word holds voxel k + 1 of row (i, j).
  C10_HOST_DEVICE uint64_t next(int64_t i, int64_t j, int64_t w) const {
    const uint64_t carry = w + 1 < words_per_row ? word(i, j, w + 1) << 63 : uint64_t(0);
    return (word(i, j, w) >> 1) | carry;
  }
  // Crossed edges owned by row (i, j) in word w, one mask per axis.
  C10_HOST_DEVICE void owned(int64_t i, int64_t j, int64_t w, uint64_t* masks) const {
    const uint64_t here = word(i, j, w);
    masks[0] = i + 1 < depth ? here ^ word(i + 1, j, w) : uint64_t(0);
    masks[1] = j + 1 < height ? here ^ word(i, j + 1, w) : uint64_t(0);
    masks[2] = (here ^ next(i, j, w)) & valid(w, 1);
  }
};

// Set bits of a mask (edge masks of 12 bits too).
C10_HOST_DEVICE inline int popcount64(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}

C10_HOST_DEVICE inline int lowest_bit(uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(x)) - 1;
#else
  return __builtin_ctzll(x);
#endif
}

C10_HOST_DEVICE inline uint64_t below(int bit) { return (uint64_t(1) << bit) - 1; }

// Cells of cell row (i, j) in word w whose corners are not all on one side.
C10_HOST_DEVICE inline uint64_t mixed_cells(const DenseBits& v, int64_t i, int64_t j, int64_t w, uint64_t* low,
                                            uint64_t* high) {
  for (int r = 0; r < 4; ++r) {
    low[r] = v.word(i + (r >> 1), j + (r & 1), w);
    high[r] = v.next(i + (r >> 1), j + (r & 1), w);
  }
  uint64_t mixed = 0;
  for (int r = 1; r < 4; ++r) mixed |= (low[r] ^ low[0]) | (high[r] ^ low[0]);
  return (mixed | (high[0] ^ low[0])) & v.valid(w, 1);
}

// Case of cell k (bit k of the words), corner 2 * row + dk.
C10_HOST_DEVICE inline unsigned cell_case(const uint64_t* low, const uint64_t* high, int k) {
  unsigned config = 0;
  for (int r = 0; r < 4; ++r) {
    config |= unsigned((low[r] >> k) & 1u) << (2 * r);
    config |= unsigned((high[r] >> k) & 1u) << (2 * r + 1);
  }
  return config;
}

// Counts of row (i, j): the vertices its voxels own and (when the cell row exists) its triangles.
C10_HOST_DEVICE inline void dense_row_counts(const DenseBits& v, const uint8_t* triangle_count, int64_t i, int64_t j,
                                             int64_t* vertices, int64_t* triangles) {
  int64_t nv = 0, nt = 0;
  const bool cells = i + 1 < v.depth && j + 1 < v.height;
  for (int64_t w = 0; w < v.words_per_row; ++w) {
    uint64_t masks[3];
    v.owned(i, j, w, masks);
    nv += popcount64(masks[0]) + popcount64(masks[1]) + popcount64(masks[2]);
    if (!cells) continue;
    uint64_t low[4], high[4];
    for (uint64_t mixed = mixed_cells(v, i, j, w, low, high); mixed != 0; mixed &= mixed - 1) {
      nt += triangle_count[cell_case(low, high, lowest_bit(mixed))];
    }
  }
  *vertices = nv;
  *triangles = nt;
}

template <typename T>
C10_HOST_DEVICE inline void write_vertex(float* out, int64_t i, int64_t j, int64_t k, int axis, T a, T b,
                                         double level) {
  const float t = crossing_fraction(a, b, level);
  out[0] = float(i) + (axis == 0 ? t : 0.0f);
  out[1] = float(j) + (axis == 1 ? t : 0.0f);
  out[2] = float(k) + (axis == 2 ? t : 0.0f);
}

// Writes the vertices owned by row (i, j), from vertex_offsets[row] (every row's first id).
template <typename T>
C10_HOST_DEVICE inline void dense_row_vertices(const DenseBits& v, const T* volume, double level,
                                               const int64_t* vertex_offsets, int64_t i, int64_t j, float* vertices) {
  const int64_t row = i * v.height + j;
  int64_t id = vertex_offsets[row];
  const T* values = volume + row * v.width;
  for (int64_t w = 0; w < v.words_per_row; ++w) {
    uint64_t masks[3];
    v.owned(i, j, w, masks);
    for (uint64_t any = masks[0] | masks[1] | masks[2]; any != 0; any &= any - 1) {
      const int bit = lowest_bit(any);
      const int64_t k = 64 * w + bit;
      const T here = values[k];
      if ((masks[0] >> bit) & 1u) write_vertex(vertices + 3 * id++, i, j, k, 0, here, values[v.height * v.width + k], level);
      if ((masks[1] >> bit) & 1u) write_vertex(vertices + 3 * id++, i, j, k, 1, here, values[v.width + k], level);
      if ((masks[2] >> bit) & 1u) write_vertex(vertices + 3 * id++, i, j, k, 2, here, values[k + 1], level);
    }
  }
}

// Vertex ids along one row: the row's first id plus the crossings owned before voxel k.
struct RowIds {
  int64_t start;       // id of the first vertex owned in word w
  uint64_t masks[3];   // owned masks of word w
  int64_t word = -1;

  C10_HOST_DEVICE void seek(const DenseBits& v, int64_t i, int64_t j, int64_t w) {
    while (word < w) {
      if (word >= 0) start += popcount64(masks[0]) + popcount64(masks[1]) + popcount64(masks[2]);
      ++word;
      v.owned(i, j, word, masks);
    }
  }
  // Id of the vertex on `axis` owned by voxel k (k in the current word).
  C10_HOST_DEVICE int64_t id(int bit, int axis) const {
    const uint64_t before = below(bit);
    int64_t id = start + popcount64(masks[0] & before) + popcount64(masks[1] & before) + popcount64(masks[2] & before);
    for (int a = 0; a < axis; ++a) id += (masks[a] >> bit) & 1u;
    return id;
  }
};

// Writes the triangles of cell row (i, j) (i < D - 1, j < H - 1) from face index `face`.
C10_HOST_DEVICE inline void dense_row_triangles(const DenseBits& v, const Tables& tables,
                                                const int64_t* vertex_offsets, int64_t face, bool flip, int64_t i,
                                                int64_t j, int64_t* faces) {
  // Two cursors per owner row (i + di, j + dj): voxels k and k + 1 may lie in different words.
  RowIds rows[4][2];
  for (int r = 0; r < 4; ++r) {
    rows[r][0].start = rows[r][1].start = vertex_offsets[(i + (r >> 1)) * v.height + j + (r & 1)];
  }
  for (int64_t w = 0; w < v.words_per_row; ++w) {
    uint64_t low[4], high[4];
    uint64_t mixed = mixed_cells(v, i, j, w, low, high);
    for (; mixed != 0; mixed &= mixed - 1) {
      const int bit = lowest_bit(mixed);
      const unsigned config = cell_case(low, high, bit);
      const int8_t* edges = tables.triangles[config];
      for (int n = 0; n < 3 * tables.count[config]; n += 3) {
        int64_t ids[3];
        for (int m = 0; m < 3; ++m) {
          const int edge = edges[n + m], start = edge_start(edge);
          const int r = 2 * corner_offset(start, 0) + corner_offset(start, 1);
          const int64_t k = 64 * w + bit + corner_offset(start, 2);
          RowIds& cursor = rows[r][corner_offset(start, 2)];
          cursor.seek(v, i + (r >> 1), j + (r & 1), k >> 6);
          ids[m] = cursor.id(int(k & 63), edge_axis(edge));
        }
        int64_t* out = faces + 3 * face++;
        out[0] = ids[0];
        out[1] = flip ? ids[2] : ids[1];
        out[2] = flip ? ids[1] : ids[2];
      }
    }
  }
}

// ----------------------------------------------------------------------------------------
// Sparse cells (sparse_cells.h), sorted by key. A crossed edge is owned by the cell with
// the smallest key among the cells that share it, which is (P_x - 1 or 0) along the edge's two
// other axes, P being the edge's start point; so the set of cells must contain every cell
// around each crossed edge (the narrow band closes it). Vertices are ordered by (owner cell,
// edge), triangles by (cell, table). Cells are classified against `threshold`, the level's
// iso_threshold in the values' dtype; vertices are placed with the `level` itself.

template <typename T>
C10_HOST_DEVICE inline unsigned sparse_case(const T* corners, T threshold) {
  unsigned config = 0;
#pragma unroll
  for (int c = 0; c < 8; ++c) config |= unsigned(corners[c] > threshold) << c;
  return config;
}

// Offsets (0 or -1) from a cell to the owner of its edge `edge` along the two other axes.
C10_HOST_DEVICE inline void owner_offset(int edge, const int64_t* coords, int* offset) {
  const int axis = edge_axis(edge), start = edge_start(edge);
  offset[0] = offset[1] = offset[2] = 0;
  const int others[2] = {first_other(axis), second_other(axis)};
  for (int other : others) {
    if (corner_offset(start, other) == 0 && coords[other] > 0) offset[other] = -1;
  }
}

// Crossed edges (bit e) of a cell with corner case `config`, and those it owns.
C10_HOST_DEVICE inline unsigned crossed_edges(unsigned config) {
  unsigned bits = 0;
  for (int e = 0; e < 12; ++e) {
    if (((config >> edge_start(e)) & 1u) != ((config >> edge_end(e)) & 1u)) bits |= 1u << e;
  }
  return bits;
}

C10_HOST_DEVICE inline unsigned owned_edges(unsigned crossed, const int64_t* coords) {
  unsigned bits = 0;
  for (int e = 0; e < 12; ++e) {
    if (!((crossed >> e) & 1u)) continue;
    int offset[3];
    owner_offset(e, coords, offset);
    if (offset[0] == 0 && offset[1] == 0 && offset[2] == 0) bits |= 1u << e;
  }
  return bits;
}

// The same edge seen from its owner cell: offsets of -1 move its start corner to 1.
C10_HOST_DEVICE inline int edge_in_owner(int edge, const int* offset) {
  const int axis = edge_axis(edge);
  int start = edge_start(edge);
  const int others[2] = {first_other(axis), second_other(axis)};
  for (int other : others) {
    if (offset[other] < 0) start |= 1 << corner_bit(other);
  }
  return axis * 4 + (corner_offset(start, first_other(axis)) << 1) + corner_offset(start, second_other(axis));
}

// First pass of one cell: the crossed edges it owns, its vertex and triangle counts.
template <typename T>
C10_HOST_DEVICE inline void sparse_cell_count(const SparseLattice& lattice, const Tables& tables, const int64_t* keys,
                                              const T* corner_values, T threshold, int64_t cell, uint16_t* owned,
                                              int64_t* vertex_counts, int64_t* face_counts) {
  int64_t coords[3];
  lattice.decode(keys[cell], coords);
  const unsigned config = sparse_case(corner_values + 8 * cell, threshold);
  const unsigned mine = owned_edges(crossed_edges(config), coords);
  owned[cell] = static_cast<uint16_t>(mine);
  vertex_counts[cell] = popcount64(mine);
  face_counts[cell] = tables.count[config];
}

// The cell owning crossed edge `edge` of `cell` (the cell itself, or a neighbour found by
// `find(key, direction)`: the index of the cell with that key or -1; direction, 0..7, says which
// owner offset, for finders that keep a cursor per direction) and, in `local`, the edge's number
// there. -1 when that cell is missing or does not own the edge: the cells are not closed, or
// their corner values disagree.
template <typename Find>
C10_HOST_DEVICE inline int64_t edge_owner(const SparseLattice& lattice, int64_t key, const int64_t* coords,
                                          int64_t cell, int edge, const uint16_t* owned, Find& find, int* local) {
  int offset[3];
  owner_offset(edge, coords, offset);
  if (offset[0] == 0 && offset[1] == 0 && offset[2] == 0) {
    *local = edge;
    return cell;
  }
  const int64_t owner =
      find(key + offset[0] * lattice.stride[0] + offset[1] * lattice.stride[1] + offset[2] * lattice.stride[2],
           -4 * offset[0] - 2 * offset[1] - offset[2]);
  *local = edge_in_owner(edge, offset);
  return owner >= 0 && ((unsigned(owned[owner]) >> *local) & 1u) ? owner : -1;
}

// Whether the owner of each crossed edge of one cell that the cell does not own is present and
// owns it (after every cell's first pass): sparse_cell_emit's verdict, without emitting. The
// CUDA kernels run it as a pass of its own, so that the verdict is read with the output sizes
// (one synchronisation); the CPU kernel takes the verdict from the emission.
template <typename T, typename Find>
C10_HOST_DEVICE inline bool sparse_cell_closed(const SparseLattice& lattice, const int64_t* keys,
                                               const T* corner_values, const uint16_t* owned, T threshold, int64_t cell,
                                               Find& find) {
  int64_t coords[3];
  const int64_t key = keys[cell];
  lattice.decode(key, coords);
  const unsigned foreign = crossed_edges(sparse_case(corner_values + 8 * cell, threshold)) & ~unsigned(owned[cell]);
  for (int e = 0; e < 12; ++e) {
    int local;
    if (((foreign >> e) & 1u) && edge_owner(lattice, key, coords, cell, e, owned, find, &local) < 0) return false;
  }
  return true;
}

// Last pass of one cell: writes its vertices (from vertex_offsets[cell]) and triangles (from
// face_offset); false when the owner of one of their vertices is missing or does not own it
// (then that vertex is numbered 0; the set is refused).
template <typename T, typename Find>
C10_HOST_DEVICE inline bool sparse_cell_emit(const SparseLattice& lattice, const Tables& tables, const int64_t* keys,
                                             const T* corner_values, const uint16_t* owned, const int64_t* vertex_offsets,
                                             int64_t face_offset, T threshold, double level, bool flip, int64_t cell,
                                             Find& find,
                                             float* vertices, int64_t* faces) {
  int64_t coords[3];
  const int64_t key = keys[cell];
  lattice.decode(key, coords);
  const T* corners = corner_values + 8 * cell;
  const unsigned mine = owned[cell];
  int64_t id = vertex_offsets[cell];
  for (int e = 0; e < 12; ++e) {
    if (!((mine >> e) & 1u)) continue;
    const int start = edge_start(e), axis = edge_axis(e);
    write_vertex(vertices + 3 * id++, coords[0] + corner_offset(start, 0), coords[1] + corner_offset(start, 1),
                 coords[2] + corner_offset(start, 2), axis, corners[start], corners[edge_end(e)], level);
  }
  const unsigned config = sparse_case(corners, threshold);
  const int8_t* edges = tables.triangles[config];
  bool closed = true;
  for (int n = 0; n < 3 * tables.count[config]; n += 3) {
    int64_t ids[3];
    for (int m = 0; m < 3; ++m) {
      int local;
      const int64_t owner = edge_owner(lattice, key, coords, cell, edges[n + m], owned, find, &local);
      closed &= owner >= 0;
      ids[m] = owner < 0 ? 0 : vertex_offsets[owner] + popcount64(unsigned(owned[owner]) & ((1u << local) - 1u));
    }
    int64_t* out = faces + 3 * face_offset;
    face_offset += 1;
    out[0] = ids[0];
    out[1] = flip ? ids[2] : ids[1];
    out[2] = flip ? ids[1] : ids[2];
  }
  return closed;
}

// A finder (for edge_owner) by binary search over the sorted keys: no state, so one per thread.
struct BinaryFinder {
  const int64_t* keys;
  int64_t count;

  C10_HOST_DEVICE int64_t operator()(int64_t target, int) const {
    int64_t lo = 0, hi = count;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (keys[mid] < target) lo = mid + 1; else hi = mid;
    }
    return lo < count && keys[lo] == target ? lo : -1;
  }
};

// Shape and dtype checks shared by the CPU and CUDA entry points (the Python wrapper checks
// user input with fuller messages; these guard direct calls of the registered ops).
inline void check_dense_args(const at::Tensor& volume) {
  TORCH_CHECK_VALUE(volume.dim() == 3, "volume must be [D, H, W], got ", volume.sizes());
  TORCH_CHECK_TYPE(volume.scalar_type() == at::kFloat || volume.scalar_type() == at::kDouble,
                   "volume must be float32 or float64, got ", volume.scalar_type());
}

constexpr const char* kNotClosedMessage =
    "cells must be sorted, unique and closed (every cell around a crossed edge present, with the same corner "
    "values); the narrow band builds such sets";

}  // namespace get3dhuman::marching_cubes
