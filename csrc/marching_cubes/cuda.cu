// CUDA kernels of marching cubes: the same row (dense) and cell (sparse) functions as the CPU
// kernels, one thread per row or cell, so both produce the same topology in the same order.
#include "marching_cubes.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <tuple>

namespace get3dhuman::marching_cubes {
namespace {

constexpr int kThreads = 256;

__constant__ Tables device_tables;

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

// The tables live in each device's constant memory; refresh them on the current stream.
void upload_tables(cudaStream_t stream) {
  C10_CUDA_CHECK(cudaMemcpyToSymbolAsync(device_tables, &host_tables(), sizeof(Tables), 0, cudaMemcpyHostToDevice,
                                         stream));
}

at::Tensor exclusive_offsets(const at::Tensor& counts) {
  at::Tensor offsets = at::zeros({counts.size(0) + 1}, counts.options());
  at::Tensor tail = offsets.narrow(0, 1, counts.size(0));
  at::cumsum_out(tail, counts, 0);
  return offsets;
}

// Scalars of int64 device tensors (the output sizes, and for sparse cells the verdict on their
// closure) read with one device-to-host copy: the op's one synchronisation.
template <size_t N>
std::array<int64_t, N> read_scalars(const std::array<at::Tensor, N>& scalars) {
  const at::Tensor host = at::stack(at::TensorList(scalars.data(), N)).cpu();
  std::array<int64_t, N> values;
  for (size_t n = 0; n < N; ++n) values[n] = host.const_data_ptr<int64_t>()[n];
  return values;
}

// One warp packs 32 consecutive voxels of a row into half a word by ballot.
template <typename scalar_t>
__global__ void pack_kernel(const scalar_t* __restrict__ values, int64_t rows, int64_t width, int64_t words_per_row,
                            scalar_t threshold, uint32_t* __restrict__ halves) {
  const int64_t halves_per_row = 2 * words_per_row;
  const int64_t lane_index = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t half = lane_index / 32;
  if (half >= rows * halves_per_row) return;  // whole warps leave together
  const int64_t row = half / halves_per_row, k = (half % halves_per_row) * 32 + threadIdx.x % 32;
  const bool above = k < width && values[row * width + k] > threshold;
  const uint32_t ballot = __ballot_sync(0xffffffffu, above);
  if (threadIdx.x % 32 == 0) halves[half] = ballot;
}

__global__ void dense_count_kernel(DenseBits v, int64_t* __restrict__ vertex_counts,
                                   int64_t* __restrict__ face_counts) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= v.depth * v.height) return;
  dense_row_counts(v, device_tables.count, row / v.height, row % v.height, vertex_counts + row, face_counts + row);
}

template <typename scalar_t>
__global__ void dense_emit_kernel(DenseBits v, const scalar_t* __restrict__ values, double level,
                                  const int64_t* __restrict__ vertex_offsets, const int64_t* __restrict__ face_offsets,
                                  bool flip, float* __restrict__ vertices, int64_t* __restrict__ faces) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= v.depth * v.height) return;
  const int64_t i = row / v.height, j = row % v.height;
  if (vertex_offsets[row + 1] > vertex_offsets[row]) dense_row_vertices(v, values, level, vertex_offsets, i, j, vertices);
  if (face_offsets[row + 1] > face_offsets[row]) {
    dense_row_triangles(v, device_tables, vertex_offsets, face_offsets[row], flip, i, j, faces);
  }
}

template <typename scalar_t>
__global__ void sparse_count_kernel(SparseLattice lattice, const int64_t* __restrict__ keys,
                                    const scalar_t* __restrict__ values, int64_t count, scalar_t threshold,
                                    uint16_t* __restrict__ owned, int64_t* __restrict__ vertex_counts,
                                    int64_t* __restrict__ face_counts) {
  const int64_t cell = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell < count) {
    sparse_cell_count(lattice, device_tables, keys, values, threshold, cell, owned, vertex_counts, face_counts);
  }
}

template <typename scalar_t>
__global__ void sparse_closed_kernel(SparseLattice lattice, const int64_t* __restrict__ keys,
                                     const scalar_t* __restrict__ values, int64_t count, scalar_t threshold,
                                     const uint16_t* __restrict__ owned, int64_t* __restrict__ not_closed) {
  const int64_t cell = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const BinaryFinder finder{keys, count};
  if (cell < count && !sparse_cell_closed(lattice, keys, values, owned, threshold, cell, finder)) *not_closed = 1;
}

