// Dense CRF, CUDA launchers: raw pointers in, no torch types, so that
// dense_crf_kernels.cu compiles with the CUDA headers alone. The torch-facing
// side is dense_crf_cuda.cpp. One call of the operator runs, for each group of
// images, three phases; the caller allocates each phase's workspace once the
// sizes are known (the number of lattice points M only after phase 1):
//  1. crf_table_build: the simplex of every pixel and a hash table of the
//     lattice points of each image, for one lattice (Gaussian or bilateral);
//     writes M, the number of points over the group.
//  2. crf_lattice_build: rows for the points, the splat entries sorted by row,
//     the blur neighbours.
//  3. crf_mean_field: the normalisation of both lattices and the iterations.
// Images are B of H x W = N pixels; a lattice with d features has E = B N
// (d + 1) entries (pixel corners); groups are cut with crf_max_group so that
// every index fits in int32.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "../dense_crf_lattice.h"

namespace wsss_fast {
namespace cuda {

// The most images of N pixels with K labels that one group may hold (the
// int32 bounds above, and about 2^24 entries when the images are small); 0
// when one image is already too large.
int64_t crf_max_group(int64_t N, int64_t K);

// Phase 1. Bytes of its workspace, which phase 2 reads.
size_t crf_table_bytes(int64_t B, int64_t N, int d);
// image: (B, 3, H, W) uint8. points: 2 device int64s, set to (M, 0), or
// (M, 1) if a corner fell outside the spec's box (an internal error).
cudaError_t crf_table_build(const crf::LatticeSpec& spec, const uint8_t* image, int64_t B,
                            int64_t H, int64_t W, void* table, int64_t* points,
                            cudaStream_t stream);

// Phase 2. Bytes of the lattice workspace (M points), which phase 3 reads.
size_t crf_lattice_bytes(int64_t B, int64_t N, int d, int64_t M);
cudaError_t crf_lattice_build(const crf::LatticeSpec& spec, int64_t B, int64_t N, int64_t M,
                              const void* table, void* lattice, cudaStream_t stream);

// Phase 3. Bytes of its workspace for K labels and the two lattices' M.
size_t crf_mean_field_bytes(int64_t B, int64_t N, int64_t K, const int64_t* M);
// probs: (B, K, H, W) float32; num_labels: (B,) int64 or null; out: (B, K,
// H, W) float32, fully written. specs, M and lattices: Gaussian then
// bilateral; compat: their Potts weights.
cudaError_t crf_mean_field(const float* probs, const int64_t* num_labels, float* out, int64_t B,
                           int64_t N, int64_t K, int64_t iterations, const float* compat,
                           const crf::LatticeSpec* specs, const int64_t* M,
                           void* const* lattices, void* workspace, cudaStream_t stream);

}  // namespace cuda
}  // namespace wsss_fast
