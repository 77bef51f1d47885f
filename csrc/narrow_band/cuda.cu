// CUDA kernel of the narrow band step: classify, scan (cumsum), write the children.
#include "narrow_band.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

namespace get3dhuman::narrow_band {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void classify_kernel(const scalar_t* __restrict__ values, int64_t count, scalar_t level,
                                scalar_t threshold, int64_t* __restrict__ kept) {
  const int64_t cell = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell < count) kept[cell] = keep_cell(values + 8 * cell, level, threshold);
}

template <typename scalar_t>
__global__ void children_kernel(SparseLattice lattice, const int64_t* __restrict__ keys,
                                const scalar_t* __restrict__ values, int64_t count, const int64_t* __restrict__ kept, const int64_t* __restrict__ rank,
                                int64_t* __restrict__ child_keys, scalar_t* __restrict__ child_values,
                                int64_t* __restrict__ point_keys) {
  const int64_t cell = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell >= count || !kept[cell]) return;
  const int64_t out = 8 * (rank[cell] - 1);
  write_children(lattice, keys[cell], values + 8 * cell, child_keys + out, child_values + 8 * out,
                 point_keys + 8 * out);
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
  const int blocks = static_cast<int>((count + kThreads - 1) / kThreads);
  const SparseLattice lattice = make_lattice(dims[0], dims[1], dims[2]);
  at::Tensor kept = at::empty({count}, cells.options());
  at::Tensor child_keys, child_values, point_keys;
  AT_DISPATCH_FLOATING_TYPES(corner_values.scalar_type(), "narrow_band_refine_cuda", [&] {
    const scalar_t* values = corner_values.const_data_ptr<scalar_t>();
    if (count > 0) {
      classify_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(values, count, static_cast<scalar_t>(level),
                                                                 static_cast<scalar_t>(threshold),
                                                                 kept.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const at::Tensor rank = at::cumsum(kept, 0);
    const int64_t total = count > 0 ? rank[count - 1].item<int64_t>() : 0;
    child_keys = at::empty({8 * total}, cells.options());
    child_values = at::empty({8 * total, 8}, corner_values.options());
    point_keys = at::empty({8 * total, 8}, cells.options());
    if (total > 0) {
      children_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
          lattice, cells.const_data_ptr<int64_t>(), values, count, kept.const_data_ptr<int64_t>(),
          rank.const_data_ptr<int64_t>(), child_keys.mutable_data_ptr<int64_t>(),
          child_values.mutable_data_ptr<scalar_t>(), point_keys.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {child_keys, child_values, point_keys};
}

TORCH_LIBRARY_IMPL(get3dhuman, CUDA, m) { m.impl("narrow_band_refine", &refine_cuda); }

}  // namespace get3dhuman::narrow_band
