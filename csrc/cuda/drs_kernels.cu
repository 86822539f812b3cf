// DRS suppression, CUDA kernels (device code; CUDA headers only).
//
// Two strategies, chosen per call by the plane's size in bytes:
//  * plane kernels: one block per (n, c) plane, the plane staged in shared
//    memory while its max is reduced, so x is read from global memory once.
//    Forward reads x and writes out; backward reads x and grad_out and writes
//    grad_x: the minimum traffic. Used while a plane fits in the shared memory
//    of one block (fp32 up to 161 x 161 on sm_80/sm_90, half up to ~230 x 230
//    on sm_80 and 321 x 321 on sm_90).
//  * chunk kernels, for larger planes: every plane is cut into chunks of one
//    block each; a first launch reduces the plane max with an atomic max on the
//    float's bits (relu values are >= 0, so integer order is float order), a
//    second launch applies the suppression (forward) or the gradient (backward,
//    with per-block partial sums and a third, per-plane, deterministic launch
//    that sums them). The second launch walks the blocks in reverse order, so
//    the planes the first launch read last are still in L2.
// Arithmetic is in float; the threshold and the gradients of the max and the
// gate are rounded to the storage type at the points where the reference
// composition rounds them.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "drs_kernels.h"

namespace wsss_fast {
namespace cuda {
namespace {

constexpr int kChunkThreads = 256;
constexpr int64_t kChunkItems = 2048;  // elements per chunk block
constexpr int64_t kMaxChunksPerPlane = 65535;

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Rounds a float through the storage type T.
template <typename T>
__device__ __forceinline__ float round_to(float v) {
  return to_float<T>(from_float<T>(v));
}

// max that propagates NaN from either side.
__device__ __forceinline__ float nan_max(float a, float b) {
  return (a > b || a != a) ? a : b;
}

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return nan_max(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MinIndexOp {
  __device__ __forceinline__ int operator()(int a, int b) const { return min(a, b); }
};

template <typename V, typename Op>
__device__ __forceinline__ V warp_reduce(V v, Op op) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Block-wide reduction; every thread gets the result. `scratch` holds 32
// values; blockDim.x is a multiple of 32; `identity` is op's neutral element.
template <typename V, typename Op>
__device__ __forceinline__ V block_reduce(V v, V* scratch, Op op, V identity) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : identity;
  return warp_reduce(v, op);
}

template <typename T>
__device__ __forceinline__ float gate_value(const T* gate, int64_t p, float delta) {
  return gate ? to_float<T>(gate[p]) : delta;
}

// Threshold t = M * g rounded to T, as the reference computes it in T.
template <typename T>
__device__ __forceinline__ float threshold(float m, float g) {
  return round_to<T>(m * g);
}

// Share of the min's gradient that goes to r (1 - share goes to t).
__device__ __forceinline__ float share_to_r(float r, float t) {
  return r < t ? 1.f : (r == t ? 0.5f : 0.f);
}

// The gradients of the max and the gate from the summed threshold gradient:
// adds the max's gradient to grad_x[k] (the first argmax) and writes the gate's.
template <typename T>
__device__ __forceinline__ void finish_plane(float grad_t, float m, float g, int k,
                                             T* grad_x_plane, T* grad_gate, int64_t p) {
  const float gt = round_to<T>(grad_t);
  if (m > 0.f && k != INT_MAX) {
    const float grad_m = round_to<T>(gt * g);
    grad_x_plane[k] = from_float<T>(to_float<T>(grad_x_plane[k]) + grad_m);
  }
  if (grad_gate) grad_gate[p] = from_float<T>(gt * m);
}

// ---------------------------------------------------------------- plane kernels

template <typename T>
__device__ __forceinline__ float stage_plane_max(const T* xp, T* tile, int64_t size,
                                                 float* scratch) {
  float m = 0.f;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
    const T v = xp[i];
    tile[i] = v;
    m = nan_max(m, to_float<T>(v));
  }
  return block_reduce(m, scratch, MaxOp(), 0.f);
}

template <typename T>
__global__ void drs_forward_plane_kernel(const T* __restrict__ x, const T* __restrict__ gate,
                                         float delta, T* __restrict__ out, int64_t size) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* tile = reinterpret_cast<T*>(smem);
  __shared__ float scratch[32];
  const int64_t p = blockIdx.x;
  const float m = stage_plane_max(x + p * size, tile, size, scratch);
  const float t = threshold<T>(m, gate_value(gate, p, delta));
  T* op = out + p * size;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
    const float r = fmaxf(to_float<T>(tile[i]), 0.f);
    op[i] = from_float<T>(r < t ? r : t);
  }
}

