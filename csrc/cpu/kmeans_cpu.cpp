// Batched K-means, CPU kernels (the interface is csrc/kmeans_driver.h).
//
// assign / candidates / point_dist walk row tiles of one group in parallel
// (at::parallel_for). assign and candidates take the dot products of a tile
// with all the columns of its group's runs in one BLAS call (at::mm: x.c for
// every active run at once), then a fused pass turns them into distances
// ||x||^2 - 2 x.c + ||c||^2 and an argmin (or a min with the k-means++
// potential) while the tile is still in cache; no distance matrix outlives its
// tile. Counts and changed labels are summed per tile and added atomically
// (integers: the order does not matter).
// cluster_sums splits (group, feature slice) pairs across threads and moves
// the points whose label changed between the float64 cluster sums, in point
// order: the result does not depend on the number of threads.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../kmeans_driver.h"

namespace wsss_fast {
namespace {

using kmeans::Plan;
using kmeans::RunSet;

// Rows of x per tile: about 4 MB of x (so that BLAS packs the columns, up to
// n_init * k rows of D, once per many rows), 32 to 2048 rows. It depends on D
// and the dtype only: the dot products of a group, and so its result, do not
// depend on the thread count or on the other groups.
int64_t cpu_tile_rows(int64_t /*n*/, int64_t d, int64_t elem_size) {
  return std::clamp<int64_t>((int64_t{1} << 22) / std::max<int64_t>(d * elem_size, 1), 32, 2048);
}

// The CPU cluster sums walk whole groups (Plan::offsets); segments unused.
int64_t cpu_segment_rows(int64_t n) { return std::max<int64_t>(n, 1); }

struct Tile {
  int64_t group, begin, end;
};

Tile tile_at(const Plan& plan, int64_t t) {
  return {plan.tiles[3 * t], plan.tiles[3 * t + 1], plan.tiles[3 * t + 2]};
}

void atomic_add(int64_t* dst, int64_t v) {
  if (v != 0) __atomic_fetch_add(dst, v, __ATOMIC_RELAXED);
}

// Calls body(tile, first slot, slots, dots) for every tile whose group has
// slots in rs, with dots = x[tile] . cols[slots]^T, (rows, slots * width).
template <typename T, typename Body>
void for_each_tile_dots(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                        const at::Tensor& cols, int64_t width, const Body& body) {
  at::parallel_for(0, plan.n_tiles(), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const Tile tile = tile_at(plan, t);
      const int64_t s0 = rs.slot_off[tile.group], s1 = rs.slot_off[tile.group + 1];
      if (s0 == s1) continue;
      const auto dots = at::mm(xc.slice(0, tile.begin, tile.end),
                               cols.slice(0, s0 * width, s1 * width).t());
      body(tile, s0, s1 - s0, dots.template const_data_ptr<T>());
    }
  });
}

template <typename T>
void assign_impl(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                 const at::Tensor& xnorm, const at::Tensor& cols, const at::Tensor& cnorm,
                 at::Tensor& labels, at::Tensor& mind, at::Tensor& counts, at::Tensor& changed) {
  const int64_t N = plan.n, R = plan.n_init, k = plan.k;
  const double* xn = xnorm.const_data_ptr<double>();
  const double* cn = cnorm.const_data_ptr<double>();
  int32_t* lab = labels.mutable_data_ptr<int32_t>();
  double* md = mind.mutable_data_ptr<double>();
  int64_t* cnt = counts.mutable_data_ptr<int64_t>();
  int64_t* chg = changed.mutable_data_ptr<int64_t>();
  for_each_tile_dots<T>(plan, rs, xc, cols, k, [&](Tile tile, int64_t s0, int64_t slots,
                                                    const T* dots) {
    std::vector<int64_t> tile_counts(slots * k, 0), tile_changed(slots, 0);
    const int64_t m = slots * k;
    for (int64_t p = tile.begin; p < tile.end; ++p) {
      const T* row = dots + (p - tile.begin) * m;
      for (int64_t s = 0; s < slots; ++s) {
        const double* c = cn + (s0 + s) * k;
        const T* dot = row + s * k;
        double best = std::numeric_limits<double>::infinity();
        int32_t best_j = 0;
        for (int64_t j = 0; j < k; ++j) {
          const double v = c[j] - 2.0 * static_cast<double>(dot[j]);
          if (v < best) {
            best = v;
            best_j = static_cast<int32_t>(j);
          }
        }
        const int64_t at = (rs.runs[s0 + s] % R) * N + p;
        tile_changed[s] += lab[at] != best_j;
        lab[at] = best_j;
        md[at] = std::max(xn[p] + best, 0.0);
        ++tile_counts[s * k + best_j];
      }
    }
    for (int64_t s = 0; s < slots; ++s) {
      const int64_t run = rs.runs[s0 + s];
      atomic_add(chg + run, tile_changed[s]);
      for (int64_t j = 0; j < k; ++j) atomic_add(cnt + run * k + j, tile_counts[s * k + j]);
    }
  });
}

