// DRS suppression, torch-facing CUDA side: argument checks, allocation, the
// current stream, and the launchers of drs_kernels.cu.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../drs_common.h"
#include "drs_kernels.h"
#include "drs_launch.h"

namespace wsss_fast {
namespace {

cuda::DType cuda_dtype(const at::Tensor& x, const char* op) {
  switch (x.scalar_type()) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": x on CUDA must be float32, float16 or bfloat16, got ",
                  x.scalar_type());
  }
}

// Positions inside a plane are int32 (the first-argmax search), so H * W must
// stay below its "not found" sentinel. The number of planes is not bounded:
// the launchers slice batches whose grid would be too large.
void check_cuda_sizes(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.size(2) * x.size(3) < cuda::drs::kNoArgmax, op,
              ": x must have H * W < ", cuda::drs::kNoArgmax,
              " elements per plane for the CUDA kernel, got shape ", x.sizes());
}

at::Tensor workspace(const at::Tensor& x, bool backward) {
  const int64_t planes = x.size(0) * x.size(1);
  const auto bytes = cuda::drs_workspace_bytes(planes, x.size(2) * x.size(3), backward);
  return at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor forward(const at::Tensor& x, const at::Tensor* gate, double delta, const char* op) {
  check_drs_inputs(x, gate, op);
  const auto dtype = cuda_dtype(x, op);
  check_cuda_sizes(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  const auto gc = gate ? gate->contiguous() : at::Tensor();
  auto out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;
  auto ws = workspace(x, false);
  check_launch(cuda::drs_forward(dtype, xc.const_data_ptr(), gate ? gc.const_data_ptr() : nullptr,
                                 static_cast<float>(delta), out.mutable_data_ptr(),
                                 x.size(0) * x.size(1), x.size(2) * x.size(3),
                                 ws.mutable_data_ptr(), x.get_device(),
                                 c10::cuda::getCurrentCUDAStream()),
               op);
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor* gate, double delta, const char* op) {
  check_drs_inputs(x, gate, op);
  check_drs_grad(grad_out, x, op);
  const auto dtype = cuda_dtype(x, op);
  check_cuda_sizes(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  const auto goc = grad_out.contiguous();
  const auto gc = gate ? gate->contiguous() : at::Tensor();
  auto grad_x = at::empty(x.sizes(), x.options());
  auto grad_gate = gate ? at::empty(gate->sizes(), gate->options()) : at::Tensor();
  if (grad_x.numel() == 0) return {grad_x, grad_gate};
  auto ws = workspace(x, true);
  check_launch(cuda::drs_backward(dtype, goc.const_data_ptr(), xc.const_data_ptr(),
                                  gate ? gc.const_data_ptr() : nullptr, static_cast<float>(delta),
                                  grad_x.mutable_data_ptr(),
                                  gate ? grad_gate.mutable_data_ptr() : nullptr,
                                  x.size(0) * x.size(1), x.size(2) * x.size(3),
                                  ws.mutable_data_ptr(), x.get_device(),
                                  c10::cuda::getCurrentCUDAStream()),
               op);
  return {grad_x, grad_gate};
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) { register_drs_impls<forward, backward>(m); }

}  // namespace wsss_fast
