// Every schema of the get3dhuman operator library, in one place. Kernels register themselves
// next to their sources (csrc/<op>/cpu.cpp, csrc/<op>/cuda.cu).
#include <torch/library.h>

TORCH_LIBRARY(get3dhuman, m) {
  // features [B,C,H,W], points [B,N,3], calib [B,4,4] -> [B, N, C+1] point-major samples with
  // the depth feature last; optional bias/depth_weight [C] are added to the C sampled values.
  m.def(
      "pixel_aligned_sample(Tensor features, Tensor points, Tensor calib, float depth_scale, "
      "Tensor? bias=None, Tensor? depth_weight=None) -> Tensor");
  // -> (grad_features [B,C,H,W] or undefined when not requested, grad_uv [B,N,2])
  m.def(
      "pixel_aligned_sample_backward(Tensor grad_out, Tensor features, Tensor points, "
      "Tensor calib, bool features_requires_grad) -> (Tensor, Tensor)");
  // volume [D,H,W] float32/64 -> (vertices [V,3] float32 in index coordinates, faces [F,3] int64),
  // faces oriented towards increasing values unless flip.
  m.def("marching_cubes_dense(Tensor volume, float level, bool flip) -> (Tensor, Tensor)");
  // cells [M] sorted int64 keys ((b*R0 + i)*R1 + j)*R2 + k, corner_values [M,8], dims [R0,R1,R2]
  // -> (vertices [V,3], faces [F,3], vertex_offsets [M+1], face_offsets [M+1]) in cell order.
  m.def(
      "marching_cubes_sparse(Tensor cells, Tensor corner_values, int[] dims, float level, bool flip) -> "
      "(Tensor, Tensor, Tensor, Tensor)");
  // One coarse-to-fine step: keep the cells [M] (sorted unique keys over dims) whose
  // corner_values [M,8] cross the level or lie within threshold of it, and split each into 8
  // children over 2*dims -> (child keys [K] sorted, point_slots [K,8] int32, new_points [P]): new_points
  // are the keys over the (2*dims+1)^3 point lattice of the child corners that are not parent
  // corners, each once, batch-major; the child corner values are
  // cat([values at new_points, corner_values.flatten()])[point_slots].
  m.def(
      "narrow_band_refine(Tensor cells, Tensor corner_values, int[] dims, float level, float threshold) -> "
      "(Tensor, Tensor, Tensor)");
  // The closure's step: for each frontier cell [F] (keys over dims, any order) with corner values
  // [F,8], the keys of its face neighbours across faces whose corners lie on both sides of the
  // level that are inside the lattice but not in closed [C] (sorted unique) -> [Q], in frontier
  // order, repeats kept.
  m.def("narrow_band_open_faces(Tensor frontier, Tensor frontier_values, Tensor closed, int[] dims, float level) -> Tensor");
  // Z-buffer rasterization: vertices [V,3] float32 in NDC (x, y over the image, align_corners;
  // z larger nearer), faces [F,3] int64 (indices in [0, V)) -> (face_index [H,W] int64, -1 where
  // nothing is drawn; barycentric weights [H,W,3] float32 of the nearest triangle's corners).
  m.def("rasterize(Tensor vertices, Tensor faces, int height, int width) -> (Tensor, Tensor)");
  // Smooth union of signed-distance primitives: points [B,N,3] float32, primitives [B,Q,12]
  // float32 rows (csrc/sdf_union/sdf_union.h; last entry: active), kinds/parts [Q] int32 (parts
  // nondecreasing from 0) -> (distance [B,N], gradient [B,N,3] or [0,N,3] without with_gradient,
  // nearest part [B,N] int64).
  m.def(
      "sdf_union(Tensor points, Tensor primitives, Tensor kinds, Tensor parts, float blend, float absent, "
      "bool with_gradient) -> (Tensor, Tensor, Tensor)");
}

#ifdef GET3DHUMAN_PYTHON_MODULE
// `import get3dhuman._C` runs the static registrations above; the module itself is empty.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif
