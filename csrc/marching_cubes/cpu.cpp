// CPU kernels of marching cubes: rows (dense) or cells (sparse) in parallel, two passes.
#include "marching_cubes.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <tuple>
#include <type_traits>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace get3dhuman::marching_cubes {
namespace {

constexpr int64_t kRowGrain = 16;
constexpr int64_t kCellGrain = 4096;

// Exclusive offsets [rows + 1] of `counts` [rows] (int64).
at::Tensor exclusive_offsets(const at::Tensor& counts) {
  at::Tensor offsets = at::empty({counts.size(0) + 1}, counts.options());
  offsets.narrow(0, 0, 1).zero_();
  at::Tensor tail = offsets.narrow(0, 1, counts.size(0));
  at::cumsum_out(tail, counts, 0);
  return offsets;
}

// Looks cells up by walking one cursor per owner direction: the cells of a chunk are visited
// in increasing key order, so each direction's targets increase too.
struct MergeFinder {
  const int64_t* keys;
  int64_t count;
  int64_t cursor[8] = {-1, -1, -1, -1, -1, -1, -1, -1};

  int64_t operator()(int64_t target, int slot) {
    int64_t& at = cursor[slot];
    if (at < 0) at = std::lower_bound(keys, keys + count, target) - keys;
    while (at < count && keys[at] < target) ++at;
    return at < count && keys[at] == target ? at : -1;
  }
};

}  // namespace

// 64 voxels -> one word of value > level (false for NaN, like the comparison in C++).
template <typename scalar_t>
uint64_t pack_word_scalar(const scalar_t* values, int64_t count, scalar_t level) {
  uint64_t word = 0;
  for (int64_t k = 0; k < count; ++k) word |= uint64_t(values[k] > level) << k;
  return word;
}

#if defined(__GNUC__) && defined(__x86_64__)
// The wheel targets baseline x86-64; packing is the one pass over every voxel, so it gets
// AVX-512 and AVX2 versions chosen at run time.
__attribute__((target("avx512f"))) uint64_t pack_word_avx512(const float* values, float level) {
  const __m512 threshold = _mm512_set1_ps(level);
  uint64_t word = 0;
  for (int q = 0; q < 4; ++q) {
    word |= uint64_t(_mm512_cmp_ps_mask(_mm512_loadu_ps(values + 16 * q), threshold, _CMP_GT_OQ)) << (16 * q);
  }
  return word;
}

__attribute__((target("avx2"))) uint64_t pack_word_avx2(const float* values, float level) {
  const __m256 threshold = _mm256_set1_ps(level);
  uint64_t word = 0;
  for (int q = 0; q < 8; ++q) {
    const __m256 above = _mm256_cmp_ps(_mm256_loadu_ps(values + 8 * q), threshold, _CMP_GT_OQ);
    word |= uint64_t(uint32_t(_mm256_movemask_ps(above))) << (8 * q);
  }
  return word;
}
#endif

using PackFull = uint64_t (*)(const float*, float);

PackFull float_packer() {
#if defined(__GNUC__) && defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) return &pack_word_avx512;
  if (__builtin_cpu_supports("avx2")) return &pack_word_avx2;
#endif
  return nullptr;
}

// Packs value > level into bits, rows of `words_per_row` words (padding bits 0).
template <typename scalar_t>
void pack_above(const scalar_t* values, int64_t rows, int64_t width, int64_t words_per_row, scalar_t level,
                uint64_t* words) {
  static const PackFull simd = float_packer();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* in = values + row * width;
      uint64_t* out = words + row * words_per_row;
      for (int64_t w = 0; w < words_per_row; ++w) {
        const int64_t count = std::min<int64_t>(64, width - 64 * w);
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (simd != nullptr && count == 64) {
            out[w] = simd(in + 64 * w, level);
            continue;
          }
        }
        out[w] = pack_word_scalar(in + 64 * w, count, level);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> dense_cpu(const at::Tensor& volume_in, double level, bool flip) {
  check_dense_args(volume_in);
  const at::Tensor volume = volume_in.contiguous();
  const int64_t depth = volume.size(0), height = volume.size(1), width = volume.size(2);
  const int64_t rows = depth * height, words_per_row = (width + 63) / 64;
  at::Tensor bits = at::empty({rows * words_per_row}, volume.options().dtype(at::kLong));
  at::Tensor counts = at::empty({2, rows}, volume.options().dtype(at::kLong));
  const Tables& tables = host_tables();
  at::Tensor vertices, faces;
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "marching_cubes_dense_cpu", [&] {
    const auto threshold = iso_threshold<scalar_t>(level);
    const scalar_t* values = volume.const_data_ptr<scalar_t>();
    auto* words = reinterpret_cast<uint64_t*>(bits.mutable_data_ptr<int64_t>());
    pack_above(values, rows, width, words_per_row, threshold, words);
    const DenseBits v{words, depth, height, width, words_per_row};
    int64_t* vertex_counts = counts.mutable_data_ptr<int64_t>();
    int64_t* face_counts = vertex_counts + rows;
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        dense_row_counts(v, tables.count, row / height, row % height, vertex_counts + row, face_counts + row);
      }
    });
    const at::Tensor vertex_offsets = exclusive_offsets(counts[0]);
    const at::Tensor face_offsets = exclusive_offsets(counts[1]);
    const int64_t* vo = vertex_offsets.const_data_ptr<int64_t>();
    const int64_t* fo = face_offsets.const_data_ptr<int64_t>();
    vertices = at::empty({vo[rows], 3}, volume.options().dtype(at::kFloat));
    faces = at::empty({fo[rows], 3}, volume.options().dtype(at::kLong));
    float* vertex_ptr = vertices.mutable_data_ptr<float>();
    int64_t* face_ptr = faces.mutable_data_ptr<int64_t>();
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t i = row / height, j = row % height;
        if (vertex_counts[row] > 0) dense_row_vertices(v, values, level, vo, i, j, vertex_ptr);
        if (face_counts[row] > 0) dense_row_triangles(v, tables, vo, fo[row], flip, i, j, face_ptr);
      }
    });
  });
  return {vertices, faces};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sparse_cpu(const at::Tensor& cells_in,
                                                                      const at::Tensor& corner_values_in,
                                                                      at::IntArrayRef dims, double level, bool flip) {
  check_sparse_cells(cells_in, corner_values_in, dims);
  const at::Tensor cells = cells_in.contiguous(), corner_values = corner_values_in.contiguous();
  const int64_t count = cells.size(0);
  const SparseLattice lattice = make_lattice(dims[0], dims[1], dims[2]);
  const Tables& tables = host_tables();
  at::Tensor owned = at::empty({count}, cells.options().dtype(at::kShort));
  at::Tensor counts = at::empty({2, count}, cells.options());
  at::Tensor vertex_offsets, face_offsets, vertices, faces;
  std::atomic<bool> consistent{true};
  AT_DISPATCH_FLOATING_TYPES(corner_values.scalar_type(), "marching_cubes_sparse_cpu", [&] {
    const scalar_t threshold = iso_threshold<scalar_t>(level);
    const int64_t* keys = cells.const_data_ptr<int64_t>();
    const scalar_t* values = corner_values.const_data_ptr<scalar_t>();
    auto* owned_ptr = reinterpret_cast<uint16_t*>(owned.mutable_data_ptr<int16_t>());
    int64_t* vertex_counts = counts.mutable_data_ptr<int64_t>();
    int64_t* face_counts = vertex_counts + count;
    at::parallel_for(0, count, kCellGrain, [&](int64_t begin, int64_t end) {
      for (int64_t cell = begin; cell < end; ++cell) {
        sparse_cell_count(lattice, tables, keys, values, threshold, cell, owned_ptr, vertex_counts, face_counts);
      }
    });
    vertex_offsets = exclusive_offsets(counts[0]);
    face_offsets = exclusive_offsets(counts[1]);
    const int64_t* vo = vertex_offsets.const_data_ptr<int64_t>();
    const int64_t* fo = face_offsets.const_data_ptr<int64_t>();
    vertices = at::empty({vo[count], 3}, corner_values.options().dtype(at::kFloat));
    faces = at::empty({fo[count], 3}, cells.options());
    float* vertex_ptr = vertices.mutable_data_ptr<float>();
    int64_t* face_ptr = faces.mutable_data_ptr<int64_t>();
    at::parallel_for(0, count, kCellGrain, [&](int64_t begin, int64_t end) {
      MergeFinder finder{keys, count};
      bool ok = true;
      for (int64_t cell = begin; cell < end; ++cell) {
        if (vertex_counts[cell] == 0 && face_counts[cell] == 0) continue;
        ok &= sparse_cell_emit(lattice, tables, keys, values, owned_ptr, vo, fo[cell], threshold, level, flip, cell,
                               finder, vertex_ptr, face_ptr);
      }
      if (!ok) consistent = false;
    });
  });
  TORCH_CHECK_VALUE(consistent.load(), kNotClosedMessage);
  return {vertices, faces, vertex_offsets, face_offsets};
}

TORCH_LIBRARY_IMPL(get3dhuman, CPU, m) {
  m.impl("marching_cubes_dense", &dense_cpu);
  m.impl("marching_cubes_sparse", &sparse_cpu);
}

}  // namespace get3dhuman::marching_cubes