template <typename T>
void candidates_impl(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                     const at::Tensor& xnorm, const at::Tensor& cols, const at::Tensor& cnorm,
                     int64_t trials, const at::Tensor& closest, at::Tensor& out) {
  const int64_t N = plan.n, R = plan.n_init;
  const double* xn = xnorm.const_data_ptr<double>();
  const double* cn = cnorm.const_data_ptr<double>();
  const double* cl = closest.const_data_ptr<double>();
  double* o = out.mutable_data_ptr<double>();
  for_each_tile_dots<T>(plan, rs, xc, cols, trials, [&](Tile tile, int64_t s0, int64_t slots,
                                                         const T* dots) {
    const int64_t m = slots * trials;
    for (int64_t p = tile.begin; p < tile.end; ++p) {
      const T* row = dots + (p - tile.begin) * m;
      for (int64_t s = 0; s < slots; ++s) {
        const int64_t r = rs.runs[s0 + s] % R;
        const double current = cl[r * N + p];
        for (int64_t t = 0; t < trials; ++t) {
          const int64_t col = s * trials + t;
          const double d = std::max(
              xn[p] + cn[s0 * trials + col] - 2.0 * static_cast<double>(row[col]), 0.0);
          o[(t * R + r) * N + p] = std::min(current, d);
        }
      }
    }
  });
}

// Incremental: every point whose label changed moves from its old cluster's
// sum to its new one (the first iteration adds every point). Tasks are
// (group, feature slice) pairs, each walking its group's points in order.
template <typename T>
void cluster_sums_impl(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                       const at::Tensor& labels, const at::Tensor& prev_labels,
                       at::Tensor& sums) {
  const int64_t N = plan.n, D = plan.d, R = plan.n_init, k = plan.k;
  const int64_t width = std::min<int64_t>(D, 512);
  const int64_t slices = (D + width - 1) / width;
  const T* x = xc.const_data_ptr<T>();
  const int32_t* lab = labels.const_data_ptr<int32_t>();
  const int32_t* prev = prev_labels.const_data_ptr<int32_t>();
  double* out = sums.mutable_data_ptr<double>();
  at::parallel_for(0, plan.groups * slices, 1, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t g = task / slices, d0 = (task % slices) * width;
      const int64_t w = std::min(width, D - d0);
      for (int64_t s = rs.slot_off[g]; s < rs.slot_off[g + 1]; ++s) {
        const int64_t run = rs.runs[s], r = run % R;
        double* run_sums = out + run * k * D + d0;
        for (int64_t p = plan.offsets[g]; p < plan.offsets[g + 1]; ++p) {
          const int32_t now = lab[r * N + p], before = prev[r * N + p];
          if (now == before) continue;
          const T* xp = x + p * D + d0;
          double* add = run_sums + now * D;
          for (int64_t d = 0; d < w; ++d) add[d] += static_cast<double>(xp[d]);
          if (before < 0) continue;
          double* sub = run_sums + before * D;
          for (int64_t d = 0; d < w; ++d) sub[d] -= static_cast<double>(xp[d]);
        }
      }
    }
  });
}

template <typename T>
void finalize_impl(const RunSet& rs, const at::Tensor& sums, const at::Tensor& counts,
                   at::Tensor& centers, at::Tensor& cnorm, at::Tensor& shift) {
  const int64_t k = centers.size(1), D = centers.size(2);
  const double* sm = sums.const_data_ptr<double>();
  const int64_t* cnt = counts.const_data_ptr<int64_t>();
  T* c = centers.mutable_data_ptr<T>();
  double* cn = cnorm.mutable_data_ptr<double>();
  double* sh = shift.mutable_data_ptr<double>();
  at::parallel_for(0, rs.size(), 1, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      const int64_t run = rs.runs[s];
      const int64_t* n = cnt + run * k;
      const int64_t largest = std::max_element(n, n + k) - n;  // first maximum
      double total_shift = 0;
      // Clusters with points first: the empty ones copy the largest's new centre.
      for (int pass = 0; pass < 2; ++pass) {
        for (int64_t j = 0; j < k; ++j) {
          if ((n[j] > 0) != (pass == 0)) continue;
          T* cj = c + (run * k + j) * D;
          const T* src = c + (run * k + largest) * D;
          const double* sj = sm + (run * k + j) * D;
          double norm = 0;
          for (int64_t d = 0; d < D; ++d) {
            const T v = pass == 0 ? static_cast<T>(sj[d] / static_cast<double>(n[j])) : src[d];
            const double diff = static_cast<double>(v) - static_cast<double>(cj[d]);
            total_shift += diff * diff;
            norm += static_cast<double>(v) * static_cast<double>(v);
            cj[d] = v;
          }
          cn[run * k + j] = norm;
        }
      }
      sh[run] = total_shift;
    }
  });
}

