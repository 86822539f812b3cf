// Affinity and random walk, torch-facing CUDA side: argument checks,
// allocation, the current stream, and the launchers of random_walk_kernels.cu.
// float32 only.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../random_walk_checks.h"
#include "random_walk_kernels.h"

namespace wsss_fast {
namespace {

void check_float(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " on CUDA must be float32, got ",
              t.scalar_type());
}

// Index arithmetic inside a plane and of padded planes is int32.
void check_size(int64_t elements, const char* name, const at::Tensor& t, const char* op) {
  TORCH_CHECK(elements < std::numeric_limits<int>::max(), op, ": ", name,
              " is too large for the CUDA kernel, got shape ", t.sizes());
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor affinity_cuda(const at::Tensor& features, int64_t radius) {
  check_affinity_inputs(features, radius, "affinity");
  check_float(features, "features", "affinity");
  const int64_t B = features.size(0), D = features.size(1), H = features.size(2),
                W = features.size(3);
  check_size(H * W * D, "features", features, "affinity");
  const c10::cuda::CUDAGuard guard(features.device());
  auto out = at::empty({B, pair_count(static_cast<int>(radius)), H, W}, features.options());
  if (out.numel() == 0) return out;
  const auto fc = features.contiguous();
  check_launch(cuda::affinity_forward(fc.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
                                      B, D, H, W, static_cast<int>(radius),
                                      c10::cuda::getCurrentCUDAStream()),
               "affinity");
  return out;
}

at::Tensor affinity_backward_cuda(const at::Tensor& grad_out, const at::Tensor& features,
                                  const at::Tensor& out, int64_t radius) {
  check_affinity_grad(grad_out, out, features, radius, "affinity_backward");
  check_float(features, "features", "affinity_backward");
  const int64_t B = features.size(0), D = features.size(1), H = features.size(2),
                W = features.size(3);
  check_size(H * W * D, "features", features, "affinity_backward");
  const c10::cuda::CUDAGuard guard(features.device());
  auto grad_f = at::empty(features.sizes(), features.options());
  if (grad_f.numel() == 0) return grad_f;
  const auto fc = features.contiguous();
  const auto gc = grad_out.contiguous();
  const auto ac = out.contiguous();
  check_launch(cuda::affinity_backward(gc.const_data_ptr<float>(), fc.const_data_ptr<float>(),
                                       ac.const_data_ptr<float>(),
                                       grad_f.mutable_data_ptr<float>(), B, D, H, W,
                                       static_cast<int>(radius), c10::cuda::getCurrentCUDAStream()),
               "affinity_backward");
  return grad_f;
}

at::Tensor random_walk_cuda(const at::Tensor& cam, const at::Tensor& aff, int64_t radius,
                            double beta, int64_t n_steps, c10::string_view border) {
  const bool psa = check_random_walk_inputs(cam, aff, radius, beta, n_steps, border,
                                            "random_walk");
  check_float(cam, "cam", "random_walk");
  const int64_t B = cam.size(0), C = cam.size(1), H = cam.size(2), W = cam.size(3);
  const int64_t m = radius - 1;
  check_size(B * C * (H + 2 * m) * (W + 2 * m), "cam", cam, "random_walk");
  check_size(B * (2 * pair_count(static_cast<int>(radius)) + 1) * H * W, "aff", aff,
             "random_walk");
  const c10::cuda::CUDAGuard guard(cam.device());
  auto out = at::empty(cam.sizes(), cam.options());
  if (out.numel() == 0) return out;
  if (n_steps == 0) return out.copy_(cam);
  const auto cc = cam.contiguous();
  const auto ac = aff.contiguous();
  const auto bytes = cuda::random_walk_workspace_bytes(B, C, H, W, static_cast<int>(radius));
  auto ws = at::empty({static_cast<int64_t>(bytes)}, cam.options().dtype(at::kByte));
  check_launch(cuda::random_walk(cc.const_data_ptr<float>(), ac.const_data_ptr<float>(),
                                 out.mutable_data_ptr<float>(), B, C, H, W,
                                 static_cast<int>(radius), beta, n_steps, psa,
                                 ws.mutable_data_ptr(), cam.get_device(),
                                 c10::cuda::getCurrentCUDAStream()),
               "random_walk");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) {
  m.impl("affinity", &affinity_cuda);
  m.impl("affinity_backward", &affinity_backward_cuda);
  m.impl("random_walk", &random_walk_cuda);
}

}  // namespace wsss_fast
