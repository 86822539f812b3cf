// The single registration point of the wsss_fast operator library.
//
// Every operator schema is declared here, once, with TORCH_LIBRARY. Kernels are
// registered per device next to their implementation (csrc/cpu/*_cpu.cpp with
// TORCH_LIBRARY_IMPL(wsss_fast, CPU, m), csrc/cuda/*_cuda.cpp with
// TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m)). Fake (meta) kernels and autograd
// formulas are registered from Python (wsss_fast/ops/*.py).
//
// This file also defines the Python module `wsss_fast._C`, whose only function,
// build_info(), reports what the binary was compiled with.

#include <Python.h>
#include <torch/library.h>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef WSSS_TORCH_VERSION
#define WSSS_TORCH_VERSION "unknown"
#endif
#ifndef WSSS_CUDA_ARCH_LIST
#define WSSS_CUDA_ARCH_LIST ""
#endif

TORCH_LIBRARY(wsss_fast, m) {
  // DRS suppression: out = min(relu(x), amax_hw(relu(x)) * gate).
  // x: (N, C, H, W); gate: (N, C) with the dtype of x.
  m.def("drs(Tensor x, Tensor gate) -> Tensor");
  // Same with a constant gate (the non-learnable delta of the DRS paper).
  m.def("drs_delta(Tensor x, float delta) -> Tensor");
  // Gradients of drs for x and gate: (grad_x, grad_gate).
  m.def("drs_backward(Tensor grad_out, Tensor x, Tensor gate) -> (Tensor, Tensor)");
  // Gradient of drs_delta for x.
  m.def("drs_delta_backward(Tensor grad_out, Tensor x, float delta) -> Tensor");

  // AffinityNet affinities: features (B, D, H, W) -> (B, P, H, W),
  // exp(-mean_d |f(y, x) - f(y + dy, x + dx)|) for the P forward offsets of the
  // radius (wsss_fast.ops.pair_offsets), 0 where the target is outside.
  m.def("affinity(Tensor features, int radius) -> Tensor");
  // Gradient of affinity for features; out is affinity's output.
  m.def("affinity_backward(Tensor grad_out, Tensor features, Tensor out, int radius) -> Tensor");
  // PSA's random walk as n_steps stencil steps: cam (B, C, H, W) @ T^n_steps per
  // image, T from aff (B, P, H, W) ** beta; border "all" or "psa".
  m.def("random_walk(Tensor cam, Tensor aff, int radius, float beta, int n_steps, str border) -> Tensor");

  // Batched K-means (Lloyd, scikit-learn semantics; wsss_fast/ops/kmeans.py).
  // x: (N, D) float32/float64; groups: (N,) int64 in [0, num_groups).
  // Returns labels (N,) int64, centroids (num_groups, k, D) in x's dtype,
  // inertia (num_groups,) float64 and n_iter (num_groups,) int64.
  m.def("kmeans(Tensor x, Tensor groups, int num_groups, int k, int n_init, int max_iter, "
        "float tol, int seed, str init) -> (Tensor labels, Tensor centroids, Tensor inertia, "
        "Tensor n_iter)");

  // Dense CRF mean field in pydensecrf's formulation (permutohedral lattice;
  // wsss_fast/ops/dense_crf.py). image: (B, 3, H, W) uint8 RGB; probs:
  // (B, K, H, W) float32 in [0, 1]; num_labels: (B,) int64, image b using its
  // first num_labels[b] labels. Returns the (B, K, H, W) float32 marginals.
  m.def("dense_crf(Tensor image, Tensor probs, Tensor? num_labels, int iterations, "
        "float gaussian_sxy, float gaussian_compat, float bilateral_sxy, float bilateral_srgb, "
        "float bilateral_compat) -> Tensor");
}

namespace {

PyObject* build_info(PyObject* /*self*/, PyObject* /*args*/) {
  PyObject* info = PyDict_New();
  if (info == nullptr) return nullptr;
  auto set = [info](const char* key, PyObject* value) {
    PyDict_SetItemString(info, key, value);
    Py_DECREF(value);
  };
  set("cpu", PyBool_FromLong(1));
#ifdef WITH_CUDA
  set("cuda", PyBool_FromLong(1));
  set("cuda_arch_list", PyUnicode_FromString(WSSS_CUDA_ARCH_LIST));
  set("cuda_runtime_version", PyLong_FromLong(CUDART_VERSION));
#else
  set("cuda", PyBool_FromLong(0));
  set("cuda_arch_list", PyUnicode_FromString(""));
  set("cuda_runtime_version", Py_NewRef(Py_None));
#endif
  set("torch_version", PyUnicode_FromString(WSSS_TORCH_VERSION));
  return info;
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS,
     "What this binary was compiled with: a dict with keys cpu, cuda, "
     "cuda_arch_list, cuda_runtime_version (int, CUDART_VERSION) and "
     "torch_version (the torch it was built against)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "Compiled kernels of wsss_fast; the operators are "
                          "registered under torch.ops.wsss_fast on import.",
                          -1, methods};

}  // namespace

extern "C" PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
