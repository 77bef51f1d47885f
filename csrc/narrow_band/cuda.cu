// CUDA kernels of the narrow band: the refine step (classify, scan, compact, survey the kept
// parents, scan, emit children and new points; one thread per cell or parent) and the closure's
// open faces (mark, scan, emit). Cell sets must be sorted and unique (narrow_band guarantees it;
// the CPU kernels check it, here it would cost a sync).
#include "narrow_band.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sub.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace get3dhuman::narrow_band {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t count) { return static_cast<int>((count + kThreads - 1) / kThreads); }

template <typename scalar_t>
__global__ void classify_kernel(const scalar_t* __restrict__ values, int64_t count, scalar_t level,
                                scalar_t threshold, int64_t* __restrict__ kept) {
  const int64_t cell = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell < count) kept[cell] = keep_cell(values + 8 * cell, level, threshold);
}

__global__ void compact_kernel(const int64_t* __restrict__ keys, int64_t count, const int64_t* __restrict__ kept,
                               const int64_t* __restrict__ rank, int64_t* __restrict__ parent_keys,
                               int64_t* __restrict__ parent_source) {
  const int64_t cell = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell >= count || !kept[cell]) return;
  parent_keys[rank[cell] - 1] = keys[cell];
  parent_source[rank[cell] - 1] = cell;
}

__global__ void survey_kernel(SparseLattice lattice, const int64_t* __restrict__ parent_keys, int64_t parents,
                              int32_t* __restrict__ neighbours, Placement* __restrict__ placements,
                              int32_t* __restrict__ owned_masks, int64_t* __restrict__ owned_counts) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= parents) return;
  owned_counts[p] =
      survey_parent(lattice, parent_keys, parents, p, neighbours + kLocalPoints * p, placements + p, owned_masks + p);
}

__global__ void emit_kernel(SparseLattice lattice, const int64_t* __restrict__ parent_keys, int64_t parents,
                            const int64_t* __restrict__ parent_source, int64_t points,
                            const int32_t* __restrict__ neighbours, const Placement* __restrict__ placements,
                            const int32_t* __restrict__ owned_masks, const int64_t* __restrict__ first_point,
                            int64_t* __restrict__ child_keys, int32_t* __restrict__ point_slots,
                            int64_t* __restrict__ new_points) {
  const int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= parents) return;
  emit_parent(lattice, parent_keys, p, points + 8 * parent_source[p], neighbours + kLocalPoints * p, placements,
              owned_masks, first_point, child_keys, point_slots, new_points);
}

template <typename scalar_t>
__global__ void open_faces_kernel(SparseLattice lattice, const int64_t* __restrict__ keys, int64_t count,
                                  const scalar_t* __restrict__ values, scalar_t level,
                                  const int64_t* __restrict__ closed, int64_t closed_count, int32_t* __restrict__ open,
                                  int64_t* __restrict__ open_counts) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  open[i] = open_faces(lattice, keys[i], values + 8 * i, level, closed, closed_count);
  open_counts[i] = count_bits(open[i]);
}

