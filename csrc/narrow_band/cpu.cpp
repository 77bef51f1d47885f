// CPU kernel of the narrow band step: classify in parallel, scan, write the children.
#include "narrow_band.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

namespace get3dhuman::narrow_band {

std::tuple<at::Tensor, at::Tensor, at::Tensor> refine_cpu(const at::Tensor& cells_in,
                                                          const at::Tensor& corner_values_in, at::IntArrayRef dims,
                                                          double level, double threshold) {
  check_sparse_cells(cells_in, corner_values_in, dims);
  const at::Tensor cells = cells_in.contiguous(), corner_values = corner_values_in.contiguous();
  const int64_t count = cells.size(0);
  const SparseLattice lattice = make_lattice(dims[0], dims[1], dims[2]);
  at::Tensor kept = at::empty({count}, cells.options());
  at::Tensor child_keys, child_values, point_keys;
  AT_DISPATCH_FLOATING_TYPES(corner_values.scalar_type(), "narrow_band_refine_cpu", [&] {
    const scalar_t* values = corner_values.const_data_ptr<scalar_t>();
    const int64_t* keys = cells.const_data_ptr<int64_t>();
    int64_t* kept_ptr = kept.mutable_data_ptr<int64_t>();
    const auto lvl = static_cast<scalar_t>(level), thr = static_cast<scalar_t>(threshold);
    at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t cell = begin; cell < end; ++cell) kept_ptr[cell] = keep_cell(values + 8 * cell, lvl, thr);
    });
    const at::Tensor rank = at::cumsum(kept, 0);  // inclusive: kept cell -> rank + 1
    const int64_t* rank_ptr = rank.const_data_ptr<int64_t>();
    const int64_t total = count > 0 ? rank_ptr[count - 1] : 0;
    child_keys = at::empty({8 * total}, cells.options());
    child_values = at::empty({8 * total, 8}, corner_values.options());
    point_keys = at::empty({8 * total, 8}, cells.options());
    int64_t* ck = child_keys.mutable_data_ptr<int64_t>();
    scalar_t* cv = child_values.mutable_data_ptr<scalar_t>();
    int64_t* pk = point_keys.mutable_data_ptr<int64_t>();
    at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t cell = begin; cell < end; ++cell) {
        if (!kept_ptr[cell]) continue;
        const int64_t out = 8 * (rank_ptr[cell] - 1);
        write_children(lattice, keys[cell], values + 8 * cell, ck + out, cv + 8 * out, pk + 8 * out);
      }
    });
  });
  return {child_keys, child_values, point_keys};
}

TORCH_LIBRARY_IMPL(get3dhuman, CPU, m) { m.impl("narrow_band_refine", &refine_cpu); }

}  // namespace get3dhuman::narrow_band
