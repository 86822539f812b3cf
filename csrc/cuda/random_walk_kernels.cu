// Affinity and random walk, CUDA kernels (device code; CUDA headers only).
//
// affinity: one thread per output element, a loop over the D channels (the
//   features of an image stay in L2); backward gathers, per (b, d, y, x), the
//   gradients of the pairs the pixel is the source and the target of, so no
//   atomics; sign(0) = 0 like torch.abs. Offsets come from csrc/pairs.h into a
//   shared-memory table at block start.
//
// random walk: n_steps gather steps of the (2P + 1)-point stencil on padded
//   ping-pong state buffers in global memory (L2-resident: 2 x C x N floats per
//   image), as ONE persistent cooperative launch with a grid-wide barrier
//   between steps (cooperative_groups::this_grid().sync(); no -rdc needed since
//   CUDA 11). Each block owns a fixed range of pixels for all steps; when the
//   grid's share of the weights fits (total (2P + 1) x B x N floats within the
//   co-resident shared memory, e.g. 3.2 MB at IRN's 125 x 94), each block
//   stages its pixels' weights in shared memory once and keeps them on-chip
//   for every step; otherwise they are read from global memory (L2). Work
//   items are (pixel, group of 4 channels): a weight read serves 4 channels.
//   The last step writes the unpadded output. On a device without cooperative
//   launch the same kernel runs one step per launch.
// Weights are computed once in double (csrc/pairs.h) and stored as float;
// steps accumulate in float.

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../pairs.h"
#include "random_walk_kernels.h"

namespace wsss_fast {
namespace cuda {
namespace {

namespace cg = cooperative_groups;

constexpr int kThreads = 256;
constexpr int kGroup = 4;  // channels per work item of the walk
constexpr int64_t kMaxBlocks = 65535LL * 16;

unsigned blocks_for(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? (b > 0 ? b : 1) : kMaxBlocks);
}

// Thread 0 writes the forward offsets of the radius into dy/dx; all wait.
__device__ void load_offsets(int radius, signed char* dy, signed char* dx) {
  if (threadIdx.x == 0) {
    for_each_pair_offset(radius, [&](int k, int a, int b) {
      dy[k] = static_cast<signed char>(a);
      dx[k] = static_cast<signed char>(b);
    });
  }
  __syncthreads();
}

__device__ __forceinline__ float sign(float v) {
  return static_cast<float>((v > 0.f) - (v < 0.f));
}

// ------------------------------------------------------------------ affinity

__global__ void affinity_forward_kernel(const float* __restrict__ f, float* __restrict__ out,
                                        int B, int D, int H, int W, int radius, int P) {
  __shared__ signed char sdy[kMaxPairs], sdx[kMaxPairs];
  load_offsets(radius, sdy, sdx);
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t total = static_cast<int64_t>(B) * P * plane;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int x = static_cast<int>(i % W), y = static_cast<int>((i / W) % H);
    const int k = static_cast<int>((i / plane) % P);
    const int64_t b = i / (plane * P);
    const int ty = y + sdy[k], tx = x + sdx[k];
    float v = 0.f;
    if (ty < H && tx >= 0 && tx < W) {
      const float* fs = f + b * D * plane + static_cast<int64_t>(y) * W + x;
      const float* ft = f + b * D * plane + static_cast<int64_t>(ty) * W + tx;
      float sum = 0.f;
      for (int d = 0; d < D; ++d) sum += fabsf(fs[d * plane] - ft[d * plane]);
      v = expf(-(sum / static_cast<float>(D)));
    }
    out[i] = v;
  }
}

__global__ void affinity_backward_kernel(const float* __restrict__ grad_out,
                                         const float* __restrict__ f,
                                         const float* __restrict__ a,
                                         float* __restrict__ grad_f, int B, int D, int H, int W,
                                         int radius, int P) {
  __shared__ signed char sdy[kMaxPairs], sdx[kMaxPairs];
  load_offsets(radius, sdy, sdx);
  const int64_t plane = static_cast<int64_t>(H) * W;
  const int64_t total = static_cast<int64_t>(B) * D * plane;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const int x = static_cast<int>(i % W), y = static_cast<int>((i / W) % H);
    const int64_t b = i / (plane * D);
    const float* fd = f + (i / plane) * plane;
    const float* ab = a + b * P * plane;
    const float* gb = grad_out + b * P * plane;
    const float f0 = fd[static_cast<int64_t>(y) * W + x];
    float acc = 0.f;
    for (int k = 0; k < P; ++k) {
      const int dy = sdy[k], dx = sdx[k];
      if (y + dy < H && x + dx >= 0 && x + dx < W) {  // (y, x) is the source of pair k
        const int64_t s = k * plane + static_cast<int64_t>(y) * W + x;
        acc += ab[s] * gb[s] * -1.f * sign(f0 - fd[static_cast<int64_t>(y + dy) * W + x + dx]);
      }
      if (y - dy >= 0 && x - dx >= 0 && x - dx < W) {  // the target of pair k from (y-dy, x-dx)
        const int64_t src = static_cast<int64_t>(y - dy) * W + x - dx;
        acc += ab[k * plane + src] * gb[k * plane + src] * sign(fd[src] - f0);
      }
    }
    grad_f[i] = acc / static_cast<float>(D);
  }
}

