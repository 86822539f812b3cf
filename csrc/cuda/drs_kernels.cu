// DRS suppression, CUDA kernels (device code; CUDA headers only).
//
// Two strategies, chosen per call by the plane's size in bytes (drs_launch.h,
// from the device's shared memory limits and the kernel's static shared
// memory, both queried at run time):
//  * plane kernels: one block per (n, c) plane, the plane staged in shared
//    memory while its max is reduced, so x is read from global memory once.
//    Forward reads x and writes out; backward reads x and grad_out and writes
//    grad_x: the minimum traffic. Used while a plane fits in the opt-in shared
//    memory of one block less the kernel's static 128 B (forward) or 256 B
//    (backward): up to 58,048 fp32 / 116,096 half or bf16 elements on sm_90
//    (227 KiB; squares up to 240 x 240 and 340 x 340), 41,664 / 83,328 on
//    sm_80 (163 KiB; 204 x 204 and 288 x 288). Above 48 KiB of static plus
//    dynamic shared memory the kernel opts in (cudaFuncSetAttribute).
//  * chunk kernels, for larger planes: every plane is cut into chunks of one
//    block each; a first launch reduces the plane max with an atomic max on the
//    float's bits (relu values are >= 0, so integer order is float order), a
//    second launch applies the suppression (forward) or the gradient (backward,
//    with per-block partial sums and a third, per-plane, deterministic launch
//    that sums them). The second launch walks the blocks in reverse order, so
//    the planes the first launch read last are still in L2.
// Grids are 1-D over planes (x chunks); a batch with more blocks than a grid
// holds is launched in slices of whole planes.
// Arithmetic is in float; the threshold and the gradients of the max and the
// gate are rounded to the storage type at the points where the reference
// composition rounds them.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "drs_kernels.h"
#include "drs_launch.h"

namespace wsss_fast {
namespace cuda {
namespace {

using drs::ChunkGrid;
using drs::kChunkThreads;
using drs::kNoArgmax;

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
  if (m > 0.f && k != kNoArgmax) {
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
  int k = kNoArgmax;
  for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
    const float v = to_float<T>(tile[i]);
    const float r = fmaxf(v, 0.f);
    const float gy = to_float<T>(gp[i]);
    const float s = share_to_r(r, t);
    gxp[i] = from_float<T>(v > 0.f ? gy * s : 0.f);
    grad_t += gy * (1.f - s);
    if (v == m && k == kNoArgmax) k = static_cast<int>(i);
  }
  grad_t = block_reduce(grad_t, scratch, SumOp(), 0.f);
  k = block_reduce(k, iscratch, MinIndexOp(), kNoArgmax);
  if (threadIdx.x == 0) finish_plane<T>(grad_t, m, g, k, gxp, grad_gate, p);
}

// ---------------------------------------------------------------- chunk kernels

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

// One thread per plane (grid-stride): sums the partials in a fixed order, then
// finish_plane.
template <typename T>
__global__ void drs_backward_finish_kernel(const T* __restrict__ gate, float delta,
                                           T* __restrict__ grad_x, T* __restrict__ grad_gate,
                                           int64_t planes, int64_t size, ChunkGrid grid,
                                           const int* __restrict__ plane_max,
                                           const int* __restrict__ first_argmax,
                                           const float* __restrict__ partial_grad_t) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < planes;
       p += stride) {
    float grad_t = 0.f;
    for (int64_t c = 0; c < grid.chunks; ++c) grad_t += partial_grad_t[p * grid.chunks + c];
    finish_plane<T>(grad_t, __int_as_float(plane_max[p]), gate_value(gate, p, delta),
                    first_argmax[p], grad_x + p * size, grad_gate, p);
  }
}

// ---------------------------------------------------------------- dispatch

static_assert(kNoArgmax == 0x7f7f7f7f, "first_argmax is initialised with a 0x7f byte memset");

// Reads the device's shared memory limits and the plane kernel's static shared
// memory, plans the launch (drs_launch.h) and opts the kernel in to more than
// 48 KiB of shared memory when the plan needs it.
template <typename Kernel>
cudaError_t plan_for(Kernel kernel, int64_t planes, int64_t size, size_t elem_bytes, int device,
                     drs::Launch* launch) {
  int per_block = 0, optin = 0;
  cudaError_t err;
  if ((err = cudaDeviceGetAttribute(&per_block, cudaDevAttrMaxSharedMemoryPerBlock, device)) !=
      cudaSuccess)
    return err;
  if ((err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) !=
      cudaSuccess)
    return err;
  cudaFuncAttributes attr;
  if ((err = cudaFuncGetAttributes(&attr, kernel)) != cudaSuccess) return err;
  const drs::SmemLimits limits{static_cast<size_t>(per_block), static_cast<size_t>(optin)};
  *launch = drs::plan_launch(planes, size, elem_bytes, attr.sharedSizeBytes, limits);
  if (!launch->needs_optin) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(launch->dynamic_smem));
}