template <typename T>
__global__ void drs_backward_plane_kernel(const T* __restrict__ grad_out,
                                          const T* __restrict__ x, const T* __restrict__ gate,
                                          float delta, T* __restrict__ grad_x,
                                          T* __restrict__ grad_gate, int64_t size) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* tile = reinterpret_cast<T*>(smem);
  __shared__ float scratch[32];
  __shared__ int iscratch[32];
  const int64_t p = blockIdx.x;
  const float m = stage_plane_max(x + p * size, tile, size, scratch);
  const float g = gate_value(gate, p, delta);
  const float t = threshold<T>(m, g);
  const T* gp = grad_out + p * size;
  T* gxp = grad_x + p * size;
  float grad_t = 0.f;
  int k = INT_MAX;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
    const float v = to_float<T>(tile[i]);
    const float r = fmaxf(v, 0.f);
    const float gy = to_float<T>(gp[i]);
    const float s = share_to_r(r, t);
    gxp[i] = from_float<T>(v > 0.f ? gy * s : 0.f);
    grad_t += gy * (1.f - s);
    if (v == m && k == INT_MAX) k = static_cast<int>(i);
  }
  grad_t = block_reduce(grad_t, scratch, SumOp(), 0.f);
  k = block_reduce(k, iscratch, MinIndexOp(), INT_MAX);
  if (threadIdx.x == 0) finish_plane<T>(grad_t, m, g, k, gxp, grad_gate, p);
}

// ---------------------------------------------------------------- chunk kernels

struct ChunkGrid {
  int64_t chunks;     // blocks per plane
  int64_t chunk_len;  // elements per block
};

__host__ __device__ inline ChunkGrid chunk_grid(int64_t size) {
  int64_t len = kChunkItems;
  if ((size + len - 1) / len > kMaxChunksPerPlane) len = (size + kMaxChunksPerPlane - 1) / kMaxChunksPerPlane;
  return {(size + len - 1) / len, len};
}

// Max of relu(x) per plane into plane_max (as float bits; zero-initialised).
template <typename T>
__global__ void drs_plane_max_chunk_kernel(const T* __restrict__ x, int64_t size,
                                           ChunkGrid grid, int* __restrict__ plane_max) {
  __shared__ float scratch[32];
  const int64_t p = blockIdx.x / grid.chunks;
  const int64_t begin = (blockIdx.x % grid.chunks) * grid.chunk_len;
  const int64_t end = min(begin + grid.chunk_len, size);
  const T* xp = x + p * size;
  float m = 0.f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) m = nan_max(m, to_float<T>(xp[i]));
  m = block_reduce(m, scratch, MaxOp(), 0.f);
  if (threadIdx.x == 0) {
    // A canonical positive NaN sorts above +inf as an int.
    atomicMax(plane_max + p, m != m ? 0x7fffffff : __float_as_int(m));
  }
}

template <typename T>
__global__ void drs_forward_chunk_kernel(const T* __restrict__ x, const T* __restrict__ gate,
                                         float delta, T* __restrict__ out, int64_t size,
                                         ChunkGrid grid, const int* __restrict__ plane_max) {
  const int64_t b = static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x;  // reverse walk
  const int64_t p = b / grid.chunks;
  const int64_t begin = (b % grid.chunks) * grid.chunk_len;
  const int64_t end = min(begin + grid.chunk_len, size);
  const float t = threshold<T>(__int_as_float(plane_max[p]), gate_value(gate, p, delta));
  const T* xp = x + p * size;
  T* op = out + p * size;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float r = fmaxf(to_float<T>(xp[i]), 0.f);
    op[i] = from_float<T>(r < t ? r : t);
  }
}

