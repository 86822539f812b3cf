// Batched K-means, torch-facing CUDA side: the Kernels of csrc/kmeans_driver.h
// on top of the launchers of kmeans_kernels.cu, and the operator's CUDA
// registration. The driver (csrc/cpu/kmeans_driver.cpp) is shared with the CPU.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "../kmeans_driver.h"
#include "kmeans_kernels.h"

namespace wsss_fast {
namespace {

namespace ck = cuda::kmeans;
using kmeans::Plan;
using kmeans::RunSet;

void check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "kmeans: CUDA kernel ", what,
              " failed: ", cudaGetErrorString(err));
}

ck::DType dtype_of(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? ck::DType::kFloat32 : ck::DType::kFloat64;
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

int64_t cuda_tile_rows(int64_t /*n*/, int64_t /*d*/, int64_t /*elem_size*/) {
  return ck::kTileRows;
}

// At most 8192 rows (the counting sort lives in shared memory), at least
// 1024, and about 64 segments plus one per group.
int64_t cuda_segment_rows(int64_t n) {
  return std::clamp<int64_t>((n + 63) / 64, 1024, 8192);
}

ck::TileProblem tile_problem(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                             const at::Tensor& xnorm, const at::Tensor& cols,
                             const at::Tensor& cnorm, int64_t width) {
  return {dtype_of(xc),
          xc.const_data_ptr(),
          xnorm.const_data_ptr<double>(),
          plan.n,
          plan.d,
          plan.tiles_dev.const_data_ptr<int64_t>(),
          plan.n_tiles(),
          rs.slot_off_dev.const_data_ptr<int64_t>(),
          rs.runs_dev.const_data_ptr<int64_t>(),
          plan.n_init,
          cols.const_data_ptr(),
          cnorm.const_data_ptr<double>(),
          width};
}

void assign(const Plan& plan, const RunSet& rs, const at::Tensor& xc, const at::Tensor& xnorm,
            const at::Tensor& cols, const at::Tensor& cnorm, at::Tensor& labels,
            at::Tensor& mind, at::Tensor& counts, at::Tensor& changed) {
  if (rs.size() == 0) return;
  check(ck::assign(tile_problem(plan, rs, xc, xnorm, cols, cnorm, plan.k),
                   labels.mutable_data_ptr<int32_t>(), mind.mutable_data_ptr<double>(),
                   counts.mutable_data_ptr<int64_t>(), changed.mutable_data_ptr<int64_t>(),
                   stream()),
        "assign");
}

void candidates(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                const at::Tensor& xnorm, const at::Tensor& cols, const at::Tensor& cnorm,
                int64_t trials, const at::Tensor& closest, at::Tensor& out) {
  if (rs.size() == 0) return;
  check(ck::candidates(tile_problem(plan, rs, xc, xnorm, cols, cnorm, trials),
                       closest.const_data_ptr<double>(), out.mutable_data_ptr<double>(),
                       stream()),
        "candidates");
}

// Recomputes the sums from scratch (prev_labels unused: the interface allows it).
void cluster_sums(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                  const at::Tensor& labels, const at::Tensor& /*prev_labels*/,
                  at::Tensor& sums) {
  if (rs.size() == 0) return;
  int64_t max_rows = 0;
  for (int64_t s = 0; s < plan.n_segments(); ++s) {
    max_rows = std::max(max_rows, plan.segments[3 * s + 2] - plan.segments[3 * s + 1]);
  }
  auto partial = at::empty({plan.n_segments(), plan.n_init, plan.k, plan.d},
                           sums.options());
  check(ck::cluster_sums(dtype_of(xc), xc.const_data_ptr(), plan.n, plan.d,
                         plan.segments_dev.const_data_ptr<int64_t>(), plan.n_segments(),
                         max_rows, plan.segment_off_dev.const_data_ptr<int64_t>(),
                         rs.slot_off_dev.const_data_ptr<int64_t>(),
                         rs.runs_dev.const_data_ptr<int64_t>(), rs.size(), plan.n_init, plan.k,
                         labels.const_data_ptr<int32_t>(), partial.mutable_data_ptr<double>(),
                         sums.mutable_data_ptr<double>(), xc.get_device(), stream()),
        "cluster_sums");
}

void finalize(const RunSet& rs, const at::Tensor& sums, const at::Tensor& counts,
              at::Tensor& centers, at::Tensor& cnorm, at::Tensor& shift) {
  if (rs.size() == 0) return;
  check(ck::finalize(dtype_of(centers), rs.runs_dev.const_data_ptr<int64_t>(), rs.size(),
                     sums.const_data_ptr<double>(), counts.const_data_ptr<int64_t>(),
                     centers.mutable_data_ptr(), cnorm.mutable_data_ptr<double>(),
                     shift.mutable_data_ptr<double>(), centers.size(1), centers.size(2),
                     stream()),
        "finalize");
}

void point_dist(const Plan& plan, const RunSet& rs, const at::Tensor& xc,
                const at::Tensor& centers, const at::Tensor& labels, at::Tensor& dist) {
  if (rs.size() == 0) return;
  check(ck::point_dist(dtype_of(xc), xc.const_data_ptr(), plan.n, plan.d,
                       plan.tiles_dev.const_data_ptr<int64_t>(), plan.n_tiles(),
                       rs.slot_off_dev.const_data_ptr<int64_t>(),
                       rs.runs_dev.const_data_ptr<int64_t>(), plan.n_init, plan.k,
                       centers.const_data_ptr(), labels.const_data_ptr<int32_t>(),
                       dist.mutable_data_ptr<double>(), stream()),
        "point_dist");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> kmeans_cuda(
    const at::Tensor& x, const at::Tensor& groups, int64_t num_groups, int64_t k,
    int64_t n_init, int64_t max_iter, double tol, int64_t seed, c10::string_view init) {
  TORCH_CHECK(n_init <= 65535, "kmeans: n_init must be <= 65535 on CUDA, got ", n_init);
  // The counting sort of the cluster sums keeps 2k + 1 ints in shared memory.
  TORCH_CHECK(k <= 16384, "kmeans: k must be <= 16384 on CUDA, got ", k);
  const c10::cuda::CUDAGuard guard(x.device());
  static const kmeans::Kernels kernels{cuda_tile_rows, cuda_segment_rows, assign, candidates,
                                       cluster_sums,   finalize,          point_dist};
  return kmeans::run(kernels, x, groups, num_groups, k, n_init, max_iter, tol, seed,
                     std::string(init));
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) { m.impl("kmeans", &kmeans_cuda); }

}  // namespace wsss_fast
