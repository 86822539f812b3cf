// Argument checks of the dense CRF operator, shared by the CPU and CUDA
// kernels, and the lattice specs both build from the parameters. Every
// message names the operator and the argument at fault. Values (probabilities
// in [0, 1], num_labels in [1, K] on CUDA) are checked by the Python API
// (wsss_fast.ops.dense_crf), not here: on CUDA that would cost a device sync.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <limits>

#include "dense_crf_lattice.h"

namespace wsss_fast {

struct CrfParams {
  int64_t iterations;
  double gaussian_sxy, gaussian_compat, bilateral_sxy, bilateral_srgb, bilateral_compat;
};

// image (B, 3, H, W) uint8, probs (B, K, H, W) float32 on its device with
// K >= 1 and H, W >= 1, num_labels (B,) int64 on the same device; the
// parameters finite, iterations >= 0 and the kernel widths > 0.
inline void check_dense_crf_inputs(const at::Tensor& image, const at::Tensor& probs,
                                   const std::optional<at::Tensor>& num_labels,
                                   const CrfParams& p, const char* op) {
  TORCH_CHECK(image.dim() == 4 && image.size(1) == 3, op,
              ": image must be a 4-D (B, 3, H, W) RGB tensor, got shape ", image.sizes());
  TORCH_CHECK(image.scalar_type() == at::kByte, op, ": image must be uint8, got ",
              image.scalar_type());
  TORCH_CHECK(probs.dim() == 4 && probs.size(0) == image.size(0) &&
                  probs.size(2) == image.size(2) && probs.size(3) == image.size(3),
              op, ": probs must have shape (B, K, H, W) with B, H, W = ", image.size(0), ", ",
              image.size(2), ", ", image.size(3), " (those of image), got ", probs.sizes());
  TORCH_CHECK(probs.size(1) >= 1, op, ": probs must have K >= 1 labels, got shape ",
              probs.sizes());
  TORCH_CHECK(image.size(2) >= 1 && image.size(3) >= 1, op,
              ": image must have H >= 1 and W >= 1, got shape ", image.sizes());
  TORCH_CHECK(probs.scalar_type() == at::kFloat, op, ": probs must be float32, got ",
              probs.scalar_type());
  TORCH_CHECK(probs.device() == image.device(), op, ": probs must be on the device of image (",
              image.device(), "), got ", probs.device());
  if (num_labels.has_value()) {
    const at::Tensor& n = *num_labels;
    TORCH_CHECK(n.dim() == 1 && n.size(0) == image.size(0), op,
                ": num_labels must have shape (B,) = (", image.size(0), ",), got ", n.sizes());
    TORCH_CHECK(n.scalar_type() == at::kLong, op, ": num_labels must be int64, got ",
                n.scalar_type());
    TORCH_CHECK(n.device() == image.device(), op, ": num_labels must be on the device of image (",
                image.device(), "), got ", n.device());
  }
  TORCH_CHECK(p.iterations >= 0, op, ": iterations must be >= 0, got ", p.iterations);
  const auto positive = [&](double v, const char* name) {
    TORCH_CHECK(std::isfinite(v) && v > 0, op, ": ", name, " must be finite and > 0, got ", v);
  };
  positive(p.gaussian_sxy, "gaussian_sxy");
  positive(p.bilateral_sxy, "bilateral_sxy");
  positive(p.bilateral_srgb, "bilateral_srgb");
  TORCH_CHECK(std::isfinite(p.gaussian_compat), op, ": gaussian_compat must be finite, got ",
              p.gaussian_compat);
  TORCH_CHECK(std::isfinite(p.bilateral_compat), op, ": bilateral_compat must be finite, got ",
              p.bilateral_compat);
  // pixel (and lattice entry) indices are int32 in both kernels
  TORCH_CHECK(image.size(2) * image.size(3) * (crf::kBilateralDim + 1) <
                  std::numeric_limits<int32_t>::max(),
              op, ": image is too large (H * W * 6 must fit in int32), got shape ",
              image.sizes());
}

// The operator as registered for a device: its parameters gathered, the
// checks, then kernel(image, probs, num_labels, params).
using CrfKernel = at::Tensor (*)(const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, const CrfParams&);
template <CrfKernel kernel>
at::Tensor dense_crf_op(const at::Tensor& image, const at::Tensor& probs,
                        const std::optional<at::Tensor>& num_labels, int64_t iterations,
                        double gaussian_sxy, double gaussian_compat, double bilateral_sxy,
                        double bilateral_srgb, double bilateral_compat) {
  const CrfParams params{iterations,    gaussian_sxy,   gaussian_compat,
                         bilateral_sxy, bilateral_srgb, bilateral_compat};
  check_dense_crf_inputs(image, probs, num_labels, params, "dense_crf");
  return kernel(image, probs, num_labels, params);
}

// The Gaussian (index 0) and bilateral (index 1) lattice specs of an H x W
// image; an error naming the parameters when a lattice would be too large.
inline void lattice_specs(const CrfParams& p, int64_t H, int64_t W, crf::LatticeSpec* specs,
                          const char* op) {
  const double gauss_sigma[] = {p.gaussian_sxy, p.gaussian_sxy};
  const double bilateral_sigma[] = {p.bilateral_sxy, p.bilateral_sxy, p.bilateral_srgb,
                                    p.bilateral_srgb, p.bilateral_srgb};
  const double raw_max[] = {static_cast<double>(W - 1), static_cast<double>(H - 1), 255.0, 255.0,
                            255.0};
  TORCH_CHECK(crf::make_lattice_spec(crf::kGaussianDim, gauss_sigma, raw_max, &specs[0]), op,
              ": gaussian_sxy = ", p.gaussian_sxy, " is too small for a ", H, " x ", W,
              " image (the lattice would have more than 2^62 points)");
  TORCH_CHECK(crf::make_lattice_spec(crf::kBilateralDim, bilateral_sigma, raw_max, &specs[1]),
              op, ": bilateral_sxy = ", p.bilateral_sxy, " and bilateral_srgb = ",
              p.bilateral_srgb, " are too small for a ", H, " x ", W,
              " image (the lattice would have more than 2^62 points)");
}

}  // namespace wsss_fast
