// Pixel pairs of AffinityNet and the random walk, shared by the CPU kernels and
// the CUDA device code (no torch, no CUDA headers; __host__ __device__ under
// nvcc). The Python twin of the offset rule is wsss_fast/pairs.py; the tests
// check that both give the same order.
//
// Forward offsets (dy, dx), in PSA's order: dy = 0 with dx = 1..radius-1, then
// dy = 1..radius-1 with dx = -(radius-1)..radius-1 and dx^2 + dy^2 < radius^2.
// A pair joins the source (y, x) to the target (y + dy, x + dx).
//
// Random-walk stencil slots of a pixel j: slot 0 is j itself, slot 1 + k the
// target j + o_k of its forward pair k, slot 1 + P + k the source j - o_k of
// the forward pair k that ends at j. S = 2P + 1 slots.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define WSSS_HD __host__ __device__
#else
#define WSSS_HD
#endif

namespace wsss_fast {

constexpr int kMaxRadius = 16;
constexpr int kMaxPairs = 396;  // pair_count(kMaxRadius)
constexpr int kMaxSlots = 2 * kMaxPairs + 1;

// Calls f(k, dy, dx) for every forward offset k in order; returns P.
template <typename F>
WSSS_HD inline int for_each_pair_offset(int radius, F&& f) {
  int k = 0;
  for (int dx = 1; dx < radius; ++dx) f(k++, 0, dx);
  for (int dy = 1; dy < radius; ++dy) {
    for (int dx = 1 - radius; dx < radius; ++dx) {
      if (dx * dx + dy * dy < radius * radius) f(k++, dy, dx);
    }
  }
  return k;
}

struct IgnoreOffset {
  WSSS_HD void operator()(int, int, int) const {}
};

WSSS_HD inline int pair_count(int radius) { return for_each_pair_offset(radius, IgnoreOffset()); }

// True if the pair from source (sy, sx) with offset (dy, dx) counts in the
// random walk: both pixels in the (H, W) image and, with psa_border, the source
// outside PSA's band (y > H - radius, x < radius - 1 or x > W - radius).
WSSS_HD inline bool pair_counts(int sy, int sx, int dy, int dx, int H, int W, int radius,
                                bool psa_border) {
  const int ty = sy + dy, tx = sx + dx;
  if (sy < 0 || sy >= H || sx < 0 || sx >= W || ty < 0 || ty >= H || tx < 0 || tx >= W) {
    return false;
  }
  const int m = radius - 1;
  return !psa_border || (sy < H - m && sx >= m && sx < W - m);
}

// Calls f(slot, A) with the entries A(j, j + slot offset) of PSA's affinity
// matrix at pixel j = (y, x) of one image: 1 for slot 0, aff^beta for counted
// pairs, 0 for the others. aff: that image's (P, H, W) affinities.
template <typename T, typename F>
WSSS_HD inline void for_each_transition_entry(const T* aff, int H, int W, int y, int x,
                                              int radius, int P, double beta, bool psa_border,
                                              F&& f) {
  const int64_t plane = static_cast<int64_t>(H) * W;
  f(0, 1.0);
  for_each_pair_offset(radius, [&](int k, int dy, int dx) {
    const T* ak = aff + k * plane;
    const bool fwd = pair_counts(y, x, dy, dx, H, W, radius, psa_border);
    f(1 + k, fwd ? ::pow(static_cast<double>(ak[static_cast<int64_t>(y) * W + x]), beta) : 0.0);
    const int sy = y - dy, sx = x - dx;
    const bool bwd = pair_counts(sy, sx, dy, dx, H, W, radius, psa_border);
    f(1 + P + k,
      bwd ? ::pow(static_cast<double>(ak[static_cast<int64_t>(sy) * W + sx]), beta) : 0.0);
  });
}

// Writes the column-normalised transition weights of pixel j = (y, x):
// w[s * stride] = A(j, j + slot offset s) / sum_s' A(j, j + slot offset s'),
// the share of slot s in j's new value (T is A with columns normalised, and A
// is symmetric). Sums in double.
template <typename T, typename Out>
WSSS_HD inline void transition_weights(const T* aff, int H, int W, int y, int x, int radius,
                                       int P, double beta, bool psa_border, Out* w,
                                       int64_t stride) {
  double sum = 0.0;
  for_each_transition_entry(aff, H, W, y, x, radius, P, beta, psa_border,
                            [&](int, double a) { sum += a; });
  const double inv = 1.0 / sum;
  for_each_transition_entry(aff, H, W, y, x, radius, P, beta, psa_border,
                            [&](int s, double a) { w[s * stride] = static_cast<Out>(a * inv); });
}

}  // namespace wsss_fast