template <typename T>
__global__ void drs_backward_chunk_kernel(const T* __restrict__ grad_out,
                                          const T* __restrict__ x, const T* __restrict__ gate,
                                          float delta, T* __restrict__ grad_x, int64_t size,
                                          ChunkGrid grid, const int* __restrict__ plane_max,
                                          int* __restrict__ first_argmax,
                                          float* __restrict__ partial_grad_t) {
  __shared__ float scratch[32];
  const int64_t b = static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x;  // reverse walk
  const int64_t p = b / grid.chunks;
  const int64_t begin = (b % grid.chunks) * grid.chunk_len;
  const int64_t end = min(begin + grid.chunk_len, size);
  const float m = __int_as_float(plane_max[p]);
  const float t = threshold<T>(m, gate_value(gate, p, delta));
  const T* xp = x + p * size;
  const T* gp = grad_out + p * size;
  T* gxp = grad_x + p * size;
  float grad_t = 0.f;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    const float v = to_float<T>(xp[i]);
    const float r = fmaxf(v, 0.f);
    const float gy = to_float<T>(gp[i]);
    const float s = share_to_r(r, t);
    gxp[i] = from_float<T>(v > 0.f ? gy * s : 0.f);
    grad_t += gy * (1.f - s);
    if (v == m && m > 0.f) atomicMin(first_argmax + p, static_cast<int>(i));
  }
  grad_t = block_reduce(grad_t, scratch, SumOp(), 0.f);
  if (threadIdx.x == 0) partial_grad_t[b] = grad_t;
}

// One thread per plane: sums the partials in a fixed order, then finish_plane.
template <typename T>
__global__ void drs_backward_finish_kernel(const T* __restrict__ gate, float delta,
                                           T* __restrict__ grad_x, T* __restrict__ grad_gate,
                                           int64_t planes, int64_t size, ChunkGrid grid,
                                           const int* __restrict__ plane_max,
                                           const int* __restrict__ first_argmax,
                                           const float* __restrict__ partial_grad_t) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= planes) return;
  float grad_t = 0.f;
  for (int64_t c = 0; c < grid.chunks; ++c) grad_t += partial_grad_t[p * grid.chunks + c];
  finish_plane<T>(grad_t, __int_as_float(plane_max[p]), gate_value(gate, p, delta),
                  first_argmax[p], grad_x + p * size, grad_gate, p);
}

// ---------------------------------------------------------------- dispatch

int plane_threads(int64_t size) { return size >= 32768 ? 1024 : (size >= 4096 ? 512 : 256); }

// Shared memory a plane kernel would need, or 0 if the plane does not fit.
size_t plane_smem_bytes(int64_t size, size_t elem, int device, cudaError_t* err) {
  int optin = 0;
  *err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (*err != cudaSuccess) return 0;
  const size_t bytes = static_cast<size_t>(size) * elem;
  const size_t static_bytes = 2 * 32 * sizeof(float);  // reduction scratch
  return bytes + static_bytes <= static_cast<size_t>(optin) ? bytes : 0;
}

template <typename Kernel>
cudaError_t allow_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(bytes));
}

struct Workspace {
  int* plane_max;
  int* first_argmax;
  float* partial_grad_t;
};

Workspace carve(void* base, int64_t planes) {
  char* ptr = static_cast<char*>(base);
  Workspace ws;
  ws.plane_max = reinterpret_cast<int*>(ptr);
  ws.first_argmax = ws.plane_max + planes;
  ws.partial_grad_t = reinterpret_cast<float*>(ws.first_argmax + planes);
  return ws;
}