template <typename scalar_t>
__global__ void sparse_emit_kernel(SparseLattice lattice, const int64_t* __restrict__ keys,
                                   const scalar_t* __restrict__ values, int64_t count, scalar_t threshold, double level,
                                   const uint16_t* __restrict__ owned, const int64_t* __restrict__ vertex_offsets,
                                   const int64_t* __restrict__ face_offsets, bool flip, float* __restrict__ vertices,
                                   int64_t* __restrict__ faces) {
  const int64_t cell = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (cell >= count) return;
  if (vertex_offsets[cell + 1] == vertex_offsets[cell] && face_offsets[cell + 1] == face_offsets[cell]) return;
  const BinaryFinder finder{keys, count};
  sparse_cell_emit(lattice, device_tables, keys, values, owned, vertex_offsets, face_offsets[cell], threshold, level,
                   flip, cell, finder, vertices, faces);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dense_cuda(const at::Tensor& volume_in, double level, bool flip) {
  check_dense_args(volume_in);
  const c10::cuda::CUDAGuard guard(volume_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  upload_tables(stream);
  const at::Tensor volume = volume_in.contiguous();
  const int64_t depth = volume.size(0), height = volume.size(1), width = volume.size(2);
  const int64_t rows = depth * height, words_per_row = (width + 63) / 64;
  at::Tensor bits = at::empty({rows * words_per_row}, volume.options().dtype(at::kLong));
  at::Tensor counts = at::empty({2, rows}, volume.options().dtype(at::kLong));
  at::Tensor vertices, faces;
  AT_DISPATCH_FLOATING_TYPES(volume.scalar_type(), "marching_cubes_dense_cuda", [&] {
    const auto threshold = iso_threshold<scalar_t>(level);
    const scalar_t* values = volume.const_data_ptr<scalar_t>();
    auto* words = reinterpret_cast<uint64_t*>(bits.mutable_data_ptr<int64_t>());
    if (rows > 0) {
      pack_kernel<scalar_t><<<blocks_for(rows * words_per_row * 64), kThreads, 0, stream>>>(
          values, rows, width, words_per_row, threshold, reinterpret_cast<uint32_t*>(words));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const DenseBits v{words, depth, height, width, words_per_row};
    int64_t* vertex_counts = counts.mutable_data_ptr<int64_t>();
    if (rows > 0) {
      dense_count_kernel<<<blocks_for(rows), kThreads, 0, stream>>>(v, vertex_counts, vertex_counts + rows);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const at::Tensor vertex_offsets = exclusive_offsets(counts[0]);
    const at::Tensor face_offsets = exclusive_offsets(counts[1]);
    const std::array<int64_t, 2> totals = read_scalars<2>({vertex_offsets[rows], face_offsets[rows]});
    vertices = at::empty({totals[0], 3}, volume.options().dtype(at::kFloat));
    faces = at::empty({totals[1], 3}, volume.options().dtype(at::kLong));
    if (totals[0] > 0 || totals[1] > 0) {
      dense_emit_kernel<scalar_t><<<blocks_for(rows), kThreads, 0, stream>>>(
          v, values, level, vertex_offsets.const_data_ptr<int64_t>(), face_offsets.const_data_ptr<int64_t>(), flip,
          vertices.mutable_data_ptr<float>(), faces.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {vertices, faces};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sparse_cuda(const at::Tensor& cells_in,
                                                                       const at::Tensor& corner_values_in,
                                                                       at::IntArrayRef dims, double level, bool flip) {
  check_sparse_cells(cells_in, corner_values_in, dims);
  const c10::cuda::CUDAGuard guard(cells_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  upload_tables(stream);
  const at::Tensor cells = cells_in.contiguous(), corner_values = corner_values_in.contiguous();
  const int64_t count = cells.size(0);
  const SparseLattice lattice = make_lattice(dims[0], dims[1], dims[2]);
  at::Tensor owned = at::empty({count}, cells.options().dtype(at::kShort));
  at::Tensor counts = at::empty({2, count}, cells.options());
  at::Tensor not_closed = at::zeros({1}, cells.options());
  at::Tensor vertex_offsets, face_offsets, vertices, faces;
  AT_DISPATCH_FLOATING_TYPES(corner_values.scalar_type(), "marching_cubes_sparse_cuda", [&] {
    const auto threshold = iso_threshold<scalar_t>(level);
    const int64_t* keys = cells.const_data_ptr<int64_t>();
    const scalar_t* values = corner_values.const_data_ptr<scalar_t>();
    auto* owned_ptr = reinterpret_cast<uint16_t*>(owned.mutable_data_ptr<int16_t>());
    int64_t* vertex_counts = counts.mutable_data_ptr<int64_t>();
    if (count > 0) {
      sparse_count_kernel<scalar_t><<<blocks_for(count), kThreads, 0, stream>>>(
          lattice, keys, values, count, threshold, owned_ptr, vertex_counts, vertex_counts + count);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sparse_closed_kernel<scalar_t><<<blocks_for(count), kThreads, 0, stream>>>(
          lattice, keys, values, count, threshold, owned_ptr, not_closed.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    vertex_offsets = exclusive_offsets(counts[0]);
    face_offsets = exclusive_offsets(counts[1]);
    const std::array<int64_t, 3> totals = read_scalars<3>({vertex_offsets[count], face_offsets[count], not_closed[0]});
    TORCH_CHECK_VALUE(totals[2] == 0, kNotClosedMessage);
    vertices = at::empty({totals[0], 3}, corner_values.options().dtype(at::kFloat));
    faces = at::empty({totals[1], 3}, cells.options());
    if (count > 0) {
      sparse_emit_kernel<scalar_t><<<blocks_for(count), kThreads, 0, stream>>>(
          lattice, keys, values, count, threshold, level, owned_ptr, vertex_offsets.const_data_ptr<int64_t>(),
          face_offsets.const_data_ptr<int64_t>(), flip, vertices.mutable_data_ptr<float>(),
          faces.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {vertices, faces, vertex_offsets, face_offsets};
}

TORCH_LIBRARY_IMPL(get3dhuman, CUDA, m) {
  m.impl("marching_cubes_dense", &dense_cuda);
  m.impl("marching_cubes_sparse", &sparse_cuda);
}

}  // namespace get3dhuman::marching_cubes
