// Batched K-means, CUDA kernels (device code; CUDA headers only).
//
//  * tile_kernel (assign, candidates): one block per tile of up to 64 points
//    of one group. The block walks the columns of its group's runs (the
//    centres of every active run, or the k-means++ candidates) 64 at a time:
//    a shared-memory tiled 64 x 64 x 16 product (4 x 4 outputs per thread)
//    gives x.c, staged in shared memory, then one thread per point turns each
//    column into ||x||^2 - 2 x.c + ||c||^2 and keeps the running argmin over
//    the k columns of a run (assign) or the min with the k-means++ potential
//    (candidates). No distance ever reaches global memory. Cluster sizes and
//    changed labels are counted with integer atomics (order-independent).
//  * cluster sums: one block per (segment of rows, run): a stable counting
//    sort of the segment's rows by label (in shared memory), then every
//    thread owns features and adds the rows of each cluster in row order, in
//    float64, into a per-segment partial; a second kernel adds each group's
//    partials in segment order. Deterministic, no floating-point atomics.
//  * finalize: one block per run (averages, empty clusters, shift, norms).
//  * point_dist: one warp per (point, run), float64 accumulation.
// Reductions use fixed shuffle trees: results are reproducible run to run.

#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kmeans_kernels.h"

namespace wsss_fast {
namespace cuda {
namespace kmeans {
namespace {

constexpr int kThreads = 256;
constexpr int kTileCols = 64;
constexpr int kTileK = 16;
constexpr int kPad = 4;
static_assert(kTileRows == 64 && kThreads == 256, "the 4 x 4 micro-tiles assume these");

__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Block-wide sum, the same on every thread; blockDim.x a multiple of 32.
__device__ double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.0;
  return warp_sum(v);
}

struct AssignOut {
  int32_t* labels;
  double* mind;
  unsigned long long* counts;
  unsigned long long* changed;
};

struct CandidateOut {
  const double* closest;
  double* out;
};

template <typename T>
struct TileArgs {
  const T* x;
  const double* xnorm;
  int64_t n, d;
  const int64_t* tiles;
  const int64_t* slot_off;
  const int64_t* runs;
  int64_t n_init;
  const T* cols;
  const double* cnorm;
  int64_t width;
};

// Shared memory of tile_kernel, in elements: the staged x and column tiles,
// later reused for the 64 x 64 dot products.
constexpr int kStagedElems = static_cast<int>(2 * kTileK * (kTileRows + kPad));
constexpr int kDotsElems = static_cast<int>(kTileRows * (kTileCols + 1));
constexpr int kTileSmemElems = kStagedElems > kDotsElems ? kStagedElems : kDotsElems;

// kAssign: AssignOut, else CandidateOut (see the header).
template <typename T, bool kAssign>
__global__ void __launch_bounds__(kThreads)
    tile_kernel(TileArgs<T> a, AssignOut assign_out, CandidateOut cand_out) {
  __shared__ __align__(16) T smem[kTileSmemElems];
  T* xs = smem;                                // [kTileK][kTileRows + kPad]
  T* cs = smem + kTileK * (kTileRows + kPad);  // [kTileK][kTileCols + kPad]
  T* dots = smem;                              // [kTileRows][kTileCols + 1], after the products

  const int64_t g = a.tiles[3 * blockIdx.x];
  const int64_t begin = a.tiles[3 * blockIdx.x + 1];
  const int rows = static_cast<int>(a.tiles[3 * blockIdx.x + 2] - begin);
  const int64_t c0 = a.slot_off[g] * a.width, c1 = a.slot_off[g + 1] * a.width;
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;

  double best = DBL_MAX;  // running minimum of the row owner (assign)
  int best_j = 0;
  for (int64_t cc = c0; cc < c1; cc += kTileCols) {
    const int ncols = static_cast<int>(c1 - cc < kTileCols ? c1 - cc : kTileCols);
    T acc[4][4] = {};
    for (int64_t kk = 0; kk < a.d; kk += kTileK) {
      for (int i = tid; i < kTileRows * kTileK; i += kThreads) {
        const int r = i / kTileK, q = i % kTileK;
        xs[q * (kTileRows + kPad) + r] =
            (r < rows && kk + q < a.d) ? a.x[(begin + r) * a.d + kk + q] : T(0);
      }
      for (int i = tid; i < kTileCols * kTileK; i += kThreads) {
        const int c = i / kTileK, q = i % kTileK;
        cs[q * (kTileCols + kPad) + c] =
            (c < ncols && kk + q < a.d) ? a.cols[(cc + c) * a.d + kk + q] : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int q = 0; q < kTileK; ++q) {
        T xv[4], cv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) xv[i] = xs[q * (kTileRows + kPad) + ty * 4 + i];
#pragma unroll
        for (int j = 0; j < 4; ++j) cv[j] = cs[q * (kTileCols + kPad) + tx * 4 + j];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fma(xv[i], cv[j], acc[i][j]);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) dots[(ty * 4 + i) * (kTileCols + 1) + tx * 4 + j] = acc[i][j];
    }
    __syncthreads();
    if (tid < rows) {
      const int64_t p = begin + tid;
      const double xn = a.xnorm[p];
      for (int c = 0; c < ncols; ++c) {
        const int64_t col = cc + c;
        const int64_t slot = col / a.width;
        const int j = static_cast<int>(col % a.width);
        const int64_t run = a.runs[slot];
        const int64_t at = (run % a.n_init) * a.n + p;
        const double dot = static_cast<double>(dots[tid * (kTileCols + 1) + c]);
        if (kAssign) {
          const double v = a.cnorm[col] - 2.0 * dot;
          if (j == 0 || v < best) {  // the lowest index wins ties
            best = v;
            best_j = j;
          }
          if (j == a.width - 1) {
            const int32_t old = assign_out.labels[at];
            assign_out.labels[at] = best_j;
            assign_out.mind[at] = fmax(xn + best, 0.0);
            atomicAdd(assign_out.counts + run * a.width + best_j, 1ULL);
            if (old != best_j) atomicAdd(assign_out.changed + run, 1ULL);
          }
        } else {
          const double dist = fmax(xn + a.cnorm[col] - 2.0 * dot, 0.0);
          cand_out.out[(j * a.n_init + run % a.n_init) * a.n + p] = fmin(cand_out.closest[at], dist);
        }
      }
    }
    __syncthreads();  // dots shares memory with the next products' staging
  }
}

// ---------------------------------------------------------------- cluster sums

template <typename T>
__global__ void segment_sums_kernel(const T* __restrict__ x, int64_t n, int64_t d,
                                    const int64_t* __restrict__ segments,
                                    const int64_t* __restrict__ slot_off,
                                    const int64_t* __restrict__ runs, int64_t n_init, int64_t k,
                                    const int32_t* __restrict__ labels, int max_rows,
                                    double* __restrict__ partial) {
  extern __shared__ int sort_smem[];  // order[max_rows], start[k + 1], cursor[k]
  int* order = sort_smem;
  int* start = sort_smem + max_rows;
  int* cursor = start + k + 1;
  const int64_t seg = blockIdx.x, r = blockIdx.y;
  const int64_t g = segments[3 * seg], begin = segments[3 * seg + 1];
  const int rows = static_cast<int>(segments[3 * seg + 2] - begin);
  const int64_t run = g * n_init + r;
  bool active = false;
  for (int64_t s = slot_off[g]; s < slot_off[g + 1]; ++s) active |= runs[s] == run;
  if (!active) return;
  const int32_t* lab = labels + r * n + begin;
  if (threadIdx.x == 0) {  // stable counting sort of the rows by label
    for (int64_t j = 0; j <= k; ++j) start[j] = 0;
    for (int i = 0; i < rows; ++i) ++start[lab[i] + 1];
    for (int64_t j = 0; j < k; ++j) {
      start[j + 1] += start[j];
      cursor[j] = start[j];
    }
    for (int i = 0; i < rows; ++i) order[cursor[lab[i]]++] = i;
  }
  __syncthreads();
  double* out = partial + (seg * n_init + r) * k * d;
  const T* xs = x + begin * d;
  for (int64_t f = threadIdx.x; f < d; f += blockDim.x) {
    for (int64_t j = 0; j < k; ++j) {
      double acc = 0;
      for (int i = start[j]; i < start[j + 1]; ++i) acc += static_cast<double>(xs[order[i] * d + f]);
      out[j * d + f] = acc;
    }
  }
}

__global__ void reduce_partials_kernel(const double* __restrict__ partial, int64_t d, int64_t k,
                                       int64_t n_init, const int64_t* __restrict__ segment_off,
                                       const int64_t* __restrict__ runs, int64_t n_slots,
                                       double* __restrict__ sums) {
  const int64_t per_run = k * d;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       i < n_slots * per_run; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t run = runs[i / per_run], within = i % per_run;
    const int64_t g = run / n_init, r = run % n_init;
    double acc = 0;
    for (int64_t seg = segment_off[g]; seg < segment_off[g + 1]; ++seg) {
      acc += partial[(seg * n_init + r) * per_run + within];
    }
    sums[run * per_run + within] = acc;
  }
}

// ---------------------------------------------------------------- finalize

template <typename T>
__global__ void finalize_kernel(const int64_t* __restrict__ runs, const double* __restrict__ sums,
                                const int64_t* __restrict__ counts, T* __restrict__ centers,
                                double* __restrict__ cnorm, double* __restrict__ shift, int64_t k,
                                int64_t d) {
  __shared__ double scratch[32];
  __shared__ int64_t largest;
  const int64_t run = runs[blockIdx.x];
  const int64_t* n = counts + run * k;
  if (threadIdx.x == 0) {
    int64_t l = 0;
    for (int64_t j = 1; j < k; ++j) l = n[j] > n[l] ? j : l;  // first maximum
    largest = l;
  }
  __syncthreads();
  double moved = 0;
  // Clusters with points first: the empty ones copy the largest's new centre.
  for (int pass = 0; pass < 2; ++pass) {
    for (int64_t j = 0; j < k; ++j) {
      if ((n[j] > 0) != (pass == 0)) continue;  // uniform across the block
      T* cj = centers + (run * k + j) * d;
      const T* src = centers + (run * k + largest) * d;
      const double* sj = sums + (run * k + j) * d;
      double norm = 0;
      for (int64_t f = threadIdx.x; f < d; f += blockDim.x) {
        const T v = pass == 0 ? static_cast<T>(sj[f] / static_cast<double>(n[j])) : src[f];
        const double diff = static_cast<double>(v) - static_cast<double>(cj[f]);
        moved += diff * diff;
        norm += static_cast<double>(v) * static_cast<double>(v);
        cj[f] = v;
      }
      norm = block_sum(norm, scratch);
      if (threadIdx.x == 0) cnorm[run * k + j] = norm;
    }
    __syncthreads();  // pass 1 reads the largest cluster's new centre
  }
  moved = block_sum(moved, scratch);
  if (threadIdx.x == 0) shift[run] = moved;
}

// ---------------------------------------------------------------- point_dist

template <typename T>
__global__ void point_dist_kernel(const T* __restrict__ x, int64_t n, int64_t d,
                                  const int64_t* __restrict__ tiles,
                                  const int64_t* __restrict__ slot_off,
                                  const int64_t* __restrict__ runs, int64_t n_init, int64_t k,
                                  const T* __restrict__ centers,
                                  const int32_t* __restrict__ labels, double* __restrict__ dist) {
  const int64_t g = tiles[3 * blockIdx.x], begin = tiles[3 * blockIdx.x + 1];
  const int64_t rows = tiles[3 * blockIdx.x + 2] - begin;
  const int64_t s0 = slot_off[g], slots = slot_off[g + 1] - s0;
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  for (int64_t q = threadIdx.x >> 5; q < rows * slots; q += warps) {
    const int64_t p = begin + q % rows, run = runs[s0 + q / rows], r = run % n_init;
    const T* xp = x + p * d;
    const T* cp = centers + (run * k + labels[r * n + p]) * d;
    double acc = 0;
    for (int64_t f = lane; f < d; f += 32) {
      const double diff = static_cast<double>(xp[f]) - static_cast<double>(cp[f]);
      acc += diff * diff;
    }
    acc = warp_sum(acc);
    if (lane == 0) dist[r * n + p] = acc;
  }
}

// ---------------------------------------------------------------- launchers

template <typename T>
TileArgs<T> tile_args(const TileProblem& p) {
  return {static_cast<const T*>(p.x), p.xnorm, p.n, p.d, p.tiles, p.slot_off, p.runs,
          p.n_init, static_cast<const T*>(p.cols), p.cnorm, p.width};
}

template <typename T>
cudaError_t launch_tiles(const TileProblem& p, const AssignOut* assign_out,
                         const CandidateOut* cand_out, cudaStream_t stream) {
  if (p.n_tiles == 0) return cudaSuccess;
  const auto grid = static_cast<unsigned>(p.n_tiles);
  if (assign_out) {
    tile_kernel<T, true><<<grid, kThreads, 0, stream>>>(tile_args<T>(p), *assign_out, CandidateOut{});
  } else {
    tile_kernel<T, false><<<grid, kThreads, 0, stream>>>(tile_args<T>(p), AssignOut{}, *cand_out);
  }
  return cudaGetLastError();
}

unsigned blocks_for(int64_t items, int threads) {
  const int64_t blocks = (items + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
}

template <typename T>
cudaError_t cluster_sums_impl(const T* x, int64_t n, int64_t d, const int64_t* segments,
                              int64_t n_segments, int64_t max_rows, const int64_t* segment_off,
                              const int64_t* slot_off, const int64_t* runs, int64_t n_slots,
                              int64_t n_init, int64_t k, const int32_t* labels, double* partial,
                              double* sums, int device, cudaStream_t stream) {
  if (n_slots == 0 || n_segments == 0) return cudaSuccess;
  const size_t smem = static_cast<size_t>(max_rows + 2 * k + 1) * sizeof(int);
  cudaError_t err;
  if (smem > 48 * 1024) {
    int optin = 0;
    err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    if (err != cudaSuccess) return err;
    if (smem > static_cast<size_t>(optin)) return cudaErrorInvalidValue;
    err = cudaFuncSetAttribute(segment_sums_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const dim3 grid(static_cast<unsigned>(n_segments), static_cast<unsigned>(n_init));
  segment_sums_kernel<T><<<grid, kThreads, smem, stream>>>(x, n, d, segments, slot_off, runs,
                                                          n_init, k, labels,
                                                          static_cast<int>(max_rows), partial);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  reduce_partials_kernel<<<blocks_for(n_slots * k * d, kThreads), kThreads, 0, stream>>>(
      partial, d, k, n_init, segment_off, runs, n_slots, sums);
  return cudaGetLastError();
}

}  // namespace

cudaError_t assign(const TileProblem& p, int32_t* labels, double* mind, int64_t* counts,
                   int64_t* changed, cudaStream_t stream) {
  const AssignOut out{labels, mind, reinterpret_cast<unsigned long long*>(counts),
                      reinterpret_cast<unsigned long long*>(changed)};
  return p.dtype == DType::kFloat32 ? launch_tiles<float>(p, &out, nullptr, stream)
                                    : launch_tiles<double>(p, &out, nullptr, stream);
}

cudaError_t candidates(const TileProblem& p, const double* closest, double* out,
                       cudaStream_t stream) {
  const CandidateOut c{closest, out};
  return p.dtype == DType::kFloat32 ? launch_tiles<float>(p, nullptr, &c, stream)
                                    : launch_tiles<double>(p, nullptr, &c, stream);
}

cudaError_t cluster_sums(DType dtype, const void* x, int64_t n, int64_t d,
                         const int64_t* segments, int64_t n_segments, int64_t max_segment_rows,
                         const int64_t* segment_off, const int64_t* slot_off,
                         const int64_t* runs, int64_t n_slots, int64_t n_init, int64_t k,
                         const int32_t* labels, double* partial, double* sums, int device,
                         cudaStream_t stream) {
  if (dtype == DType::kFloat32) {
    return cluster_sums_impl(static_cast<const float*>(x), n, d, segments, n_segments,
                             max_segment_rows, segment_off, slot_off, runs, n_slots, n_init, k,
                             labels, partial, sums, device, stream);
  }
  return cluster_sums_impl(static_cast<const double*>(x), n, d, segments, n_segments,
                           max_segment_rows, segment_off, slot_off, runs, n_slots, n_init, k,
                           labels, partial, sums, device, stream);
}

cudaError_t finalize(DType dtype, const int64_t* runs, int64_t n_slots, const double* sums,
                     const int64_t* counts, void* centers, double* cnorm, double* shift,
                     int64_t k, int64_t d, cudaStream_t stream) {
  if (n_slots == 0) return cudaSuccess;
  const auto grid = static_cast<unsigned>(n_slots);
  if (dtype == DType::kFloat32) {
    finalize_kernel<float><<<grid, kThreads, 0, stream>>>(runs, sums, counts,
                                                         static_cast<float*>(centers), cnorm,
                                                         shift, k, d);
  } else {
    finalize_kernel<double><<<grid, kThreads, 0, stream>>>(runs, sums, counts,
                                                          static_cast<double*>(centers), cnorm,
                                                          shift, k, d);
  }
  return cudaGetLastError();
}

cudaError_t point_dist(DType dtype, const void* x, int64_t n, int64_t d, const int64_t* tiles,
                       int64_t n_tiles, const int64_t* slot_off, const int64_t* runs,
                       int64_t n_init, int64_t k, const void* centers, const int32_t* labels,
                       double* dist, cudaStream_t stream) {
  if (n_tiles == 0) return cudaSuccess;
  const auto grid = static_cast<unsigned>(n_tiles);
  if (dtype == DType::kFloat32) {
    point_dist_kernel<float><<<grid, kThreads, 0, stream>>>(
        static_cast<const float*>(x), n, d, tiles, slot_off, runs, n_init, k,
        static_cast<const float*>(centers), labels, dist);
  } else {
    point_dist_kernel<double><<<grid, kThreads, 0, stream>>>(
        static_cast<const double*>(x), n, d, tiles, slot_off, runs, n_init, k,
        static_cast<const double*>(centers), labels, dist);
  }
  return cudaGetLastError();
}

}  // namespace kmeans
}  // namespace cuda
}  // namespace wsss_fast