// --------------------------------------------------------------- random walk

struct Walk {
  const float* weights;  // (B, S, N)
  float* state[2];       // (B, C, Hp, Wp), zero border of pad
  float* out;            // (B, C, H, W)
  int B, C, H, W, Hp, Wp, pad, radius, P, S;
  int64_t pixels;        // B * H * W
  int px_per_block;
  int64_t n_steps;
  bool smem_weights;     // weights staged as [S][px_per_block] in shared memory
};

__global__ void walk_weights_kernel(const float* __restrict__ aff, float* __restrict__ w, int B,
                                    int H, int W, int radius, int P, double beta, bool psa) {
  const int64_t N = static_cast<int64_t>(H) * W;
  const int S = 2 * P + 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < B * N;
       i += stride) {
    const int64_t b = i / N, p = i % N;
    transition_weights(aff + b * P * N, H, W, static_cast<int>(p / W), static_cast<int>(p % W),
                       radius, P, beta, psa, w + b * S * N + p, N);
  }
}

__global__ void walk_copy_in_kernel(const float* __restrict__ cam, float* __restrict__ state,
                                    int64_t planes, int H, int W, int Hp, int Wp, int pad) {
  const int64_t N = static_cast<int64_t>(H) * W;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < planes * N;
       i += stride) {
    const int64_t plane = i / N, p = i % N;
    const int64_t y = p / W, x = p % W;
    state[(plane * Hp + y + pad) * Wp + x + pad] = cam[i];
  }
}

