// DRS suppression, CUDA launch configuration as plain C++ (no CUDA types), so
// that the decisions can be compiled and tested on a machine without CUDA
// (tests/test_drs_launch.py). drs_kernels.cu feeds it the device's limits and
// the kernels' static shared memory, queried at run time, and launches what it
// returns.
//
// Units: sizes in elements, shared memory in bytes, planes = N * C, size = H * W.
#pragma once

#include <cstddef>
#include <cstdint>

namespace wsss_fast {
namespace cuda {
namespace drs {

// "No argmax found" of the backward kernels' first-argmax search: 0x7f in
// every byte, so that cudaMemsetAsync can write it, and larger than every
// position of a plane (size < kNoArgmax, checked by drs_cuda.cpp).
constexpr int kNoArgmax = 0x7f7f7f7f;

constexpr int kChunkThreads = 256;
constexpr int64_t kChunkItems = 2048;           // elements per chunk block
constexpr int64_t kMaxChunksPerPlane = 65535;   // bounds the per-plane partial sums
constexpr int64_t kMaxGridX = 2147483647;       // blocks of a 1-D grid (2^31 - 1)

enum class Path { kPlane, kChunk };

// Shared memory limits of a device: cudaDevAttrMaxSharedMemoryPerBlock (what a
// kernel gets without opting in, 48 KiB) and ...PerBlockOptin (sm_80: 163 KiB,
// sm_86/89: 99 KiB, sm_90: 227 KiB).
struct SmemLimits {
  size_t per_block;
  size_t per_block_optin;
};

// Blocks per plane and elements per block of the chunk path.
struct ChunkGrid {
  int64_t chunks;
  int64_t chunk_len;
};

struct Launch {
  Path path;
  int threads;                 // per block
  size_t dynamic_smem;         // bytes per block (0 on the chunk path)
  bool needs_optin;            // static + dynamic smem > SmemLimits::per_block
  ChunkGrid chunk;             // chunk path only ({1, size} on the plane path)
  int64_t planes_per_launch;   // grid.x = planes_per_launch * chunk.chunks
};

inline ChunkGrid chunk_grid(int64_t size) {
  int64_t len = kChunkItems;
  if ((size + len - 1) / len > kMaxChunksPerPlane) {
    len = (size + kMaxChunksPerPlane - 1) / kMaxChunksPerPlane;
  }
  return {(size + len - 1) / len, len};
}

inline int plane_threads(int64_t size) {
  return size >= 32768 ? 1024 : (size >= 4096 ? 512 : 256);
}

// Largest plane (elements of elem_bytes each) a plane kernel with static_smem
// bytes of static shared memory can stage: the dynamic part may take what the
// opt-in limit leaves.
inline int64_t max_plane_size(size_t elem_bytes, size_t static_smem, const SmemLimits& limits) {
  if (limits.per_block_optin <= static_smem) return 0;
  return static_cast<int64_t>((limits.per_block_optin - static_smem) / elem_bytes);
}

// The launch of one kernel pair (forward or backward) for `planes` planes of
// `size` elements: the plane path while the plane fits, else the chunk path.
// Grids are 1-D; when planes * blocks per plane exceed kMaxGridX the caller
// launches planes_per_launch planes at a time.
inline Launch plan_launch(int64_t planes, int64_t size, size_t elem_bytes, size_t static_smem,
                          const SmemLimits& limits) {
  Launch l{};
  if (size <= max_plane_size(elem_bytes, static_smem, limits)) {
    l.path = Path::kPlane;
    l.threads = plane_threads(size);
    l.dynamic_smem = static_cast<size_t>(size) * elem_bytes;
    l.needs_optin = static_smem + l.dynamic_smem > limits.per_block;
    l.chunk = {1, size};
  } else {
    l.path = Path::kChunk;
    l.threads = kChunkThreads;
    l.dynamic_smem = 0;
    l.needs_optin = false;
    l.chunk = chunk_grid(size);
  }
  const int64_t fit = kMaxGridX / l.chunk.chunks;
  l.planes_per_launch = planes < fit ? planes : fit;
  return l;
}

}  // namespace drs
}  // namespace cuda
}  // namespace wsss_fast
