// What the CPU and CUDA sides of the DRS operators share: the argument checks
// (every message names the operator and the argument at fault) and the four
// registered entry points, written once over a device's forward and backward.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <tuple>

namespace wsss_fast {

// x: (N, C, H, W) floating; H * W > 0 unless the tensor is empty in N or C.
// gate (when not null): (N, C), same dtype and device as x.
inline void check_drs_inputs(const at::Tensor& x, const at::Tensor* gate,
                             const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be a 4-D (N, C, H, W) tensor, got shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op,
              ": x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(x.size(0) * x.size(1) == 0 || x.size(2) * x.size(3) > 0, op,
              ": x must have H > 0 and W > 0 (the plane max is undefined), got shape ",
              x.sizes());
  if (gate == nullptr) return;
  TORCH_CHECK(gate->dim() == 2 && gate->size(0) == x.size(0) &&
                  gate->size(1) == x.size(1),
              op, ": gate must have shape (N, C) = (", x.size(0), ", ", x.size(1),
              "), got ", gate->sizes());
  TORCH_CHECK(gate->scalar_type() == x.scalar_type(), op,
              ": gate must have the dtype of x (", x.scalar_type(), "), got ",
              gate->scalar_type());
  TORCH_CHECK(gate->device() == x.device(), op,
              ": gate must be on the device of x (", x.device(), "), got ",
              gate->device());
}

// grad_out: the shape, dtype and device of x.
inline void check_drs_grad(const at::Tensor& grad_out, const at::Tensor& x,
                           const char* op) {
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op,
              ": grad_out must have the shape of x (", x.sizes(), "), got ",
              grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() &&
                  grad_out.device() == x.device(),
              op, ": grad_out must have the dtype and device of x");
}

// A device's implementation: forward(x, gate or null, delta, op name) -> out and
// backward(grad_out, x, gate or null, delta, op name) -> (grad_x, grad_gate,
// undefined without a gate).
using DrsForward = at::Tensor (*)(const at::Tensor&, const at::Tensor*, double, const char*);
using DrsBackward = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor&, const at::Tensor&,
                                                         const at::Tensor*, double, const char*);

// Registers drs, drs_delta, drs_backward and drs_delta_backward for one device.
template <DrsForward Forward, DrsBackward Backward>
void register_drs_impls(torch::Library& m) {
  m.impl("drs", +[](const at::Tensor& x, const at::Tensor& gate) {
    return Forward(x, &gate, 0.0, "drs");
  });
  m.impl("drs_delta", +[](const at::Tensor& x, double delta) {
    return Forward(x, nullptr, delta, "drs_delta");
  });
  m.impl("drs_backward", +[](const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gate) {
    return Backward(grad_out, x, &gate, 0.0, "drs_backward");
  });
  m.impl("drs_delta_backward", +[](const at::Tensor& grad_out, const at::Tensor& x, double delta) {
    return std::get<0>(Backward(grad_out, x, nullptr, delta, "drs_delta_backward"));
  });
}

}  // namespace wsss_fast
