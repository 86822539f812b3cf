// Random walk of PSA as a sparse stencil, CPU kernel.
//
// out = cam @ T^n_steps per image, T = PSA's column-normalised transition
// matrix (csrc/pairs.h). Since A is symmetric, one step is a gather: the new
// value of pixel j is sum_s w[j, s] * value[j + slot offset s] with the 2P + 1
// weights w[j, s] = A(j, j + off_s) / sum_s' A(j, j + off_s'), computed once
// (in double, stored in T) before the steps.
//
// Layout: two ping-pong state buffers (B, C, H + 2m, Wv + 2m), m = radius - 1,
// Wv = W rounded up to the vector width, zero outside the image, so a step
// reads every slot without bounds checks (the weights of slots outside the
// image, or of pairs that do not count, are 0; the zero border is never
// written). Weights: (B, H, S, Wv), a row's S x Wv weights contiguous.
// Rows are processed in groups of up to 4 channels: a row's weights are loaded
// once per group and reused across its channels from registers. Parallelism:
//  * with at least 2 (image, channel) planes per thread, one at::parallel_for
//    over planes, each task running all n_steps on its planes without any
//    barrier (planes never read each other);
//  * otherwise (e.g. B = C = 1) one at::parallel_for per step over (image,
//    row, channel group), ping-ponging the buffers between steps.
// The first is the default for PSA's 21 channels: 256 barriers per call cost
// up to 2 s (instead of 40 ms) on a 2-core machine whose cores other
// processes share, each barrier waiting for a descheduled thread.
// Work: O(n_steps * B * C * H * W * (2P + 1)); memory: O(B * (C + S) * H * W),
// no N x N matrix.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../random_walk_checks.h"
#include "vec.h"

namespace wsss_fast {
namespace {

using simd::kLanes;
using simd::load;
using simd::store;
using simd::Vec;

constexpr int kGroup = 4;  // channels per task

struct Geometry {
  int64_t B, C, H, W;
  int radius, P, S;
  int64_t pad, Wv, Hp, Wp;  // padded state: (B, C, Hp, Wp), interior at (pad, pad)
};

template <typename T>
Geometry geometry(const at::Tensor& cam, int radius) {
  Geometry g;
  g.B = cam.size(0);
  g.C = cam.size(1);
  g.H = cam.size(2);
  g.W = cam.size(3);
  g.radius = radius;
  g.P = pair_count(radius);
  g.S = 2 * g.P + 1;
  g.pad = radius - 1;
  g.Wv = (g.W + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
  g.Hp = g.H + 2 * g.pad;
  g.Wp = g.Wv + 2 * g.pad;
  return g;
}

// Offsets of the slots in the padded state, in elements.
std::vector<int64_t> slot_offsets(const Geometry& g) {
  std::vector<int64_t> off(g.S, 0);
  for_each_pair_offset(g.radius, [&](int k, int dy, int dx) {
    off[1 + k] = dy * g.Wp + dx;
    off[1 + g.P + k] = -(dy * g.Wp + dx);
  });
  return off;
}

int64_t grain_for(int64_t work_per_task) {
  return std::max<int64_t>(1, 65536 / std::max<int64_t>(work_per_task, 1));
}

template <typename T>
std::vector<T> weights_of(const T* aff, const Geometry& g, double beta, bool psa) {
  std::vector<T> w(g.B * g.H * g.S * g.Wv, T(0));
  at::parallel_for(0, g.B * g.H, grain_for(g.W * g.S * 8), [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / g.H, y = bh % g.H;
      const T* ab = aff + b * g.P * g.H * g.W;
      T* row = w.data() + bh * g.S * g.Wv;
      for (int64_t x = 0; x < g.W; ++x) {
        transition_weights(ab, static_cast<int>(g.H), static_cast<int>(g.W), static_cast<int>(y),
                           static_cast<int>(x), g.radius, g.P, beta, psa, row + x, g.Wv);
      }
    }
  });
  return w;
}

// One row of one step for NG channels: dst[c][x] = sum_s w[s][x] * src[c][x + off[s]].
// src and dst point at column 0 of the row in the padded buffers.
template <typename T, int NG>
void step_row(const T* w, const T* const* src, T* const* dst, const int64_t* off, int S,
              int64_t W, int64_t Wv) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t x = 0; x < Wv; x += L) {
    Vec<T> acc[NG] = {};
    for (int s = 0; s < S; ++s) {
      const Vec<T> ws = load(w + s * Wv + x);
      const int64_t o = off[s] + x;
      for (int c = 0; c < NG; ++c) acc[c] += ws * load(src[c] + o);
    }
    const int64_t n = std::min(L, W - x);
    for (int c = 0; c < NG; ++c) {
      if (n == L) {
        store(dst[c] + x, acc[c]);
      } else {
        simd::store_partial(dst[c] + x, acc[c], n);  // keep the zero border
      }
    }
  }
}