__global__ void open_neighbours_kernel(SparseLattice lattice, const int64_t* __restrict__ keys, int64_t count,
                                       const int32_t* __restrict__ open, const int64_t* __restrict__ open_counts,
                                       const int64_t* __restrict__ ends, int64_t* __restrict__ out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) write_open_neighbours(lattice, keys[i], open[i], out + ends[i] - open_counts[i]);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> refine_cuda(const at::Tensor& cells_in,
                                                           const at::Tensor& corner_values_in, at::IntArrayRef dims,
                                                           double level, double threshold) {
  check_sparse_cells(cells_in, corner_values_in, dims);
  const c10::cuda::CUDAGuard guard(cells_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor cells = cells_in.contiguous(), corner_values = corner_values_in.contiguous();
  const int64_t count = cells.size(0);
  const SparseLattice lattice = make_lattice(dims[0], dims[1], dims[2]);

  at::Tensor kept = at::empty({count}, cells.options());
  if (count > 0) {
    AT_DISPATCH_FLOATING_TYPES(corner_values.scalar_type(), "narrow_band_refine_cuda", [&] {
      classify_kernel<scalar_t><<<blocks_for(count), kThreads, 0, stream>>>(
          corner_values.const_data_ptr<scalar_t>(), count, iso_threshold<scalar_t>(level),
          static_cast<scalar_t>(threshold), kept.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor rank = at::cumsum(kept, 0);
  // Two reads of a size, where DESIGN.md asks for one: the parents' count sizes the tables that
  // the survey fills with the new points' count. Sizing the tables by the cell count instead
  // would save one read a level at two to three times their memory; not done while the kernels
  // have not run on a GPU (the saving, a few microseconds a level, is not measured either).
  const int64_t parents = count > 0 ? rank[count - 1].item<int64_t>() : 0;
  ParentTables tables(parents, cells.options());
  if (parents > 0) {
    compact_kernel<<<blocks_for(count), kThreads, 0, stream>>>(
        cells.const_data_ptr<int64_t>(), count, kept.const_data_ptr<int64_t>(), rank.const_data_ptr<int64_t>(),
        tables.keys.mutable_data_ptr<int64_t>(), tables.source.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    survey_kernel<<<blocks_for(parents), kThreads, 0, stream>>>(
        lattice, tables.keys.const_data_ptr<int64_t>(), parents, tables.neighbours.mutable_data_ptr<int32_t>(),
        tables.placement_data(), tables.owned_masks.mutable_data_ptr<int32_t>(),
        tables.owned_counts.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor point_end = at::cumsum(tables.owned_counts, 0);
  const int64_t points = parents > 0 ? point_end[parents - 1].item<int64_t>() : 0;
  const at::Tensor first_point = at::sub(point_end, tables.owned_counts);
  auto [child_keys, point_slots, new_points] = allocate_refined(cells.options(), count, parents, points);
  if (parents > 0) {
    emit_kernel<<<blocks_for(parents), kThreads, 0, stream>>>(
        lattice, tables.keys.const_data_ptr<int64_t>(), parents, tables.source.const_data_ptr<int64_t>(), points,
        tables.neighbours.const_data_ptr<int32_t>(), tables.placement_data(),
        tables.owned_masks.const_data_ptr<int32_t>(), first_point.const_data_ptr<int64_t>(),
        child_keys.mutable_data_ptr<int64_t>(), point_slots.mutable_data_ptr<int32_t>(),
        new_points.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {child_keys, point_slots, new_points};
}

at::Tensor open_faces_cuda(const at::Tensor& frontier_in, const at::Tensor& frontier_values_in,
                           const at::Tensor& closed_in, at::IntArrayRef dims, double level) {
  check_sparse_cells(frontier_in, frontier_values_in, dims);
  check_closed_cells(closed_in, frontier_in);
  const c10::cuda::CUDAGuard guard(frontier_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor frontier = frontier_in.contiguous(), values = frontier_values_in.contiguous();
  const at::Tensor closed = closed_in.contiguous();
  const int64_t count = frontier.size(0);
  const SparseLattice lattice = make_lattice(dims[0], dims[1], dims[2]);
  if (count == 0) return at::empty({0}, frontier.options());
  at::Tensor open = at::empty({count}, frontier.options().dtype(at::kInt));
  at::Tensor open_counts = at::empty({count}, frontier.options());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "narrow_band_open_faces_cuda", [&] {
    open_faces_kernel<scalar_t><<<blocks_for(count), kThreads, 0, stream>>>(
        lattice, frontier.const_data_ptr<int64_t>(), count, values.const_data_ptr<scalar_t>(),
        iso_threshold<scalar_t>(level), closed.const_data_ptr<int64_t>(), closed.size(0),
        open.mutable_data_ptr<int32_t>(), open_counts.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const at::Tensor ends = at::cumsum(open_counts, 0);
  at::Tensor neighbours = at::empty({ends[count - 1].item<int64_t>()}, frontier.options());
  open_neighbours_kernel<<<blocks_for(count), kThreads, 0, stream>>>(
      lattice, frontier.const_data_ptr<int64_t>(), count, open.const_data_ptr<int32_t>(),
      open_counts.const_data_ptr<int64_t>(), ends.const_data_ptr<int64_t>(), neighbours.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return neighbours;
}

TORCH_LIBRARY_IMPL(get3dhuman, CUDA, m) {
  m.impl("narrow_band_refine", &refine_cuda);
  m.impl("narrow_band_open_faces", &open_faces_cuda);
}

}  // namespace get3dhuman::narrow_band
