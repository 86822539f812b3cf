// Dense CRF, torch-facing CUDA side: argument checks, the groups of images,
// the workspaces of the three phases of dense_crf_kernels.cu (the second sized
// by the number of lattice points, read back after the first: one device sync
// per group) and the current stream. float32 only.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../dense_crf_checks.h"
#include "dense_crf_kernels.h"

namespace wsss_fast {
namespace {

void check_launch(cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, "dense_crf: CUDA kernel launch failed: ",
              cudaGetErrorString(err));
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

at::Tensor dense_crf_cuda(const at::Tensor& image, const at::Tensor& probs,
                          const std::optional<at::Tensor>& num_labels, const CrfParams& prm) {
  const int64_t B = probs.size(0), K = probs.size(1), H = probs.size(2), W = probs.size(3);
  const int64_t N = H * W;
  const c10::cuda::CUDAGuard guard(probs.device());
  auto out = at::empty(probs.sizes(), probs.options());  // fully written by the kernels
  if (B == 0) return out;
  crf::LatticeSpec specs[2];
  lattice_specs(prm, H, W, specs, "dense_crf");
  const int64_t group = cuda::crf_max_group(N, K);
  TORCH_CHECK(group >= 1, "dense_crf: an image of ", H, " x ", W, " pixels with K = ", K,
              " labels is too large for the CUDA kernel (it needs H * W <= 11184810 and "
              "H * W * K <= 178956970)");
  const auto ic = image.contiguous();
  const auto pc = probs.contiguous();
  const std::optional<at::Tensor> nc =
      num_labels.has_value() ? std::optional<at::Tensor>(num_labels->contiguous()) : std::nullopt;
  const float compat[2] = {static_cast<float>(prm.gaussian_compat),
                           static_cast<float>(prm.bilateral_compat)};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t b0 = 0; b0 < B; b0 += group) {
    const int64_t nb = std::min(group, B - b0);
    at::Tensor tables[2];
    auto points = at::empty({2, 2}, probs.options().dtype(at::kLong));
    for (int f = 0; f < 2; ++f) {
      tables[f] = workspace(cuda::crf_table_bytes(nb, N, specs[f].d), probs);
      check_launch(cuda::crf_table_build(specs[f], ic.const_data_ptr<uint8_t>() + b0 * 3 * N, nb,
                                         H, W, tables[f].mutable_data_ptr(),
                                         points.mutable_data_ptr<int64_t>() + 2 * f, stream));
    }
    const auto counts = points.cpu();
    const int64_t* c = counts.const_data_ptr<int64_t>();
    TORCH_CHECK(c[1] == 0 && c[3] == 0,
                "dense_crf: internal error: a lattice point outside its box");
    const int64_t M[2] = {c[0], c[2]};
    at::Tensor lattices[2];
    void* lattice_ptrs[2];
    for (int f = 0; f < 2; ++f) {
      lattices[f] = workspace(cuda::crf_lattice_bytes(nb, N, specs[f].d, M[f]), probs);
      lattice_ptrs[f] = lattices[f].mutable_data_ptr();
      check_launch(cuda::crf_lattice_build(specs[f], nb, N, M[f], tables[f].const_data_ptr(),
                                           lattice_ptrs[f], stream));
    }
    tables[0] = tables[1] = at::Tensor();  // the hash tables are no longer needed
    auto ws = workspace(cuda::crf_mean_field_bytes(nb, N, K, M), probs);
    check_launch(cuda::crf_mean_field(
        pc.const_data_ptr<float>() + b0 * K * N,
        nc.has_value() ? nc->const_data_ptr<int64_t>() + b0 : nullptr,
        out.mutable_data_ptr<float>() + b0 * K * N, nb, N, K, prm.iterations, compat, specs, M,
        lattice_ptrs, ws.mutable_data_ptr(), stream));
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CUDA, m) { m.impl("dense_crf", &dense_crf_op<dense_crf_cuda>); }

}  // namespace wsss_fast
