// Native test of the closure check of sparse marching cubes: the CUDA kernels refuse a set of
// cells by sparse_cell_closed, in a pass before the emission (so that the verdict is read with
// the output sizes), the CPU kernel by the verdict of sparse_cell_emit. Run on the host, both
// must agree cell by cell (the Python tests check the CPU kernel's verdict): on every crossing
// cell of a sphere (closed), with every other cell left out (open), and with one corner value
// that disagrees with the neighbours sharing it.
#include "../../csrc/marching_cubes/marching_cubes.h"

#include <cmath>
#include <cstdio>
#include <vector>

using namespace get3dhuman;
using namespace get3dhuman::marching_cubes;

namespace {

int failures = 0;

void expect(bool condition, const char* what) {
  if (!condition && failures++ < 10) std::fprintf(stderr, "FAILED: %s\n", what);
}

struct Cells {
  std::vector<int64_t> keys;
  std::vector<float> corners;  // 8 a cell, in the marching cubes corner order
};

// Every cell of an n^3 point lattice (n - 1 cells per axis) whose corners straddle 0 for a sphere.
Cells crossing_cells(int64_t n) {
  const auto value = [n](int64_t i, int64_t j, int64_t k) {
    const auto at = [n](int64_t index) { return -1.f + 2.f * float(index) / float(n - 1); };
    return std::sqrt(at(i) * at(i) + at(j) * at(j) + at(k) * at(k)) - 0.6f;
  };
  Cells cells;
  const int64_t m = n - 1;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j)
      for (int64_t k = 0; k < m; ++k) {
        float corners[8];
        int above = 0;
        for (int c = 0; c < 8; ++c) {
          corners[c] = value(i + corner_offset(c, 0), j + corner_offset(c, 1), k + corner_offset(c, 2));
          above += corners[c] > 0.f;
        }
        if (above == 0 || above == 8) continue;
        cells.keys.push_back((i * m + j) * m + k);
        cells.corners.insert(cells.corners.end(), corners, corners + 8);
      }
  return cells;
}

// The verdicts of sparse_cell_closed and sparse_cell_emit for each cell.
void verdicts(const Cells& cells, int64_t m, std::vector<bool>* closed, std::vector<bool>* emitted) {
  const SparseLattice lattice = make_lattice(m, m, m);
  const Tables& tables = host_tables();
  const int64_t count = int64_t(cells.keys.size());
  std::vector<uint16_t> owned(count);
  std::vector<int64_t> counts(2 * count);
  for (int64_t cell = 0; cell < count; ++cell) {
    sparse_cell_count(lattice, tables, cells.keys.data(), cells.corners.data(), 0.f, cell, owned.data(),
                      counts.data(), counts.data() + count);
  }
  std::vector<int64_t> vertex_offsets(count + 1, 0);
  int64_t faces = 0;
  for (int64_t cell = 0; cell < count; ++cell) {
    vertex_offsets[cell + 1] = vertex_offsets[cell] + counts[cell];
    faces += counts[count + cell];
  }
  std::vector<float> vertex_buffer(3 * vertex_offsets[count]);
  std::vector<int64_t> face_buffer(3 * faces);
  const BinaryFinder finder{cells.keys.data(), count};
  closed->assign(count, true);
  emitted->assign(count, true);
  int64_t face_offset = 0;
  for (int64_t cell = 0; cell < count; ++cell) {
    (*closed)[cell] = sparse_cell_closed(lattice, cells.keys.data(), cells.corners.data(), owned.data(), 0.f, cell,
                                         finder);
    (*emitted)[cell] = sparse_cell_emit(lattice, tables, cells.keys.data(), cells.corners.data(), owned.data(),
                                        vertex_offsets.data(), face_offset, 0.f, 0.0, false, cell, finder,
                                        vertex_buffer.data(), face_buffer.data());
    face_offset += counts[count + cell];
  }
}

// Runs both checks; returns how many cells they refuse (-1 when they disagree on a cell).
int64_t refused(const Cells& cells, int64_t m) {
  std::vector<bool> closed, emitted;
  verdicts(cells, m, &closed, &emitted);
  int64_t refusals = 0;
  for (size_t cell = 0; cell < closed.size(); ++cell) {
    if (closed[cell] != emitted[cell]) return -1;
    refusals += !closed[cell];
  }
  return refusals;
}

}  // namespace

int main() {
  const int64_t n = 20, m = n - 1;
  const Cells all = crossing_cells(n);
  expect(all.keys.size() > 100, "the sphere crosses cells");
  expect(refused(all, m) == 0, "every crossing cell of a sphere: closed");

  Cells every_other;
  for (size_t cell = 0; cell < all.keys.size(); cell += 2) {
    every_other.keys.push_back(all.keys[cell]);
    every_other.corners.insert(every_other.corners.end(), all.corners.begin() + 8 * cell,
                               all.corners.begin() + 8 * cell + 8);
  }
  expect(refused(every_other, m) > 0, "every other cell left out: refused, by both checks alike");

  // A cell whose corner 0 and its three neighbours (corners 1, 2, 4) lie outside: moving corner 0
  // inside crosses its three edges, which the neighbours owning them see uncrossed.
  Cells disagreeing = all;
  size_t cell = 0;
  const auto outside = [&](int c) { return all.corners[8 * cell + c] > 0.f; };
  while (cell < all.keys.size() && !(outside(0) && outside(1) && outside(2) && outside(4))) ++cell;
  expect(cell < all.keys.size(), "a cell with corners 0, 1, 2 and 4 outside");
  if (cell < all.keys.size()) {
    disagreeing.corners[8 * cell] = -1.f;
    expect(refused(disagreeing, m) > 0, "a corner value that disagrees: refused, by both checks alike");
  }

  if (failures == 0) std::printf("marching cubes closure checks: ok\n");
  return failures == 0 ? 0 : 1;
}