template <typename T>
cudaError_t forward_impl(const T* x, const T* gate, float delta, T* out, int64_t planes,
                         int64_t size, void* workspace, int device, cudaStream_t stream) {
  cudaError_t err;
  const size_t smem = plane_smem_bytes(size, sizeof(T), device, &err);
  if (err != cudaSuccess) return err;
  if (smem > 0) {
    if ((err = allow_smem(drs_forward_plane_kernel<T>, smem)) != cudaSuccess) return err;
    drs_forward_plane_kernel<T><<<static_cast<unsigned>(planes), plane_threads(size), smem, stream>>>(
        x, gate, delta, out, size);
    return cudaGetLastError();
  }
  const ChunkGrid grid = chunk_grid(size);
  const unsigned blocks = static_cast<unsigned>(planes * grid.chunks);
  Workspace ws = carve(workspace, planes);
  if ((err = cudaMemsetAsync(ws.plane_max, 0, planes * sizeof(int), stream)) != cudaSuccess) return err;
  drs_plane_max_chunk_kernel<T><<<blocks, kChunkThreads, 0, stream>>>(x, size, grid, ws.plane_max);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  drs_forward_chunk_kernel<T><<<blocks, kChunkThreads, 0, stream>>>(x, gate, delta, out, size, grid,
                                                                    ws.plane_max);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_impl(const T* grad_out, const T* x, const T* gate, float delta, T* grad_x,
                          T* grad_gate, int64_t planes, int64_t size, void* workspace, int device,
                          cudaStream_t stream) {
  cudaError_t err;
  const size_t smem = plane_smem_bytes(size, sizeof(T), device, &err);
  if (err != cudaSuccess) return err;
  if (smem > 0) {
    if ((err = allow_smem(drs_backward_plane_kernel<T>, smem)) != cudaSuccess) return err;
    drs_backward_plane_kernel<T><<<static_cast<unsigned>(planes), plane_threads(size), smem, stream>>>(
        grad_out, x, gate, delta, grad_x, grad_gate, size);
    return cudaGetLastError();
  }
  const ChunkGrid grid = chunk_grid(size);
  const unsigned blocks = static_cast<unsigned>(planes * grid.chunks);
  Workspace ws = carve(workspace, planes);
  if ((err = cudaMemsetAsync(ws.plane_max, 0, planes * sizeof(int), stream)) != cudaSuccess) return err;
  // 0x7f in every byte: a sentinel index larger than any plane position.
  if ((err = cudaMemsetAsync(ws.first_argmax, 0x7f, planes * sizeof(int), stream)) != cudaSuccess)
    return err;
  drs_plane_max_chunk_kernel<T><<<blocks, kChunkThreads, 0, stream>>>(x, size, grid, ws.plane_max);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  drs_backward_chunk_kernel<T><<<blocks, kChunkThreads, 0, stream>>>(
      grad_out, x, gate, delta, grad_x, size, grid, ws.plane_max, ws.first_argmax,
      ws.partial_grad_t);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  const unsigned finish_blocks = static_cast<unsigned>((planes + 255) / 256);
  drs_backward_finish_kernel<T><<<finish_blocks, 256, 0, stream>>>(
      gate, delta, grad_x, grad_gate, planes, size, grid, ws.plane_max, ws.first_argmax,
      ws.partial_grad_t);
  return cudaGetLastError();
}

}  // namespace

size_t drs_workspace_bytes(int64_t planes, int64_t size, bool backward) {
  const size_t per_plane = backward ? 2 * sizeof(int) + chunk_grid(size).chunks * sizeof(float)
                                    : sizeof(int);
  return static_cast<size_t>(planes) * per_plane;
}

cudaError_t drs_forward(DType dtype, const void* x, const void* gate, float delta, void* out,
                        int64_t planes, int64_t size, void* workspace, int device,
                        cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return forward_impl(static_cast<const float*>(x), static_cast<const float*>(gate), delta,
                          static_cast<float*>(out), planes, size, workspace, device, stream);
    case DType::kFloat16:
      return forward_impl(static_cast<const __half*>(x), static_cast<const __half*>(gate), delta,
                          static_cast<__half*>(out), planes, size, workspace, device, stream);
    case DType::kBFloat16:
      return forward_impl(static_cast<const __nv_bfloat16*>(x),
                          static_cast<const __nv_bfloat16*>(gate), delta,
                          static_cast<__nv_bfloat16*>(out), planes, size, workspace, device,
                          stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t drs_backward(DType dtype, const void* grad_out, const void* x, const void* gate,
                         float delta, void* grad_x, void* grad_gate, int64_t planes, int64_t size,
                         void* workspace, int device, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return backward_impl(static_cast<const float*>(grad_out), static_cast<const float*>(x),
                           static_cast<const float*>(gate), delta, static_cast<float*>(grad_x),
                           static_cast<float*>(grad_gate), planes, size, workspace, device,
                           stream);
    case DType::kFloat16:
      return backward_impl(static_cast<const __half*>(grad_out), static_cast<const __half*>(x),
                           static_cast<const __half*>(gate), delta, static_cast<__half*>(grad_x),
                           static_cast<__half*>(grad_gate), planes, size, workspace, device,
                           stream);
    case DType::kBFloat16:
      return backward_impl(
          static_cast<const __nv_bfloat16*>(grad_out), static_cast<const __nv_bfloat16*>(x),
          static_cast<const __nv_bfloat16*>(gate), delta, static_cast<__nv_bfloat16*>(grad_x),
          static_cast<__nv_bfloat16*>(grad_gate), planes, size, workspace, device, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace wsss_fast
