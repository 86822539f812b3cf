// AffinityNet affinities, CPU kernels.
//
// a[b, k, y, x] = exp(-mean_d |f[b, d, y, x] - f[b, d, y + dy_k, x + dx_k]|),
// 0 where the target is outside the image. One task per (b, y) row, rows in
// parallel with at::parallel_for; no (B, P, D, H, W) difference tensor:
//   forward : per row, P running sums of |f0 - f1| over the channels, then exp;
//   backward: per row and channel, gathers the gradient of every pair the pixel
//             is the source of (-a g sign(f_s - f_t) / D) and of every pair it
//             is the target of (+a g sign(f_s - f_t) / D), so no two tasks write
//             the same element. sign(0) = 0, the subgradient torch.abs uses, so
//             tied features pass no gradient through that pair.
// The saved forward output a is reused in backward (d exp(-m) / dm = -a).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../random_walk_checks.h"
#include "vec.h"

namespace wsss_fast {
namespace {

using simd::kLanes;
using simd::load;
using simd::store;

struct Offset {
  int64_t dy, dx;
};

std::vector<Offset> offsets_of(int radius) {
  std::vector<Offset> offs;
  for_each_pair_offset(radius, [&](int, int dy, int dx) { offs.push_back({dy, dx}); });
  return offs;
}

// Columns x of a source row whose target x + dx is inside [0, W).
inline int64_t first_col(int64_t dx) { return std::max<int64_t>(0, -dx); }
inline int64_t end_col(int64_t dx, int64_t W) { return std::min<int64_t>(W, W - dx); }

template <typename T>
inline T sign(T v) {
  return static_cast<T>((v > T(0)) - (v < T(0)));
}

// acc[x] += |f0[x] - f1[x + dx]| for x in [x0, x1).
template <typename T>
void add_abs_diff(T* acc, const T* f0, const T* f1, int64_t dx, int64_t x0, int64_t x1) {
  constexpr int64_t L = kLanes<T>;
  int64_t x = x0;
  for (; x + L <= x1; x += L) {
    store(acc + x, load(acc + x) + simd::abs<T>(load(f0 + x) - load(f1 + x + dx)));
  }
  for (; x < x1; ++x) acc[x] += std::abs(f0[x] - f1[x + dx]);
}

// g[x] += a[x + da] * go[x + da] * sign(fs[x + ds] - ft[x + dt]) for x in [x0, x1):
// the gradient of the pairs from fs to ft, seen from the pixel at x, with the
// factor -1 (source side) or +1 (target side) in `factor`.
template <typename T>
void add_pair_grad(T* g, const T* a, const T* go, int64_t da, const T* fs, int64_t ds,
                   const T* ft, int64_t dt, T factor, int64_t x0, int64_t x1) {
  constexpr int64_t L = kLanes<T>;
  int64_t x = x0;
  for (; x + L <= x1; x += L) {
    const auto c = load(a + x + da) * load(go + x + da) * factor;
    store(g + x, load(g + x) + c * simd::sign<T>(load(fs + x + ds) - load(ft + x + dt)));
  }
  for (; x < x1; ++x) g[x] += a[x + da] * go[x + da] * factor * sign(fs[x + ds] - ft[x + dt]);
}

int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_task, 1));
}

template <typename T>
void affinity_forward_kernel(const T* f, T* out, int64_t B, int64_t D, int64_t H, int64_t W,
                             const std::vector<Offset>& offs) {
  const int64_t P = static_cast<int64_t>(offs.size()), plane = H * W;
  at::parallel_for(0, B * H, grain_for(D * P * W), [&](int64_t begin, int64_t end) {
    std::vector<T> acc(P * W);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, y = bh % H;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t d = 0; d < D; ++d) {
        const T* fd = f + (b * D + d) * plane;
        for (int64_t k = 0; k < P; ++k) {
          const Offset o = offs[k];
          if (y + o.dy >= H) continue;
          add_abs_diff(acc.data() + k * W, fd + y * W, fd + (y + o.dy) * W, o.dx, first_col(o.dx),
                       end_col(o.dx, W));
        }
      }
      for (int64_t k = 0; k < P; ++k) {
        const Offset o = offs[k];
        T* row = out + ((b * P + k) * H + y) * W;
        const T* a = acc.data() + k * W;
        const bool row_inside = y + o.dy < H;
        const int64_t x0 = first_col(o.dx), x1 = end_col(o.dx, W);
        for (int64_t x = 0; x < W; ++x) {
          row[x] = row_inside && x >= x0 && x < x1 ? std::exp(-(a[x] / static_cast<T>(D))) : T(0);
        }
      }
    }
  });
}

