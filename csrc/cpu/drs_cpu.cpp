// DRS suppression, CPU kernels.
//
// One (n, c) plane of S = H * W contiguous elements at a time, planes in
// parallel with at::parallel_for. Neither relu(x) nor the broadcast threshold
// is ever materialised:
//   forward : pass 1 reads x for the plane max M, pass 2 reads x and writes out;
//   backward: pass 1 reads x for M and its first position k, pass 2 reads x and
//             grad_out, writes grad_x and sums the gradient of the threshold.
// Semantics (SPEC.md, "DRS"): r = relu(x), M = max r, t = M * g,
// out = min(r, t); torch.min splits the gradient 1/2-1/2 where r == t, the
// gradient of M goes to the first argmax (like AdaptiveMaxPool2d), and the ReLU
// masks x <= 0. A NaN in a plane makes M, and so the whole output plane, NaN.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../drs_common.h"
#include "vec.h"

namespace wsss_fast {
namespace {

using simd::kLanes;
using simd::load;
using simd::store;
using simd::Vec;

// Max of relu(x) over one plane; NaN if the plane holds a NaN.
template <typename T>
T plane_relu_max(const T* x, int64_t size) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> m{};
  auto nan = m != m;  // all false
  int64_t i = 0;
  for (; i + L <= size; i += L) {
    const Vec<T> v = load(x + i);
    m = v > m ? v : m;
    nan |= v != v;
  }
  T result = T(0);
  bool has_nan = false;
  for (int64_t j = 0; j < L; ++j) {
    result = std::max(result, m[j]);
    has_nan |= nan[j] != 0;
  }
  for (; i < size; ++i) {
    result = std::max(result, x[i]);
    has_nan |= x[i] != x[i];
  }
  return has_nan ? std::numeric_limits<T>::quiet_NaN() : result;
}

// Planes per parallel task: about 32k elements of work each.
int64_t grain_for(int64_t plane_size) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(plane_size, 1));
}

// out = min(relu(x), t) for one element or vector; a NaN threshold wins, as in
// torch.minimum (t is NaN whenever the plane is).
template <typename V, typename T>
inline V suppress(V v, T t) {
  const V r = v > T(0) ? v : V{} + T(0);
  return r < t ? r : V{} + t;
}

template <typename T>
void drs_forward_kernel(const T* x, const T* gate, double delta, T* out,
                        int64_t planes, int64_t size) {
  constexpr int64_t L = kLanes<T>;
  at::parallel_for(0, planes, grain_for(size), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* xp = x + p * size;
      T* op = out + p * size;
      const T g = gate ? gate[p] : static_cast<T>(delta);
      const T t = plane_relu_max(xp, size) * g;
      int64_t i = 0;
      for (; i + L <= size; i += L) store(op + i, suppress(load(xp + i), t));
      for (; i < size; ++i) op[i] = suppress(xp[i], t);
    }
  });
}

// grad_x of one element (or vector of elements) without the max's share; adds
// the threshold's share of the gradient to grad_t.
template <typename V, typename T>
inline V element_grad(V v, V gy, T t, V& grad_t) {
  const V zero = V{} + T(0);
  const V r = v > T(0) ? v : zero;
  // Share of the min's gradient that goes to r (the rest goes to t).
  const V to_r = (r < t ? zero + T(1) : zero) + (r == t ? zero + T(0.5) : zero);
  grad_t += gy - gy * to_r;
  return v > T(0) ? gy * to_r : zero;
}

// Writes grad_x for one plane; returns the summed gradient of the threshold.
// Each lane sums at most 64 elements in T and the blocks add up in double, so
// a 321 x 321 plane's sum keeps float64-reference accuracy.
template <typename T>
double plane_grad(const T* x, const T* gy, T t, T* gx, int64_t size) {
  constexpr int64_t L = kLanes<T>;
  constexpr int64_t kSumBlock = 64 * L;
  double grad_t = 0;
  int64_t i = 0;
  while (i + L <= size) {
    Vec<T> acc{};
    const int64_t block_end = std::min(size, i + kSumBlock);
    for (; i + L <= block_end; i += L) {
      store(gx + i, element_grad(load(x + i), load(gy + i), t, acc));
    }
    for (int64_t j = 0; j < L; ++j) grad_t += acc[j];
  }
  T rest = 0;
  for (; i < size; ++i) gx[i] = element_grad(x[i], gy[i], t, rest);
  return grad_t + rest;
}

template <typename T>
void drs_backward_kernel(const T* grad_out, const T* x, const T* gate,
                         double delta, T* grad_x, T* grad_gate, int64_t planes,
                         int64_t size) {
  at::parallel_for(0, planes, grain_for(size), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* xp = x + p * size;
      T* gxp = grad_x + p * size;
      const T g = gate ? gate[p] : static_cast<T>(delta);
      const T m = plane_relu_max(xp, size);
      const T grad_t = static_cast<T>(plane_grad(xp, grad_out + p * size, m * g, gxp, size));
      if (m > T(0)) {
        // The max's gradient, to its first argmax (where x = m > 0).
        gxp[std::find(xp, xp + size, m) - xp] += grad_t * g;
      }
      if (grad_gate) grad_gate[p] = grad_t * m;
    }
  });
}

void check_cpu_dtype(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x on CPU must be float32 or float64, got ", x.scalar_type());
}

at::Tensor forward(const at::Tensor& x, const at::Tensor* gate, double delta, const char* op) {
  check_drs_inputs(x, gate, op);
  check_cpu_dtype(x, op);
  const auto xc = x.contiguous();
  const auto gc = gate ? gate->contiguous() : at::Tensor();
  auto out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;
  const int64_t size = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "drs_cpu", [&] {
    drs_forward_kernel<scalar_t>(xc.const_data_ptr<scalar_t>(),
                                 gate ? gc.const_data_ptr<scalar_t>() : nullptr, delta,
                                 out.mutable_data_ptr<scalar_t>(), out.numel() / size, size);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x,
                                            const at::Tensor* gate, double delta, const char* op) {
  check_drs_inputs(x, gate, op);
  check_drs_grad(grad_out, x, op);
  check_cpu_dtype(x, op);
  const auto xc = x.contiguous();
  const auto goc = grad_out.contiguous();
  const auto gc = gate ? gate->contiguous() : at::Tensor();
  auto grad_x = at::empty(x.sizes(), x.options());
  auto grad_gate = gate ? at::empty(gate->sizes(), gate->options()) : at::Tensor();
  if (grad_x.numel() == 0) return {grad_x, grad_gate};
  const int64_t size = x.size(2) * x.size(3);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "drs_backward_cpu", [&] {
    drs_backward_kernel<scalar_t>(goc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(),
                                  gate ? gc.const_data_ptr<scalar_t>() : nullptr, delta,
                                  grad_x.mutable_data_ptr<scalar_t>(),
                                  gate ? grad_gate.mutable_data_ptr<scalar_t>() : nullptr,
                                  grad_x.numel() / size, size);
  });
  return {grad_x, grad_gate};
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) { register_drs_impls<forward, backward>(m); }

}  // namespace wsss_fast
