// Batched K-means, CUDA launchers: raw pointers in, no torch types, so that
// kmeans_kernels.cu compiles with the CUDA headers alone. The torch-facing
// side is kmeans_cuda.cpp; the algorithm and the meaning of every array are
// in csrc/kmeans_driver.h (Plan, RunSet, Kernels).
//
// Common arrays: x (n, d) centred points sorted by group (float32/float64),
// xnorm (n) their squared norms; tiles / segments (count, 3) int64 of
// (group, begin, end) rows; slot_off (groups + 1) and runs (slots) int64 of a
// RunSet; labels (n_init, n) int32. Every launcher returns the first CUDA
// error (or cudaSuccess) and runs on `stream`.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace wsss_fast {
namespace cuda {
namespace kmeans {

enum class DType { kFloat32, kFloat64 };

// Rows per tile of the tile kernels (assign, candidates, point_dist).
constexpr int64_t kTileRows = 64;

// The points of a tile set and the columns they are compared with: each slot
// owns `width` consecutive rows of cols (d features, dtype of x) and of
// cnorm (their squared norms).
struct TileProblem {
  DType dtype;
  const void* x;
  const double* xnorm;
  int64_t n, d;
  const int64_t* tiles;
  int64_t n_tiles;
  const int64_t* slot_off;
  const int64_t* runs;
  int64_t n_init;
  const void* cols;
  const double* cnorm;
  int64_t width;
};

// E-step (width = k): labels, mind (n_init, n) float64, and += to counts
// (runs, k) and changed (runs) int64.
cudaError_t assign(const TileProblem& p, int32_t* labels, double* mind, int64_t* counts,
                   int64_t* changed, cudaStream_t stream);

// k-means++ candidates (width = trials): out (trials, n_init, n) float64 =
// min(closest (n_init, n), squared distance to the candidate).
cudaError_t candidates(const TileProblem& p, const double* closest, double* out,
                       cudaStream_t stream);

// Cluster sums (runs, k, d) float64 of the runs of the RunSet, from scratch:
// per-segment sums into `partial` (n_segments, n_init, k, d) float64, then a
// sum over each group's segments in order.
cudaError_t cluster_sums(DType dtype, const void* x, int64_t n, int64_t d,
                         const int64_t* segments, int64_t n_segments, int64_t max_segment_rows,
                         const int64_t* segment_off, const int64_t* slot_off,
                         const int64_t* runs, int64_t n_slots, int64_t n_init, int64_t k,
                         const int32_t* labels, double* partial, double* sums, int device,
                         cudaStream_t stream);

// New centres of the runs (see Kernels::finalize): centers (runs, k, d) in
// the dtype, cnorm (runs, k) and shift (runs) float64.
cudaError_t finalize(DType dtype, const int64_t* runs, int64_t n_slots, const double* sums,
                     const int64_t* counts, void* centers, double* cnorm, double* shift,
                     int64_t k, int64_t d, cudaStream_t stream);

// dist (n_init, n) float64: squared distance of each point to its centre,
// sum_d (x_d - c_d)^2 accumulated in float64.
cudaError_t point_dist(DType dtype, const void* x, int64_t n, int64_t d, const int64_t* tiles,
                       int64_t n_tiles, const int64_t* slot_off, const int64_t* runs,
                       int64_t n_init, int64_t k, const void* centers, const int32_t* labels,
                       double* dist, cudaStream_t stream);

}  // namespace kmeans
}  // namespace cuda
}  // namespace wsss_fast
