// DRS suppression, CUDA launchers: raw pointers in, no torch types, so that
// drs_kernels.cu compiles with the CUDA headers alone (see
// scripts/check_cuda_compile.py). The torch-facing side is drs_cuda.cpp.
//
// All tensors are contiguous (N, C, H, W) planes of `size` = H * W elements;
// `planes` = N * C. `gate` is null for a constant gate `delta`; `grad_gate`
// may be null when no gate gradient is wanted.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace wsss_fast {
namespace cuda {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// Bytes of device scratch memory drs_forward / drs_backward need.
size_t drs_workspace_bytes(int64_t planes, int64_t size, bool backward);

// out = min(relu(x), amax(relu(x)) * gate), per plane.
cudaError_t drs_forward(DType dtype, const void* x, const void* gate, float delta,
                        void* out, int64_t planes, int64_t size, void* workspace,
                        int device, cudaStream_t stream);

// grad_x (and grad_gate unless null) of drs_forward.
cudaError_t drs_backward(DType dtype, const void* grad_out, const void* x,
                         const void* gate, float delta, void* grad_x, void* grad_gate,
                         int64_t planes, int64_t size, void* workspace, int device,
                         cudaStream_t stream);

}  // namespace cuda
}  // namespace wsss_fast
