// Batched K-means: the device-agnostic driver and the interface of the device
// kernels it calls.
//
// The driver (csrc/cpu/kmeans_driver.cpp, compiled with the always-built CPU
// sources) runs the algorithm of wsss_fast/reference/kmeans.py for all groups
// and all n_init runs at once: it sorts the points by group, centres every
// group on its mean, seeds with k-means++ (candidate sampling by cumsum and
// searchsorted), iterates Lloyd's algorithm in lockstep over the runs that
// have not converged, relocates empty clusters and picks the best run of each
// group. Everything that touches all N x D values or all N x k distances is a
// device kernel (`Kernels`); the driver itself only runs small ATen ops, so
// the same code serves the CPU and CUDA kernels and both follow one algorithm.
//
// Vocabulary: a *run* is one (group g, init r) pair, run id g * R + r with
// R = n_init. A `RunSet` lists some runs, grouped by group, as *slots*; the
// kernels that compare points with per-run vectors (centres, k-means++
// candidates) get those vectors as `cols`: `width` consecutive rows per slot,
// slot-major.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

namespace wsss_fast {
namespace kmeans {

// Layout of one call: points sorted by group, cut into tiles.
struct Plan {
  int64_t n = 0;       // points
  int64_t d = 0;       // features
  int64_t groups = 0;  // G
  int64_t n_init = 0;  // R
  int64_t k = 0;
  std::vector<int64_t> offsets;  // G + 1: group g is rows [offsets[g], offsets[g + 1])
  // Row tiles (at most Kernels::tile_rows rows of one group), (group, begin,
  // end) triples, on the host and as a (n_tiles, 3) int64 tensor on the device.
  std::vector<int64_t> tiles;
  at::Tensor tiles_dev;
  // Segments for the cluster sums (at most Kernels::segment_rows rows of one
  // group), same format, with segment_off (G + 1): segments of group g.
  std::vector<int64_t> segments;
  std::vector<int64_t> segment_off;
  at::Tensor segments_dev;
  at::Tensor segment_off_dev;

  int64_t n_tiles() const { return static_cast<int64_t>(tiles.size() / 3); }
  int64_t n_segments() const { return static_cast<int64_t>(segments.size() / 3); }
};

// Some runs, by group: group g owns slots [slot_off[g], slot_off[g + 1]),
// slot s is run runs[s]. Host vectors and int64 device tensors.
struct RunSet {
  std::vector<int64_t> slot_off;
  std::vector<int64_t> runs;
  at::Tensor slot_off_dev;
  at::Tensor runs_dev;

  int64_t size() const { return static_cast<int64_t>(runs.size()); }
};

// The device kernels. Tensors are contiguous and on the device of x; xc is
// the (N, D) centred data sorted by group (float32 or float64), xnorm its (N,)
// float64 squared row norms; labels (R, N) int32 holds the label of point p
// for run (g, r) at [r][p]. A kernel touches only the runs of its RunSet.
struct Kernels {
  // Rows per tile for the tile kernels, for N points of D features of
  // elem_size bytes.
  int64_t (*tile_rows)(int64_t n, int64_t d, int64_t elem_size);
  // Rows per segment for the cluster sums, for N points.
  int64_t (*segment_rows)(int64_t n);

  // E-step. cols (S * k, D): the centres of each run; cnorm (S * k) float64
  // their squared norms. Writes the nearest centre of every point (argmin of
  // ||c||^2 - 2 x.c, lowest index on ties) to labels, the squared distance to
  // it (clamped at 0) to mind (R, N) float64, and adds to counts (G * R, k)
  // int64 the cluster sizes and to changed (G * R) int64 the points whose
  // label differs from the one labels held on entry.
  void (*assign)(const Plan& plan, const RunSet& runs, const at::Tensor& xc,
                 const at::Tensor& xnorm, const at::Tensor& cols, const at::Tensor& cnorm,
                 at::Tensor& labels, at::Tensor& mind, at::Tensor& counts,
                 at::Tensor& changed);

  // k-means++ candidates. cols (S * trials, D): candidate points of each run;
  // cnorm their squared norms. out (trials, R, N) float64 = min(closest (R, N),
  // squared distance to the candidate (clamped at 0)).
  void (*candidates)(const Plan& plan, const RunSet& runs, const at::Tensor& xc,
                     const at::Tensor& xnorm, const at::Tensor& cols,
                     const at::Tensor& cnorm, int64_t trials, const at::Tensor& closest,
                     at::Tensor& out);

  // M-step sums: on return, sums (G * R, k, D) float64 holds the sum of the
  // points of every cluster of labels. On entry it holds the sums for
  // prev_labels (R, N) int32 (-1: the point is in no cluster), so a kernel may
  // update them with the points whose label changed instead of summing anew.
  void (*cluster_sums)(const Plan& plan, const RunSet& runs, const at::Tensor& xc,
                       const at::Tensor& labels, const at::Tensor& prev_labels,
                       at::Tensor& sums);

  // New centres: sums / counts rounded to the dtype of centers (G * R, k, D);
  // an empty cluster gets the new centre of the largest one (lowest index on
  // ties). Writes centers, cnorm (G * R, k) float64 and shift (G * R) float64,
  // the summed squared centre shift.
  void (*finalize)(const RunSet& runs, const at::Tensor& sums, const at::Tensor& counts,
                   at::Tensor& centers, at::Tensor& cnorm, at::Tensor& shift);

  // dist (R, N) float64: squared distance of each point to its centre,
  // computed directly as sum_d (x_d - c_d)^2 (for the inertia).
  void (*point_dist)(const Plan& plan, const RunSet& runs, const at::Tensor& xc,
                     const at::Tensor& centers, const at::Tensor& labels, at::Tensor& dist);
};

// The operator: (labels (N,) int64, centroids (G, k, D) in the dtype of x,
// inertia (G,) float64, n_iter (G,) int64). See wsss_fast/ops/kmeans.py.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> run(
    const Kernels& kernels, const at::Tensor& x, const at::Tensor& groups, int64_t num_groups,
    int64_t k, int64_t n_init, int64_t max_iter, double tol, int64_t seed,
    const std::string& init);

// The counter-based random numbers of wsss_fast/reference/kmeans.py.
double uniform(uint64_t seed, int64_t group, int64_t run, int64_t draw);

}  // namespace kmeans
}  // namespace wsss_fast
