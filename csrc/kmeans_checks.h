// Argument checks of the kmeans operator, shared by the CPU and CUDA kernels.
// Every message names the operator and the argument at fault.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <limits>
#include <string>

namespace wsss_fast {

// x: (N, D) float32/float64 with D >= 1; groups: (N,) int64 on x's device;
// num_groups >= 1 when N > 0; k, n_init, max_iter >= 1; tol >= 0 and finite;
// init "k-means++" or "random". Values of x and groups are checked by the
// driver (they need a pass over the data).
inline void check_kmeans_args(const at::Tensor& x, const at::Tensor& groups,
                              int64_t num_groups, int64_t k, int64_t n_init,
                              int64_t max_iter, double tol, const std::string& init) {
  constexpr const char* op = "kmeans";
  TORCH_CHECK(x.dim() == 2, op, ": x must be a 2-D (N, D) tensor, got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.size(1) >= 1, op, ": x must have at least one feature (D >= 1), got shape ",
              x.sizes());
  TORCH_CHECK(groups.dim() == 1 && groups.size(0) == x.size(0), op,
              ": groups must have shape (N,) = (", x.size(0), ",), got ", groups.sizes());
  TORCH_CHECK(groups.scalar_type() == at::kLong, op, ": groups must be int64, got ",
              groups.scalar_type());
  TORCH_CHECK(groups.device() == x.device(), op, ": groups must be on the device of x (",
              x.device(), "), got ", groups.device());
  TORCH_CHECK(num_groups >= 0 && (x.size(0) == 0 || num_groups >= 1), op,
              ": num_groups must be >= 1 (>= 0 when x is empty), got ", num_groups);
  TORCH_CHECK(k >= 1, op, ": k must be >= 1, got ", k);
  TORCH_CHECK(n_init >= 1, op, ": n_init must be >= 1, got ", n_init);
  TORCH_CHECK(max_iter >= 1, op, ": max_iter must be >= 1, got ", max_iter);
  TORCH_CHECK(tol >= 0 && tol < std::numeric_limits<double>::infinity(), op,
              ": tol must be finite and >= 0, got ", tol);
  TORCH_CHECK(init == "k-means++" || init == "random", op,
              ": init must be \"k-means++\" or \"random\", got \"", init, "\"");
}

}  // namespace wsss_fast