template <typename T>
void affinity_backward_kernel(const T* grad_out, const T* f, const T* a, T* grad_f, int64_t B,
                              int64_t D, int64_t H, int64_t W, const std::vector<Offset>& offs) {
  const int64_t P = static_cast<int64_t>(offs.size()), plane = H * W;
  at::parallel_for(0, B * H, grain_for(2 * D * P * W), [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, y = bh % H;
      for (int64_t d = 0; d < D; ++d) {
        const T* fd = f + (b * D + d) * plane;
        const T* f0 = fd + y * W;
        T* g = grad_f + (b * D + d) * plane + y * W;
        std::fill(g, g + W, T(0));
        for (int64_t k = 0; k < P; ++k) {
          const Offset o = offs[k];
          const int64_t pk = (b * P + k) * plane;
          if (y + o.dy < H) {  // (y, x) is the source of pair k
            add_pair_grad(g, a + pk + y * W, grad_out + pk + y * W, 0, f0, 0,
                          fd + (y + o.dy) * W, o.dx, T(-1), first_col(o.dx), end_col(o.dx, W));
          }
          if (y - o.dy >= 0) {  // (y, x) is the target of pair k from (y - dy, x - dx)
            const int64_t sy = y - o.dy;
            add_pair_grad(g, a + pk + sy * W, grad_out + pk + sy * W, -o.dx, fd + sy * W, -o.dx,
                          f0, 0, T(1), first_col(-o.dx), end_col(-o.dx, W));
          }
        }
        for (int64_t x = 0; x < W; ++x) g[x] /= static_cast<T>(D);
      }
    }
  });
}

void check_cpu_dtype(const at::Tensor& features, const char* op) {
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble, op,
              ": features on CPU must be float32 or float64, got ", features.scalar_type());
}

at::Tensor affinity_cpu(const at::Tensor& features, int64_t radius) {
  check_affinity_inputs(features, radius, "affinity");
  check_cpu_dtype(features, "affinity");
  const auto offs = offsets_of(static_cast<int>(radius));
  const int64_t B = features.size(0), D = features.size(1), H = features.size(2),
                W = features.size(3);
  auto out = at::empty({B, static_cast<int64_t>(offs.size()), H, W}, features.options());
  if (out.numel() == 0) return out;
  const auto fc = features.contiguous();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "affinity_cpu", [&] {
    affinity_forward_kernel<scalar_t>(fc.const_data_ptr<scalar_t>(),
                                      out.mutable_data_ptr<scalar_t>(), B, D, H, W, offs);
  });
  return out;
}

at::Tensor affinity_backward_cpu(const at::Tensor& grad_out, const at::Tensor& features,
                                 const at::Tensor& out, int64_t radius) {
  check_affinity_grad(grad_out, out, features, radius, "affinity_backward");
  check_cpu_dtype(features, "affinity_backward");
  const auto offs = offsets_of(static_cast<int>(radius));
  auto grad_f = at::empty(features.sizes(), features.options());
  if (grad_f.numel() == 0) return grad_f;
  if (offs.empty()) return grad_f.zero_();
  const auto fc = features.contiguous();
  const auto gc = grad_out.contiguous();
  const auto ac = out.contiguous();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "affinity_backward_cpu", [&] {
    affinity_backward_kernel<scalar_t>(gc.const_data_ptr<scalar_t>(), fc.const_data_ptr<scalar_t>(),
                                       ac.const_data_ptr<scalar_t>(),
                                       grad_f.mutable_data_ptr<scalar_t>(), features.size(0),
                                       features.size(1), features.size(2), features.size(3), offs);
  });
  return grad_f;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) {
  m.impl("affinity", &affinity_cpu);
  m.impl("affinity_backward", &affinity_backward_cpu);
}

}  // namespace wsss_fast
