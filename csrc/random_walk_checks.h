// Argument checks of the affinity and random-walk operators, shared by the CPU
// and CUDA kernels. Every message names the operator and the argument at
// fault. Values (NaN, negative affinities) are checked by the Python API
// (wsss_fast.ops.random_walk), not here: that would cost a device sync.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cmath>

#include "pairs.h"

namespace wsss_fast {

inline void check_radius(int64_t radius, const char* op) {
  TORCH_CHECK(radius >= 1 && radius <= kMaxRadius, op, ": radius must be in [1, ", kMaxRadius,
              "], got ", radius);
}

// features: (B, D, H, W) floating with D >= 1.
inline void check_affinity_inputs(const at::Tensor& features, int64_t radius, const char* op) {
  check_radius(radius, op);
  TORCH_CHECK(features.dim() == 4, op, ": features must be a 4-D (B, D, H, W) tensor, got shape ",
              features.sizes());
  TORCH_CHECK(at::isFloatingType(features.scalar_type()), op,
              ": features must be a floating-point tensor, got ", features.scalar_type());
  TORCH_CHECK(features.size(1) >= 1, op,
              ": features must have D >= 1 channels (the mean over channels is undefined), got "
              "shape ", features.sizes());
}

// grad_out and out: (B, P, H, W) with the dtype and device of features.
inline void check_affinity_grad(const at::Tensor& grad_out, const at::Tensor& out,
                                const at::Tensor& features, int64_t radius, const char* op) {
  check_affinity_inputs(features, radius, op);
  const std::vector<int64_t> shape{features.size(0), pair_count(static_cast<int>(radius)),
                                   features.size(2), features.size(3)};
  for (const auto* t : {&grad_out, &out}) {
    const char* name = t == &out ? "out" : "grad_out";
    TORCH_CHECK(t->sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ",
                at::IntArrayRef(shape), " (B, P, H, W), got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == features.scalar_type() && t->device() == features.device(),
                op, ": ", name, " must have the dtype and device of features");
  }
}

// Returns true for border == "psa", false for "all".
inline bool check_random_walk_inputs(const at::Tensor& cam, const at::Tensor& aff, int64_t radius,
                                     double beta, int64_t n_steps, c10::string_view border,
                                     const char* op) {
  check_radius(radius, op);
  TORCH_CHECK(cam.dim() == 4, op, ": cam must be a 4-D (B, C, H, W) tensor, got shape ",
              cam.sizes());
  TORCH_CHECK(at::isFloatingType(cam.scalar_type()), op,
              ": cam must be a floating-point tensor, got ", cam.scalar_type());
  const int64_t P = pair_count(static_cast<int>(radius));
  TORCH_CHECK(aff.dim() == 4 && aff.size(0) == cam.size(0) && aff.size(1) == P &&
                  aff.size(2) == cam.size(2) && aff.size(3) == cam.size(3),
              op, ": aff must have shape (B, P, H, W) = (", cam.size(0), ", ", P, ", ",
              cam.size(2), ", ", cam.size(3), ") for radius ", radius, ", got ", aff.sizes());
  TORCH_CHECK(aff.scalar_type() == cam.scalar_type(), op, ": aff must have the dtype of cam (",
              cam.scalar_type(), "), got ", aff.scalar_type());
  TORCH_CHECK(aff.device() == cam.device(), op, ": aff must be on the device of cam (",
              cam.device(), "), got ", aff.device());
  TORCH_CHECK(std::isfinite(beta) && beta > 0, op, ": beta must be finite and > 0, got ", beta);
  TORCH_CHECK(n_steps >= 0, op, ": n_steps must be >= 0, got ", n_steps);
  TORCH_CHECK(border == "all" || border == "psa", op,
              ": border must be \"all\" or \"psa\", got \"", border, "\"");
  return border == "psa";
}

}  // namespace wsss_fast