// sum_d (a_d - b_d)^2 in float64, with eight partial sums so that it
// vectorises (the order is fixed: the result does not depend on the machine).
template <typename T>
double squared_distance(const T* a, const T* b, int64_t n) {
  constexpr int64_t L = 8;
  double acc[L] = {};
  int64_t d = 0;
  for (; d + L <= n; d += L) {
    for (int64_t l = 0; l < L; ++l) {
      const double diff = static_cast<double>(a[d + l]) - static_cast<double>(b[d + l]);
      acc[l] += diff * diff;
    }
  }
  double total = 0;
  for (int64_t l = 0; l < L; ++l) total += acc[l];
  for (; d < n; ++d) {
    const double diff = static_cast<double>(a[d]) - static_cast<double>(b[d]);
    total += diff * diff;
  }
  return total;
}

template <typename T>
void point_dist_impl(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                     const at::Tensor& centers, const at::Tensor& labels, at::Tensor& dist) {
  const int64_t N = plan.n, D = plan.d, R = plan.n_init, k = plan.k;
  const T* x = xc.const_data_ptr<T>();
  const T* c = centers.const_data_ptr<T>();
  const int32_t* lab = labels.const_data_ptr<int32_t>();
  double* out = dist.mutable_data_ptr<double>();
  at::parallel_for(0, plan.n_tiles(), 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const Tile tile = tile_at(plan, t);
      for (int64_t s = rs.slot_off[tile.group]; s < rs.slot_off[tile.group + 1]; ++s) {
        const int64_t run = rs.runs[s], r = run % R;
        for (int64_t p = tile.begin; p < tile.end; ++p) {
          out[r * N + p] = squared_distance(x + p * D, c + (run * k + lab[r * N + p]) * D, D);
        }
      }
    }
  });
}

// --------------------------------------------------------------- dtype dispatch

void assign(const Plan& plan, const RunSet& rs, const at::Tensor& xc, const at::Tensor& xnorm,
            const at::Tensor& cols, const at::Tensor& cnorm, at::Tensor& labels,
            at::Tensor& mind, at::Tensor& counts, at::Tensor& changed) {
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "kmeans_assign_cpu", [&] {
    assign_impl<scalar_t>(plan, rs, xc, xnorm, cols, cnorm, labels, mind, counts, changed);
  });
}

void candidates(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                const at::Tensor& xnorm, const at::Tensor& cols, const at::Tensor& cnorm,
                int64_t trials, const at::Tensor& closest, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "kmeans_candidates_cpu", [&] {
    candidates_impl<scalar_t>(plan, rs, xc, xnorm, cols, cnorm, trials, closest, out);
  });
}

void cluster_sums(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                  const at::Tensor& labels, const at::Tensor& prev_labels, at::Tensor& sums) {
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "kmeans_cluster_sums_cpu", [&] {
    cluster_sums_impl<scalar_t>(plan, rs, xc, labels, prev_labels, sums);
  });
}

void finalize(const RunSet& rs, const at::Tensor& sums, const at::Tensor& counts,
              at::Tensor& centers, at::Tensor& cnorm, at::Tensor& shift) {
  AT_DISPATCH_FLOATING_TYPES(centers.scalar_type(), "kmeans_finalize_cpu", [&] {
    finalize_impl<scalar_t>(rs, sums, counts, centers, cnorm, shift);
  });
}

void point_dist(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                const at::Tensor& centers, const at::Tensor& labels, at::Tensor& dist) {
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "kmeans_point_dist_cpu", [&] {
    point_dist_impl<scalar_t>(plan, rs, xc, centers, labels, dist);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_cpu(
    const at::Tensor& x, const at::Tensor& groups, int64_t num_groups, int64_t k,
    int64_t n_init, int64_t max_iter, double tol, int64_t seed, c10::string_view init) {
  static const kmeans::Kernels kernels{cpu_tile_rows, cpu_segment_rows, assign, candidates,
                                       cluster_sums,  finalize,         point_dist};
  return kmeans::run(kernels, x, groups, num_groups, k, n_init, max_iter, tol, seed,
                     std::string(init));
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) { m.impl("kmeans", &kmeans_cpu); }

}  // namespace wsss_fast