// Steps first_step .. first_step + count - 1; a grid-wide barrier between them
// (count > 1 only under a cooperative launch).
__global__ void __launch_bounds__(kThreads) walk_kernel(Walk a, int64_t first_step, int count) {
  extern __shared__ float smem_w[];
  __shared__ int soff[kMaxSlots];
  if (threadIdx.x == 0) {
    soff[0] = 0;
    for_each_pair_offset(a.radius, [&](int k, int dy, int dx) {
      soff[1 + k] = dy * a.Wp + dx;
      soff[1 + a.P + k] = -(dy * a.Wp + dx);
    });
  }
  const int64_t N = static_cast<int64_t>(a.H) * a.W;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * a.px_per_block;
  if (a.smem_weights) {
    for (int i = threadIdx.x; i < a.S * a.px_per_block; i += blockDim.x) {
      const int s = i / a.px_per_block;
      const int64_t q = q0 + i % a.px_per_block;
      if (q < a.pixels) smem_w[i] = a.weights[((q / N) * a.S + s) * N + q % N];
    }
  }
  __syncthreads();

  const int groups = (a.C + kGroup - 1) / kGroup;
  const int items = a.px_per_block * groups;
  const int64_t plane = static_cast<int64_t>(a.Hp) * a.Wp;
  for (int i = 0; i < count; ++i) {
    if (i > 0) cg::this_grid().sync();
    const int64_t t = first_step + i;
    const bool even = t % 2 == 0;
    const float* src = even ? a.state[0] : a.state[1];
    float* dst = even ? a.state[1] : a.state[0];
    const bool last = t == a.n_steps - 1;
    for (int item = threadIdx.x; item < items; item += blockDim.x) {
      const int local = item % a.px_per_block;
      const int64_t q = q0 + local;
      if (q >= a.pixels) continue;
      const int64_t b = q / N, p = q % N;
      const int c0 = (item / a.px_per_block) * kGroup;
      const int nc = min(kGroup, a.C - c0);
      const float* wp = a.smem_weights ? smem_w + local : a.weights + b * a.S * N + p;
      const int64_t wstride = a.smem_weights ? a.px_per_block : N;
      const int64_t center = (p / a.W + a.pad) * a.Wp + p % a.W + a.pad;
      const float* s0 = src + (b * a.C + c0) * plane + center;
      float acc[kGroup] = {};
      for (int s = 0; s < a.S; ++s) {
        const float ws = wp[s * wstride];
        const float* ss = s0 + soff[s];
#pragma unroll
        for (int c = 0; c < kGroup; ++c) {
          if (c < nc) acc[c] += ws * ss[c * plane];
        }
      }
#pragma unroll
      for (int c = 0; c < kGroup; ++c) {
        if (c >= nc) continue;
        if (last) {
          a.out[(b * a.C + c0 + c) * N + p] = acc[c];
        } else {
          dst[(b * a.C + c0 + c) * plane + center] = acc[c];
        }
      }
    }
  }
}

struct WalkPlan {
  int grid = 0;
  int px_per_block = 0;
  bool smem = false;
  size_t smem_bytes = 0;
};

// Blocks of walk_kernel that fit on the device at once with `smem` bytes each.
cudaError_t co_resident_blocks(size_t smem, int sms, int* blocks) {
  int per_sm = 0;
  const cudaError_t err =
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, walk_kernel, kThreads, smem);
  *blocks = per_sm * sms;
  return err;
}

// Grid size, pixels per block and the weights' home. Aims at about one work
// item per thread, never more blocks than fit at once (cooperative launch),
// and grows the grid when that lets the weights live in shared memory.
cudaError_t plan_walk(const Walk& a, int device, WalkPlan* plan) {
  cudaError_t err;
  int sms = 0, optin = 0;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess)
    return err;
  if ((err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) !=
      cudaSuccess)
    return err;
  cudaFuncAttributes attr;
  if ((err = cudaFuncGetAttributes(&attr, walk_kernel)) != cudaSuccess) return err;
  if (static_cast<size_t>(optin) <= attr.sharedSizeBytes) return cudaErrorInvalidConfiguration;
  const size_t max_dynamic = static_cast<size_t>(optin) - attr.sharedSizeBytes;
  if ((err = cudaFuncSetAttribute(walk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(max_dynamic))) != cudaSuccess)
    return err;
  int cap = 0;
  if ((err = co_resident_blocks(0, sms, &cap)) != cudaSuccess) return err;
  if (cap < 1) return cudaErrorInvalidConfiguration;
  const int64_t groups = (a.C + kGroup - 1) / kGroup;
  const int64_t wanted = (a.pixels * groups + kThreads - 1) / kThreads;
  const auto fit = [&](int64_t grid, WalkPlan* p) {
    grid = grid < 1 ? 1 : (grid > a.pixels ? a.pixels : grid);
    p->px_per_block = static_cast<int>((a.pixels + grid - 1) / grid);
    p->grid = static_cast<int>((a.pixels + p->px_per_block - 1) / p->px_per_block);
  };
  for (int64_t grid = wanted < cap ? wanted : cap;; grid *= 2) {
    WalkPlan p;
    fit(grid < cap ? grid : cap, &p);
    const size_t bytes = static_cast<size_t>(p.px_per_block) * a.S * sizeof(float);
    if (bytes <= max_dynamic) {
      int fits = 0;
      if ((err = co_resident_blocks(bytes, sms, &fits)) != cudaSuccess) return err;
      if (p.grid <= fits) {
        p.smem = true;
        p.smem_bytes = bytes;
        *plan = p;
        return cudaSuccess;
      }
    }
    if (grid >= cap || p.grid >= a.pixels) break;
  }
  fit(wanted < cap ? wanted : cap, plan);
  plan->smem = false;
  plan->smem_bytes = 0;
  return cudaSuccess;
}

}  // namespace