// Row y of one step for channels c0 .. c0 + n - 1 (n <= kGroup) of image b.
template <typename T>
void step_unit(const T* w, const T* src, T* dst, const std::vector<int64_t>& off,
               const Geometry& g, int64_t b, int64_t y, int64_t c0, int n) {
  const T* srcs[kGroup];
  T* dsts[kGroup];
  for (int c = 0; c < n; ++c) {
    const int64_t row = ((b * g.C + c0 + c) * g.Hp + y + g.pad) * g.Wp + g.pad;
    srcs[c] = src + row;
    dsts[c] = dst + row;
  }
  const T* wrow = w + (b * g.H + y) * g.S * g.Wv;
  switch (n) {
    case 4: step_row<T, 4>(wrow, srcs, dsts, off.data(), g.S, g.W, g.Wv); break;
    case 3: step_row<T, 3>(wrow, srcs, dsts, off.data(), g.S, g.W, g.Wv); break;
    case 2: step_row<T, 2>(wrow, srcs, dsts, off.data(), g.S, g.W, g.Wv); break;
    default: step_row<T, 1>(wrow, srcs, dsts, off.data(), g.S, g.W, g.Wv); break;
  }
}

// All n_steps for the (image, channel) planes [begin, end), one thread, no
// barrier: the planes of different tasks never read each other.
template <typename T>
void walk_planes(const T* w, T* const* buf, const std::vector<int64_t>& off, const Geometry& g,
                 int64_t n_steps, int64_t begin, int64_t end) {
  for (int64_t t = 0; t < n_steps; ++t) {
    const T* src = buf[t % 2];
    T* dst = buf[(t + 1) % 2];
    for (int64_t p = begin; p < end;) {
      const int64_t b = p / g.C, c_end = std::min(end, (b + 1) * g.C);
      for (int64_t y = 0; y < g.H; ++y) {
        for (int64_t c = p; c < c_end; c += kGroup) {
          step_unit(w, src, dst, off, g, b, y, c - b * g.C,
                    static_cast<int>(std::min<int64_t>(kGroup, c_end - c)));
        }
      }
      p = c_end;
    }
  }
}

// One step, parallel over (image, row, group of channels): a barrier per step.
template <typename T>
void step_rows(const T* w, const T* src, T* dst, const std::vector<int64_t>& off,
               const Geometry& g) {
  const int64_t groups = (g.C + kGroup - 1) / kGroup;
  at::parallel_for(0, g.B * g.H * groups, grain_for(g.S * g.Wv * kGroup),
                   [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t grp = u % groups, bh = u / groups;
      step_unit(w, src, dst, off, g, bh / g.H, bh % g.H, grp * kGroup,
                static_cast<int>(std::min<int64_t>(kGroup, g.C - grp * kGroup)));
    }
  });
}

// Copies between the (B, C, H, W) maps and the interior of a padded buffer.
template <typename T>
void copy_rows(const T* from, T* to, const Geometry& g, bool into_padded) {
  at::parallel_for(0, g.B * g.C * g.H, grain_for(g.W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t plane = r / g.H, y = r % g.H;
      const int64_t padded = (plane * g.Hp + y + g.pad) * g.Wp + g.pad, dense = r * g.W;
      if (into_padded) {
        std::copy(from + dense, from + dense + g.W, to + padded);
      } else {
        std::copy(from + padded, from + padded + g.W, to + dense);
      }
    }
  });
}

template <typename T>
void random_walk_kernel(const T* cam, const T* aff, T* out, const Geometry& g, double beta,
                        int64_t n_steps, bool psa) {
  const std::vector<T> w = weights_of(aff, g, beta, psa);
  const std::vector<int64_t> off = slot_offsets(g);
  std::vector<T> buf[2] = {std::vector<T>(g.B * g.C * g.Hp * g.Wp, T(0)),
                           std::vector<T>(g.B * g.C * g.Hp * g.Wp, T(0))};
  copy_rows(cam, buf[0].data(), g, true);
  T* const bufs[2] = {buf[0].data(), buf[1].data()};
  const int64_t planes = g.B * g.C;
  if (planes >= 2 * at::get_num_threads()) {
    at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
      walk_planes(w.data(), bufs, off, g, n_steps, begin, end);
    });
  } else {
    for (int64_t t = 0; t < n_steps; ++t) {
      step_rows(w.data(), bufs[t % 2], bufs[(t + 1) % 2], off, g);
    }
  }
  copy_rows(buf[n_steps % 2].data(), out, g, false);
}

at::Tensor random_walk_cpu(const at::Tensor& cam, const at::Tensor& aff, int64_t radius,
                           double beta, int64_t n_steps, c10::string_view border) {
  const bool psa = check_random_walk_inputs(cam, aff, radius, beta, n_steps, border,
                                            "random_walk");
  TORCH_CHECK(cam.scalar_type() == at::kFloat || cam.scalar_type() == at::kDouble,
              "random_walk: cam on CPU must be float32 or float64, got ", cam.scalar_type());
  auto out = at::empty(cam.sizes(), cam.options());
  if (out.numel() == 0) return out;
  if (n_steps == 0) return out.copy_(cam);
  const auto cc = cam.contiguous();
  const auto ac = aff.contiguous();
  AT_DISPATCH_FLOATING_TYPES(cam.scalar_type(), "random_walk_cpu", [&] {
    random_walk_kernel<scalar_t>(cc.const_data_ptr<scalar_t>(), ac.const_data_ptr<scalar_t>(),
                                 out.mutable_data_ptr<scalar_t>(),
                                 geometry<scalar_t>(cam, static_cast<int>(radius)), beta, n_steps,
                                 psa);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) { m.impl("random_walk", &random_walk_cpu); }

}  // namespace wsss_fast