// p + n, or null for a null p (the constant gate, no gate gradient).
template <typename T>
T* advance(T* p, int64_t n) {
  return p ? p + n : nullptr;
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
  drs::Launch l;
  cudaError_t err = plan_for(drs_forward_plane_kernel<T>, planes, size, sizeof(T), device, &l);
  if (err != cudaSuccess) return err;
  const bool chunked = l.path == drs::Path::kChunk;
  Workspace ws = carve(workspace, planes);
  if (chunked && (err = cudaMemsetAsync(ws.plane_max, 0, planes * sizeof(int), stream)) !=
                     cudaSuccess)
    return err;
  for (int64_t p0 = 0; p0 < planes; p0 += l.planes_per_launch) {
    const int64_t n = planes - p0 < l.planes_per_launch ? planes - p0 : l.planes_per_launch;
    const T* xs = x + p0 * size;
    const T* gs = advance(gate, p0);
    T* os = out + p0 * size;
    const unsigned blocks = static_cast<unsigned>(n * l.chunk.chunks);
    if (!chunked) {
      drs_forward_plane_kernel<T><<<blocks, l.threads, l.dynamic_smem, stream>>>(xs, gs, delta, os,
                                                                                size);
    } else {
      drs_plane_max_chunk_kernel<T><<<blocks, kChunkThreads, 0, stream>>>(xs, size, l.chunk,
                                                                          ws.plane_max + p0);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
      drs_forward_chunk_kernel<T><<<blocks, kChunkThreads, 0, stream>>>(
          xs, gs, delta, os, size, l.chunk, ws.plane_max + p0);
    }
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t backward_impl(const T* grad_out, const T* x, const T* gate, float delta, T* grad_x,
                          T* grad_gate, int64_t planes, int64_t size, void* workspace, int device,
                          cudaStream_t stream) {
  drs::Launch l;
  cudaError_t err = plan_for(drs_backward_plane_kernel<T>, planes, size, sizeof(T), device, &l);
  if (err != cudaSuccess) return err;
  const bool chunked = l.path == drs::Path::kChunk;
  Workspace ws = carve(workspace, planes);
  if (chunked) {
    if ((err = cudaMemsetAsync(ws.plane_max, 0, planes * sizeof(int), stream)) != cudaSuccess)
      return err;
    if ((err = cudaMemsetAsync(ws.first_argmax, 0x7f, planes * sizeof(int), stream)) != cudaSuccess)
      return err;
  }
  for (int64_t p0 = 0; p0 < planes; p0 += l.planes_per_launch) {
    const int64_t n = planes - p0 < l.planes_per_launch ? planes - p0 : l.planes_per_launch;
    const T* gos = grad_out + p0 * size;
    const T* xs = x + p0 * size;
    const T* gs = advance(gate, p0);
    T* gxs = grad_x + p0 * size;
    const unsigned blocks = static_cast<unsigned>(n * l.chunk.chunks);
    if (!chunked) {
      drs_backward_plane_kernel<T><<<blocks, l.threads, l.dynamic_smem, stream>>>(
          gos, xs, gs, delta, gxs, advance(grad_gate, p0), size);
    } else {
      drs_plane_max_chunk_kernel<T><<<blocks, kChunkThreads, 0, stream>>>(xs, size, l.chunk,
                                                                          ws.plane_max + p0);
      if ((err = cudaGetLastError()) != cudaSuccess) return err;
      drs_backward_chunk_kernel<T><<<blocks, kChunkThreads, 0, stream>>>(
          gos, xs, gs, delta, gxs, size, l.chunk, ws.plane_max + p0, ws.first_argmax + p0,
          ws.partial_grad_t + p0 * l.chunk.chunks);
    }
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (!chunked) return cudaSuccess;
  const int64_t finish_blocks = (planes + 255) / 256;
  drs_backward_finish_kernel<T><<<static_cast<unsigned>(finish_blocks < 65535 ? finish_blocks : 65535),
                                  256, 0, stream>>>(gate, delta, grad_x, grad_gate, planes, size,
                                                    l.chunk, ws.plane_max, ws.first_argmax,
                                                    ws.partial_grad_t);
  return cudaGetLastError();
}

}  // namespace

size_t drs_workspace_bytes(int64_t planes, int64_t size, bool backward) {
  const size_t per_plane = backward ? 2 * sizeof(int) + drs::chunk_grid(size).chunks * sizeof(float)
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
