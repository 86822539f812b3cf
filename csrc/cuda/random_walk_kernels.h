// Affinity and random walk, CUDA launchers: raw pointers in, no torch types, so
// that random_walk_kernels.cu compiles with the CUDA headers alone. The
// torch-facing side is random_walk_cuda.cpp. All tensors are contiguous
// float32; H * W and the padded state fit in int32 (checked by the caller).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace wsss_fast {
namespace cuda {

// features (B, D, H, W) -> out (B, P, H, W): exp(-mean_d |f(src) - f(tgt)|).
cudaError_t affinity_forward(const float* features, float* out, int64_t B, int64_t D, int64_t H,
                             int64_t W, int radius, cudaStream_t stream);

// grad_features (B, D, H, W) of affinity_forward; out is its output.
cudaError_t affinity_backward(const float* grad_out, const float* features, const float* out,
                              float* grad_features, int64_t B, int64_t D, int64_t H, int64_t W,
                              int radius, cudaStream_t stream);

// Bytes of device scratch memory random_walk needs: the (B, 2P + 1, H, W)
// weights and two padded (B, C, H + 2m, W + 2m) state buffers, m = radius - 1.
size_t random_walk_workspace_bytes(int64_t B, int64_t C, int64_t H, int64_t W, int radius);

// out (B, C, H, W) = cam @ T^n_steps per image, n_steps >= 1; aff (B, P, H, W).
cudaError_t random_walk(const float* cam, const float* aff, float* out, int64_t B, int64_t C,
                        int64_t H, int64_t W, int radius, double beta, int64_t n_steps,
                        bool psa_border, void* workspace, int device, cudaStream_t stream);

}  // namespace cuda
}  // namespace wsss_fast
