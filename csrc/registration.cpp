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
}

#ifdef GET3DHUMAN_PYTHON_MODULE
// `import get3dhuman._C` runs the static registrations above; the module itself is empty.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif
