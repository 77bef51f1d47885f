// CPU kernels of the narrow band: the refine step (classify and compact in parallel, survey the
// kept parents (neighbours, placement, owned points), scan, emit children and new points) and the
// closure's open faces (mark, scan, emit).
#include "narrow_band.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sub.h>
#include <torch/library.h>

#include <tuple>

namespace get3dhuman::narrow_band {

constexpr int64_t kGrain = 2048;

void check_sorted(const int64_t* keys, int64_t count, const char* name) {
  for (int64_t i = 1; i < count; ++i) {
    TORCH_CHECK_VALUE(keys[i - 1] < keys[i], name, " must be sorted and unique, got ", keys[i - 1], " before ", keys[i],
                      " at ", i);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> refine_cpu(const at::Tensor& cells_in, const at::Tensor& corner_values_in,
                                                          at::IntArrayRef dims, double level, double threshold) {
  check_sparse_cells(cells_in, corner_values_in, dims);
  const at::Tensor cells = cells_in.contiguous(), corner_values = corner_values_in.contiguous();
  const int64_t count = cells.size(0);
  const int64_t* keys = cells.const_data_ptr<int64_t>();
  check_sorted(keys, count, "cells");
  const SparseLattice lattice = make_lattice(dims[0], dims[1], dims[2]);

  at::Tensor kept = at::empty({count}, cells.options());
  int64_t* kept_ptr = kept.mutable_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(corner_values.scalar_type(), "narrow_band_refine_cpu", [&] {
    const scalar_t* values = corner_values.const_data_ptr<scalar_t>();
    const auto lvl = iso_threshold<scalar_t>(level), thr = static_cast<scalar_t>(threshold);
    at::parallel_for(0, count, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t cell = begin; cell < end; ++cell) kept_ptr[cell] = keep_cell(values + 8 * cell, lvl, thr);
    });
  });
  const at::Tensor rank = at::cumsum(kept, 0);  // inclusive: kept cell -> rank + 1
  const int64_t* rank_ptr = rank.const_data_ptr<int64_t>();
  const int64_t parents = count > 0 ? rank_ptr[count - 1] : 0;
  ParentTables tables(parents, cells.options());
  int64_t* parent_keys_ptr = tables.keys.mutable_data_ptr<int64_t>();
  int64_t* source_ptr = tables.source.mutable_data_ptr<int64_t>();
  at::parallel_for(0, count, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t cell = begin; cell < end; ++cell) {
      if (!kept_ptr[cell]) continue;
      parent_keys_ptr[rank_ptr[cell] - 1] = keys[cell];
      source_ptr[rank_ptr[cell] - 1] = cell;
    }
  });

  int32_t* neighbours_ptr = tables.neighbours.mutable_data_ptr<int32_t>();
  Placement* placements_ptr = tables.placement_data();
  int32_t* masks_ptr = tables.owned_masks.mutable_data_ptr<int32_t>();
  int64_t* counts_ptr = tables.owned_counts.mutable_data_ptr<int64_t>();
  at::parallel_for(0, parents, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      counts_ptr[p] = survey_parent(lattice, parent_keys_ptr, parents, p, neighbours_ptr + kLocalPoints * p,
                                    placements_ptr + p, masks_ptr + p);
    }
  });
  const at::Tensor point_end = at::cumsum(tables.owned_counts, 0);
  const int64_t points = parents > 0 ? point_end.const_data_ptr<int64_t>()[parents - 1] : 0;
  const at::Tensor first_point = at::sub(point_end, tables.owned_counts);

  auto [child_keys, point_slots, new_points] = allocate_refined(cells.options(), count, parents, points);
  const int64_t* first_ptr = first_point.const_data_ptr<int64_t>();
  int64_t* child_keys_ptr = child_keys.mutable_data_ptr<int64_t>();
  int32_t* slots_ptr = point_slots.mutable_data_ptr<int32_t>();
  int64_t* new_points_ptr = new_points.mutable_data_ptr<int64_t>();
  at::parallel_for(0, parents, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      emit_parent(lattice, parent_keys_ptr, p, points + 8 * source_ptr[p], neighbours_ptr + kLocalPoints * p,
                  placements_ptr, masks_ptr, first_ptr, child_keys_ptr, slots_ptr, new_points_ptr);
    }
  });
  return {child_keys, point_slots, new_points};
}

at::Tensor open_faces_cpu(const at::Tensor& frontier_in, const at::Tensor& frontier_values_in,
                          const at::Tensor& closed_in, at::IntArrayRef dims, double level) {
  check_sparse_cells(frontier_in, frontier_values_in, dims);
  check_closed_cells(closed_in, frontier_in);
  const at::Tensor frontier = frontier_in.contiguous(), values = frontier_values_in.contiguous();
  const at::Tensor closed = closed_in.contiguous();
  const int64_t count = frontier.size(0), closed_count = closed.size(0);
  const int64_t* keys = frontier.const_data_ptr<int64_t>();
  const int64_t* closed_ptr = closed.const_data_ptr<int64_t>();
  check_sorted(closed_ptr, closed_count, "closed");
  const SparseLattice lattice = make_lattice(dims[0], dims[1], dims[2]);
  at::Tensor open = at::empty({count}, frontier.options().dtype(at::kInt));
  at::Tensor open_counts = at::empty({count}, frontier.options());
  int32_t* open_ptr = open.mutable_data_ptr<int32_t>();
  int64_t* counts_ptr = open_counts.mutable_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "narrow_band_open_faces_cpu", [&] {
    const scalar_t* values_ptr = values.const_data_ptr<scalar_t>();
    const auto lvl = iso_threshold<scalar_t>(level);
    at::parallel_for(0, count, kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        open_ptr[i] = open_faces(lattice, keys[i], values_ptr + 8 * i, lvl, closed_ptr, closed_count);
        counts_ptr[i] = count_bits(open_ptr[i]);
      }
    });
  });
  const at::Tensor ends = at::cumsum(open_counts, 0);
  const int64_t* ends_ptr = ends.const_data_ptr<int64_t>();
  at::Tensor neighbours = at::empty({count > 0 ? ends_ptr[count - 1] : 0}, frontier.options());
  int64_t* out = neighbours.mutable_data_ptr<int64_t>();
  at::parallel_for(0, count, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      write_open_neighbours(lattice, keys[i], open_ptr[i], out + ends_ptr[i] - counts_ptr[i]);
    }
  });
  return neighbours;
}

TORCH_LIBRARY_IMPL(get3dhuman, CPU, m) {
  m.impl("narrow_band_refine", &refine_cpu);
  m.impl("narrow_band_open_faces", &open_faces_cpu);
}

}  // namespace get3dhuman::narrow_band