cudaError_t affinity_forward(const float* features, float* out, int64_t B, int64_t D, int64_t H,
                             int64_t W, int radius, cudaStream_t stream) {
  const int P = pair_count(radius);
  affinity_forward_kernel<<<blocks_for(B * P * H * W), kThreads, 0, stream>>>(
      features, out, static_cast<int>(B), static_cast<int>(D), static_cast<int>(H),
      static_cast<int>(W), radius, P);
  return cudaGetLastError();
}

cudaError_t affinity_backward(const float* grad_out, const float* features, const float* out,
                              float* grad_features, int64_t B, int64_t D, int64_t H, int64_t W,
                              int radius, cudaStream_t stream) {
  const int P = pair_count(radius);
  affinity_backward_kernel<<<blocks_for(B * D * H * W), kThreads, 0, stream>>>(
      grad_out, features, out, grad_features, static_cast<int>(B), static_cast<int>(D),
      static_cast<int>(H), static_cast<int>(W), radius, P);
  return cudaGetLastError();
}

size_t random_walk_workspace_bytes(int64_t B, int64_t C, int64_t H, int64_t W, int radius) {
  const int64_t S = 2 * pair_count(radius) + 1, m = radius - 1;
  return static_cast<size_t>(B * S * H * W + 2 * B * C * (H + 2 * m) * (W + 2 * m)) *
         sizeof(float);
}

cudaError_t random_walk(const float* cam, const float* aff, float* out, int64_t B, int64_t C,
                        int64_t H, int64_t W, int radius, double beta, int64_t n_steps,
                        bool psa_border, void* workspace, int device, cudaStream_t stream) {
  Walk a;
  a.B = static_cast<int>(B);
  a.C = static_cast<int>(C);
  a.H = static_cast<int>(H);
  a.W = static_cast<int>(W);
  a.radius = radius;
  a.P = pair_count(radius);
  a.S = 2 * a.P + 1;
  a.pad = radius - 1;
  a.Hp = a.H + 2 * a.pad;
  a.Wp = a.W + 2 * a.pad;
  a.pixels = B * H * W;
  a.n_steps = n_steps;
  float* weights = static_cast<float*>(workspace);
  a.weights = weights;
  a.state[0] = weights + B * a.S * H * W;
  a.state[1] = a.state[0] + B * C * a.Hp * a.Wp;
  a.out = out;

  cudaError_t err;
  if ((err = cudaMemsetAsync(a.state[0], 0, 2 * B * C * a.Hp * a.Wp * sizeof(float), stream)) !=
      cudaSuccess)
    return err;
  walk_weights_kernel<<<blocks_for(B * H * W), kThreads, 0, stream>>>(aff, weights, a.B, a.H, a.W,
                                                                      radius, a.P, beta,
                                                                      psa_border);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  walk_copy_in_kernel<<<blocks_for(B * C * H * W), kThreads, 0, stream>>>(
      cam, a.state[0], B * C, a.H, a.W, a.Hp, a.Wp, a.pad);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  WalkPlan plan;
  if ((err = plan_walk(a, device, &plan)) != cudaSuccess) return err;
  a.px_per_block = plan.px_per_block;
  a.smem_weights = plan.smem;
  int cooperative = 0;
  if ((err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device)) !=
      cudaSuccess)
    return err;
  if (cooperative && n_steps <= INT32_MAX) {
    int64_t first = 0;
    int count = static_cast<int>(n_steps);
    void* args[] = {&a, &first, &count};
    return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(walk_kernel),
                                       dim3(plan.grid), dim3(kThreads), args, plan.smem_bytes,
                                       stream);
  }
  for (int64_t t = 0; t < n_steps; ++t) {
    walk_kernel<<<plan.grid, kThreads, plan.smem_bytes, stream>>>(a, t, 1);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace wsss_fast
