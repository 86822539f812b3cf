// Dense CRF, CUDA kernels (device code; CUDA headers and CUB only). The
// formulation is pydensecrf's (wsss_fast/reference/dense_crf.py); the lattice
// arithmetic is csrc/dense_crf_lattice.h, shared with the CPU kernel.
//
// Lattice build (once per lattice and group of images):
//  * one thread per pixel computes its simplex and inserts the d + 1 corner
//    codes into its image's open-addressing hash table (64-bit keys, one
//    atomicCAS per probe; a table has at least twice as many slots as the
//    image has corners, so it never fills);
//  * the used slots are numbered by a prefix sum (CUB): rows 0..M-1, each
//    image's rows contiguous;
//  * the corners are sorted by row (CUB radix sort, stable: within a row by
//    pixel), giving each row its splat entries in pixel order; rows are cut
//    into chunks of at most kChunk entries so that a large row (a flat image
//    region) does not hold one thread for thousands of entries;
//  * the blur neighbours are looked up in the hash tables.
// Mean field: the normalisation n = 1 / sqrt(filter(1)) of each lattice,
// folded into the weights (splat: times n of the pixel; slice: times n and the
// Potts weight); then per iteration and lattice a splat of Q (one thread per
// chunk and label, then one per row and label summing its chunks in order),
// d + 1 blur passes (one thread per row and label; row M is the zero of
// missing neighbours) and one update: a group of G lanes (the power of 2 >=
// min(K, 32)) per pixel slices both lattices onto -U and normalises with warp
// shuffles, writing Q (in place: Q is its scratch) or the output.
// Every sum is taken in a fixed order, so the result is deterministic (the
// hash tables' slot order varies between runs, but only the numbering of the
// rows depends on it). Labels at or beyond an image's num_labels come out 0.
// Index arithmetic is int32: the caller keeps E = B N (d + 1) <= 2^26 and
// E K <= 2^30 per group (crf_max_group).

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda_runtime.h>

#include <cstdint>

#include "dense_crf_kernels.h"

namespace wsss_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 16;
constexpr int kChunk = 32;                   // splat entries per work item
constexpr uint64_t kEmpty = crf::kNoCode;    // a free hash slot
constexpr int64_t kMaxEntries = 1LL << 26;   // E of one group
constexpr int64_t kMaxValues = 1LL << 30;    // E * K of one group
constexpr int64_t kGroupEntries = 1LL << 24; // E of a group when images allow

unsigned blocks_for(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < kMaxBlocks ? (b > 0 ? b : 1) : kMaxBlocks);
}

// Consecutive 256-byte aligned arrays carved from one workspace; with a null
// base it only counts the bytes.
class Carve {
 public:
  explicit Carve(const void* base) : base_(reinterpret_cast<uintptr_t>(base)), next_(base_) {}
  template <typename T>
  T* take(int64_t n) {
    T* p = reinterpret_cast<T*>(next_);
    next_ += (static_cast<uintptr_t>(n) * sizeof(T) + 255) / 256 * 256;
    return p;
  }
  size_t used() const { return next_ - base_; }

 private:
  uintptr_t base_, next_;
};

// Rows are sorted as unsigned keys (they are >= 0), bits [0, end_bit).
uint32_t* as_unsigned(int32_t* rows) { return reinterpret_cast<uint32_t*>(rows); }

int64_t table_capacity(int64_t N, int D) {
  int64_t cap = 1024;
  while (cap < 2 * N * D) cap *= 2;
  return cap;
}

// Phase 1 workspace.
struct Table {
  int64_t cap = 0;                // slots per image, a power of 2
  uint64_t* keys = nullptr;       // (B, cap) codes, kEmpty where free
  int32_t* occupied = nullptr;    // (B, cap) 1 where used
  int32_t* slot_row = nullptr;    // (B, cap) exclusive sum of occupied: a used slot's row
  int32_t* entry_slot = nullptr;  // (E) slot of each pixel corner in its image's table
  float* entry_weight = nullptr;  // (E) its barycentric weight
  void* temp = nullptr;
  size_t temp_bytes = 0;
  size_t bytes = 0;
};

Table table_layout(const void* base, int64_t B, int64_t N, int d) {
  Table t;
  const int D = d + 1;
  const int64_t E = B * N * D;
  t.cap = table_capacity(N, D);
  const int slots = static_cast<int>(B * t.cap);
  Carve c(base);
  t.keys = c.take<uint64_t>(slots);
  t.occupied = c.take<int32_t>(slots);
  t.slot_row = c.take<int32_t>(slots);
  t.entry_slot = c.take<int32_t>(E);
  t.entry_weight = c.take<float>(E);
  cub::DeviceScan::ExclusiveSum(nullptr, t.temp_bytes, t.occupied, t.slot_row, slots);
  t.temp = c.take<unsigned char>(static_cast<int64_t>(t.temp_bytes));
  t.bytes = c.used();
  return t;
}

// Phase 2 workspace; the first block is what phase 3 reads.
struct Lattice {
  int D = 0;
  int M = 0, E = 0, chunks_max = 0;
  int32_t* entry_row = nullptr;    // (E) row of each pixel corner, pixel-major
  float* slice_w = nullptr;        // (E) its weight * alpha
  int32_t* row_start = nullptr;    // (M + 1) first sorted entry of each row
  int32_t* splat_pixel = nullptr;  // (E) by row, then pixel: the pixel (b N + p)
  float* splat_w = nullptr;        // (E) its weight
  int32_t* chunk_first = nullptr;  // (M + 1) first chunk of each row; [M]: the chunks
  int32_t* chunk_row = nullptr;    // (chunks_max) row of each chunk
  int32_t* nbr = nullptr;          // (D, M, 2) neighbour rows, M where there is none
  float* norm = nullptr;           // (B N) symmetric normalisation
  // scratch of phase 2
  int32_t* sorted_row = nullptr;    // (E)
  int32_t* entry_index = nullptr;   // (E)
  int32_t* sorted_entry = nullptr;  // (E)
  uint64_t* row_code = nullptr;     // (M)
  int32_t* row_image = nullptr;     // (M)
  int32_t* chunk_count = nullptr;   // (M + 1)
  void* temp = nullptr;
  size_t temp_bytes = 0;
  int end_bit = 1;  // bits of the largest row
  size_t bytes = 0;
};

Lattice lattice_layout(const void* base, int64_t B, int64_t N, int d, int64_t M) {
  Lattice l;
  l.D = d + 1;
  l.M = static_cast<int>(M);
  l.E = static_cast<int>(B * N * l.D);
  l.chunks_max = static_cast<int>(M + (l.E + kChunk - 1) / kChunk);
  Carve c(base);
  l.entry_row = c.take<int32_t>(l.E);
  l.slice_w = c.take<float>(l.E);
  l.row_start = c.take<int32_t>(M + 1);
  l.splat_pixel = c.take<int32_t>(l.E);
  l.splat_w = c.take<float>(l.E);
  l.chunk_first = c.take<int32_t>(M + 1);
  l.chunk_row = c.take<int32_t>(l.chunks_max);
  l.nbr = c.take<int32_t>(static_cast<int64_t>(l.D) * M * 2);
  l.norm = c.take<float>(B * N);
  l.sorted_row = c.take<int32_t>(l.E);
  l.entry_index = c.take<int32_t>(l.E);
  l.sorted_entry = c.take<int32_t>(l.E);
  l.row_code = c.take<uint64_t>(M);
  l.row_image = c.take<int32_t>(M);
  l.chunk_count = c.take<int32_t>(M + 1);
  while (l.end_bit < 31 && (1LL << l.end_bit) < M) ++l.end_bit;
  size_t sort_bytes = 0, scan_bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, as_unsigned(l.entry_row),
                                  as_unsigned(l.sorted_row), l.entry_index, l.sorted_entry, l.E, 0,
                                  l.end_bit);
  cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, l.chunk_count, l.chunk_first,
                                l.M + 1);
  l.temp_bytes = sort_bytes > scan_bytes ? sort_bytes : scan_bytes;
  l.temp = c.take<unsigned char>(static_cast<int64_t>(l.temp_bytes));
  l.bytes = c.used();
  return l;
}

// Phase 3 workspace.
struct MeanField {
  float* neg_unary = nullptr;                  // (B N, K) log(clip(p))
  float* q = nullptr;                          // (B N, K) the marginals; the update's scratch
  float* tables[2][2] = {{nullptr, nullptr}, {nullptr, nullptr}};  // (M + 1, K)
  float* partial[2] = {nullptr, nullptr};      // (chunks_max, K)
  size_t table_bytes[2] = {0, 0};
  size_t bytes = 0;
};

MeanField mean_field_layout(const void* base, int64_t B, int64_t N, int64_t K, const int64_t* M,
                            const int* chunks_max) {
  MeanField m;
  Carve c(base);
  m.neg_unary = c.take<float>(B * N * K);
  m.q = c.take<float>(B * N * K);
  for (int f = 0; f < 2; ++f) {
    m.tables[f][0] = c.take<float>((M[f] + 1) * K);
    m.tables[f][1] = c.take<float>((M[f] + 1) * K);
    m.table_bytes[f] = static_cast<size_t>((M[f] + 1) * K) * sizeof(float);
    m.partial[f] = c.take<float>(static_cast<int64_t>(chunks_max[f]) * K);
  }
  m.bytes = c.used();
  return m;
}

// ------------------------------------------------------------ hash tables

__device__ int insert_code(uint64_t* keys, int64_t cap, uint64_t code) {
  uint64_t h = crf::hash_code(code) & static_cast<uint64_t>(cap - 1);
  while (true) {
    const unsigned long long prev =
        atomicCAS(reinterpret_cast<unsigned long long*>(keys + h),
                  static_cast<unsigned long long>(kEmpty), static_cast<unsigned long long>(code));
    if (prev == static_cast<unsigned long long>(kEmpty) ||
        prev == static_cast<unsigned long long>(code)) {
      return static_cast<int>(h);
    }
    h = (h + 1) & static_cast<uint64_t>(cap - 1);
  }
}

// Slot of code, -1 if absent.
__device__ int find_code(const uint64_t* __restrict__ keys, int64_t cap, uint64_t code) {
  uint64_t h = crf::hash_code(code) & static_cast<uint64_t>(cap - 1);
  while (true) {
    const uint64_t k = keys[h];
    if (k == code) return static_cast<int>(h);
    if (k == kEmpty) return -1;
    h = (h + 1) & static_cast<uint64_t>(cap - 1);
  }
}

__global__ void insert_kernel(crf::LatticeSpec spec, const uint8_t* __restrict__ image, int B,
                              int H, int W, Table t, int64_t* points) {
  const int N = H * W, D = spec.d + 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < static_cast<int64_t>(B) * N; i += stride) {
    const int pix = static_cast<int>(i), b = pix / N, p = pix % N;
    float raw[crf::kMaxDim];
    raw[0] = static_cast<float>(p % W);
    raw[1] = static_cast<float>(p / W);
    for (int c = 0; c + 2 < spec.d; ++c) {
      raw[2 + c] = static_cast<float>(image[(static_cast<int64_t>(b) * 3 + c) * N + p]);
    }
    uint64_t code[crf::kMaxDim + 1];
    float weight[crf::kMaxDim + 1];
    if (!crf::pixel_simplex(spec, raw, code, weight)) {
      points[1] = 1;
      continue;
    }
    uint64_t* keys = t.keys + b * t.cap;
    for (int r = 0; r < D; ++r) {
      t.entry_slot[pix * D + r] = insert_code(keys, t.cap, code[r]);
      t.entry_weight[pix * D + r] = weight[r];
    }
  }
}

__global__ void occupied_kernel(const uint64_t* __restrict__ keys, int32_t* __restrict__ occupied,
                                int slots) {
  const int stride = gridDim.x * blockDim.x;
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < slots; s += stride) {
    occupied[s] = keys[s] != kEmpty ? 1 : 0;
  }
}

__global__ void count_kernel(const int32_t* __restrict__ occupied,
                             const int32_t* __restrict__ slot_row, int slots, int64_t* points) {
  points[0] = static_cast<int64_t>(slot_row[slots - 1]) + occupied[slots - 1];
}

// ------------------------------------------------------------ lattice rows

__global__ void rows_kernel(Table t, int slots, Lattice l) {
  const int stride = gridDim.x * blockDim.x;
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < slots; s += stride) {
    const uint64_t code = t.keys[s];
    if (code == kEmpty) continue;
    const int v = t.slot_row[s];
    l.row_code[v] = code;
    l.row_image[v] = static_cast<int>(s / t.cap);
  }
}

__global__ void entries_kernel(Table t, Lattice l, int N, float alpha) {
  const int per_image = N * l.D;
  const int stride = gridDim.x * blockDim.x;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < l.E; e += stride) {
    l.entry_row[e] = t.slot_row[static_cast<int64_t>(e / per_image) * t.cap + t.entry_slot[e]];
    l.slice_w[e] = t.entry_weight[e] * alpha;
    l.entry_index[e] = e;
  }
}

__global__ void starts_kernel(Table t, Lattice l) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < l.E; i += stride) {
    const int v = l.sorted_row[i];
    if (i == 0 || l.sorted_row[i - 1] != v) l.row_start[v] = i;
    if (i == l.E - 1) l.row_start[l.M] = l.E;
    const int e = l.sorted_entry[i];
    l.splat_pixel[i] = e / l.D;
    l.splat_w[i] = t.entry_weight[e];
  }
}

__global__ void chunk_count_kernel(Lattice l) {
  const int stride = gridDim.x * blockDim.x;
  for (int v = blockIdx.x * blockDim.x + threadIdx.x; v <= l.M; v += stride) {
    l.chunk_count[v] =
        v < l.M ? (l.row_start[v + 1] - l.row_start[v] + kChunk - 1) / kChunk : 0;
  }
}

__global__ void chunk_rows_kernel(Lattice l) {
  const int stride = gridDim.x * blockDim.x;
  for (int v = blockIdx.x * blockDim.x + threadIdx.x; v < l.M; v += stride) {
    for (int c = l.chunk_first[v]; c < l.chunk_first[v + 1]; ++c) l.chunk_row[c] = v;
  }
}

__global__ void neighbours_kernel(crf::LatticeSpec spec, Table t, Lattice l) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < l.M * l.D; i += stride) {
    const int v = i % l.M, j = i / l.M;
    const uint64_t code = l.row_code[v];
    const int k = static_cast<int>(code % static_cast<uint64_t>(l.D));
    const int64_t base = static_cast<int64_t>(l.row_image[v]) * t.cap;
    for (int side = 0; side < 2; ++side) {
      const uint64_t n = code + static_cast<uint64_t>(crf::neighbour_delta(spec, k, j, side));
      const int slot = find_code(t.keys + base, t.cap, n);
      l.nbr[i * 2 + side] = slot < 0 ? l.M : t.slot_row[base + slot];
    }
  }
}

// ------------------------------------------------------------ mean field

__global__ void fill_kernel(float* __restrict__ x, int n, float value) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) x[i] = value;
}

// partial[c, l] = sum over chunk c's entries of splat_w * in[pixel, l].
__global__ void splat_chunks_kernel(Lattice l, const float* __restrict__ in, int K,
                                    float* __restrict__ partial) {
  const int chunks = l.chunk_first[l.M];
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < chunks * K; i += stride) {
    const int c = i / K, lab = i % K;
    const int v = l.chunk_row[c];
    const int begin = l.row_start[v] + (c - l.chunk_first[v]) * kChunk;
    const int end = min(begin + kChunk, l.row_start[v + 1]);
    float acc = 0.f;
    for (int e = begin; e < end; ++e) acc += l.splat_w[e] * in[l.splat_pixel[e] * K + lab];
    partial[i] = acc;
  }
}

// table[v, l] = sum of row v's chunk partials, in order.
__global__ void splat_rows_kernel(Lattice l, const float* __restrict__ partial, int K,
                                  float* __restrict__ table) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < l.M * K; i += stride) {
    const int v = i / K, lab = i % K;
    float acc = 0.f;
    for (int c = l.chunk_first[v]; c < l.chunk_first[v + 1]; ++c) acc += partial[c * K + lab];
    table[i] = acc;
  }
}

// out[v] = in[v] + (in[n1] + in[n2]) / 2 along direction j, rows < M.
__global__ void blur_kernel(Lattice l, int j, const float* __restrict__ in, int K,
                            float* __restrict__ out) {
  const int32_t* nb = l.nbr + static_cast<int64_t>(j) * l.M * 2;
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < l.M * K; i += stride) {
    const int v = i / K, lab = i % K;
    out[i] = in[i] + 0.5f * (in[nb[2 * v] * K + lab] + in[nb[2 * v + 1] * K + lab]);
  }
}

// n = 1 / sqrt(sliced filter of ones + 1e-20), the filter in a K = 1 table.
__global__ void norm_kernel(Lattice l, const float* __restrict__ table, int pixels) {
  const int stride = gridDim.x * blockDim.x;
  for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pixels; p += stride) {
    float acc = 0.f;
    for (int r = 0; r < l.D; ++r) acc += l.slice_w[p * l.D + r] * table[l.entry_row[p * l.D + r]];
    l.norm[p] = static_cast<float>(1.0 / sqrt(static_cast<double>(acc) + 1e-20));
  }
}

// Folds n into the weights: a splat entry's times n of its pixel, a slice
// weight (alpha times barycentric) times n of its pixel and the Potts weight.
__global__ void fold_kernel(Lattice l, float compat) {
  const int stride = gridDim.x * blockDim.x;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < l.E; e += stride) {
    l.splat_w[e] *= l.norm[l.splat_pixel[e]];
    l.slice_w[e] *= l.norm[e / l.D] * compat;
  }
}

// neg_unary[b N + p, l] = log(clip(probs[b, l, p], 1e-5, 1)).
__global__ void unary_kernel(const float* __restrict__ probs, float* __restrict__ neg_unary,
                             int B, int N, int K) {
  const int stride = gridDim.x * blockDim.x;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < B * N * K; i += stride) {
    const int p = i % N, lab = (i / N) % K, b = i / (N * K);
    neg_unary[(b * N + p) * K + lab] = logf(fminf(fmaxf(probs[i], crf::kProbFloor), 1.0f));
  }
}

struct Update {
  const float* neg_unary;
  float* q;    // written with Q (the scratch of the update), or null after the last iteration
  float* out;  // (B, K, N) after the last iteration, else null
  const int64_t* num_labels;
  int B, N, K, G;
  const int32_t* entry_row[2];
  const float* slice_w[2];  // n and the Potts weight folded in
  const float* table[2];    // the filtered tables (messages), or null at step 0
  int D[2];
};

// One group of G lanes per pixel; every lane of a warp runs the shuffles.
__global__ void update_kernel(Update u, float* scratch) {
  const int pixels = u.B * u.N;
  const int64_t total = (static_cast<int64_t>(pixels) * u.G + 31) / 32 * 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += stride) {
    const int P = static_cast<int>(t / u.G), lane = static_cast<int>(t % u.G);
    const bool active = P < pixels;
    const int b = active ? P / u.N : 0;
    int kb = u.K;
    if (active && u.num_labels != nullptr) {  // clamped: values are checked by the Python API
      const int64_t n = u.num_labels[b];
      kb = n < 1 ? 1 : (n < u.K ? static_cast<int>(n) : u.K);
    }
    const int row = P * u.K;
    float mx = -INFINITY;
    if (active) {
      for (int lab = lane; lab < kb; lab += u.G) {
        // -U minus the Potts terms -w n filtered (folded into the slice weights)
        float e = u.neg_unary[row + lab];
        if (u.table[0] != nullptr) {
          for (int f = 0; f < 2; ++f) {
            float m = 0.f;
            for (int r = 0; r < u.D[f]; ++r) {
              const int ei = P * u.D[f] + r;
              m += u.slice_w[f][ei] * u.table[f][u.entry_row[f][ei] * u.K + lab];
            }
            e += m;
          }
        }
        scratch[row + lab] = e;
        mx = fmaxf(mx, e);
      }
    }
    for (int off = u.G / 2; off > 0; off /= 2) {
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off, u.G));
    }
    float sum = 0.f;
    if (active) {
      for (int lab = lane; lab < kb; lab += u.G) {
        const float x = expf(scratch[row + lab] - mx);
        scratch[row + lab] = x;
        sum += x;
      }
    }
    for (int off = u.G / 2; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off, u.G);
    if (!active) continue;
    for (int lab = lane; lab < u.K; lab += u.G) {
      const float q = lab < kb ? scratch[row + lab] / sum : 0.f;
      if (u.out != nullptr) {
        u.out[(static_cast<int64_t>(b) * u.K + lab) * u.N + P % u.N] = q;
      } else {
        u.q[row + lab] = q;
      }
    }
  }
}

// Splat `in` (B N, K) onto the lattice and blur it; returns the table holding
// the result.
cudaError_t filter(const Lattice& l, const float* in, int K, float* partial, float* const* tables,
                   const float** result, cudaStream_t stream) {
  splat_chunks_kernel<<<blocks_for(static_cast<int64_t>(l.chunks_max) * K), kThreads, 0,
                        stream>>>(l, in, K, partial);
  splat_rows_kernel<<<blocks_for(static_cast<int64_t>(l.M) * K), kThreads, 0, stream>>>(
      l, partial, K, tables[0]);
  for (int j = 0; j < l.D; ++j) {
    blur_kernel<<<blocks_for(static_cast<int64_t>(l.M) * K), kThreads, 0, stream>>>(
        l, j, tables[j % 2], K, tables[(j + 1) % 2]);
  }
  *result = tables[l.D % 2];
  return cudaGetLastError();
}

}  // namespace

int64_t crf_max_group(int64_t N, int64_t K) {
  const int64_t per_image = N * (crf::kBilateralDim + 1);
  int64_t b = kGroupEntries / per_image;
  if (b < 1) b = 1;
  if (b > kMaxEntries / per_image) b = kMaxEntries / per_image;
  if (b > kMaxValues / (per_image * K)) b = kMaxValues / (per_image * K);
  return b;
}

size_t crf_table_bytes(int64_t B, int64_t N, int d) {
  return table_layout(nullptr, B, N, d).bytes;
}

cudaError_t crf_table_build(const crf::LatticeSpec& spec, const uint8_t* image, int64_t B,
                            int64_t H, int64_t W, void* table, int64_t* points,
                            cudaStream_t stream) {
  const int64_t N = H * W;
  Table t = table_layout(table, B, N, spec.d);
  const int slots = static_cast<int>(B * t.cap);
  cudaError_t err;
  if ((err = cudaMemsetAsync(t.keys, 0xff, static_cast<size_t>(slots) * sizeof(uint64_t),
                             stream)) != cudaSuccess)
    return err;
  if ((err = cudaMemsetAsync(points, 0, 2 * sizeof(int64_t), stream)) != cudaSuccess) return err;
  insert_kernel<<<blocks_for(B * N), kThreads, 0, stream>>>(
      spec, image, static_cast<int>(B), static_cast<int>(H), static_cast<int>(W), t, points);
  occupied_kernel<<<blocks_for(slots), kThreads, 0, stream>>>(t.keys, t.occupied, slots);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if ((err = cub::DeviceScan::ExclusiveSum(t.temp, t.temp_bytes, t.occupied, t.slot_row, slots,
                                           stream)) != cudaSuccess)
    return err;
  count_kernel<<<1, 1, 0, stream>>>(t.occupied, t.slot_row, slots, points);
  return cudaGetLastError();
}

size_t crf_lattice_bytes(int64_t B, int64_t N, int d, int64_t M) {
  return lattice_layout(nullptr, B, N, d, M).bytes;
}

cudaError_t crf_lattice_build(const crf::LatticeSpec& spec, int64_t B, int64_t N, int64_t M,
                              const void* table, void* lattice, cudaStream_t stream) {
  const Table t = table_layout(table, B, N, spec.d);
  Lattice l = lattice_layout(lattice, B, N, spec.d, M);
  const int slots = static_cast<int>(B * t.cap);
  rows_kernel<<<blocks_for(slots), kThreads, 0, stream>>>(t, slots, l);
  entries_kernel<<<blocks_for(l.E), kThreads, 0, stream>>>(t, l, static_cast<int>(N), spec.alpha);
  cudaError_t err;
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if ((err = cub::DeviceRadixSort::SortPairs(l.temp, l.temp_bytes, as_unsigned(l.entry_row),
                                             as_unsigned(l.sorted_row), l.entry_index,
                                             l.sorted_entry, l.E, 0, l.end_bit, stream)) !=
      cudaSuccess)
    return err;
  starts_kernel<<<blocks_for(l.E), kThreads, 0, stream>>>(t, l);
  chunk_count_kernel<<<blocks_for(M + 1), kThreads, 0, stream>>>(l);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  if ((err = cub::DeviceScan::ExclusiveSum(l.temp, l.temp_bytes, l.chunk_count, l.chunk_first,
                                           l.M + 1, stream)) != cudaSuccess)
    return err;
  chunk_rows_kernel<<<blocks_for(M), kThreads, 0, stream>>>(l);
  neighbours_kernel<<<blocks_for(M * l.D), kThreads, 0, stream>>>(spec, t, l);
  return cudaGetLastError();
}

size_t crf_mean_field_bytes(int64_t B, int64_t N, int64_t K, const int64_t* M) {
  int chunks_max[2];
  for (int f = 0; f < 2; ++f) {
    const int d = f == 0 ? crf::kGaussianDim : crf::kBilateralDim;
    chunks_max[f] = lattice_layout(nullptr, B, N, d, M[f]).chunks_max;
  }
  return mean_field_layout(nullptr, B, N, K, M, chunks_max).bytes;
}

cudaError_t crf_mean_field(const float* probs, const int64_t* num_labels, float* out, int64_t B,
                           int64_t N, int64_t K, int64_t iterations, const float* compat,
                           const crf::LatticeSpec* specs, const int64_t* M,
                           void* const* lattices, void* workspace, cudaStream_t stream) {
  Lattice l[2];
  int chunks_max[2];
  for (int f = 0; f < 2; ++f) {
    l[f] = lattice_layout(lattices[f], B, N, specs[f].d, M[f]);
    chunks_max[f] = l[f].chunks_max;
  }
  const MeanField m = mean_field_layout(workspace, B, N, K, M, chunks_max);
  const int pixels = static_cast<int>(B * N), k = static_cast<int>(K);
  cudaError_t err;
  for (int f = 0; f < 2; ++f) {  // row M of each table stays zero
    for (int s = 0; s < 2; ++s) {
      if ((err = cudaMemsetAsync(m.tables[f][s], 0, m.table_bytes[f], stream)) != cudaSuccess)
        return err;
    }
  }
  // the normalisation: the filter of ones, as a K = 1 table; then folded in
  fill_kernel<<<blocks_for(pixels), kThreads, 0, stream>>>(m.q, pixels, 1.f);
  for (int f = 0; f < 2; ++f) {
    const float* filtered = nullptr;
    if ((err = filter(l[f], m.q, 1, m.partial[f], m.tables[f], &filtered, stream)) !=
        cudaSuccess)
      return err;
    norm_kernel<<<blocks_for(pixels), kThreads, 0, stream>>>(l[f], filtered, pixels);
    fold_kernel<<<blocks_for(l[f].E), kThreads, 0, stream>>>(l[f], compat[f]);
  }
  unary_kernel<<<blocks_for(B * N * K), kThreads, 0, stream>>>(probs, m.neg_unary,
                                                               static_cast<int>(B),
                                                               static_cast<int>(N), k);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  Update u{};
  u.neg_unary = m.neg_unary;
  u.num_labels = num_labels;
  u.B = static_cast<int>(B);
  u.N = static_cast<int>(N);
  u.K = k;
  u.G = 1;
  while (u.G < k && u.G < 32) u.G *= 2;
  for (int f = 0; f < 2; ++f) {
    u.entry_row[f] = l[f].entry_row;
    u.slice_w[f] = l[f].slice_w;
    u.D[f] = l[f].D;
  }
  const unsigned update_blocks = blocks_for(static_cast<int64_t>(pixels) * u.G);
  // step 0 normalises exp(-U); step s > 0 is iteration s
  for (int64_t step = 0; step <= iterations; ++step) {
    if (step > 0) {
      for (int f = 0; f < 2; ++f) {
        const float* filtered = nullptr;
        if ((err = filter(l[f], m.q, k, m.partial[f], m.tables[f], &filtered, stream)) !=
            cudaSuccess)
          return err;
        u.table[f] = filtered;
      }
    }
    u.out = step == iterations ? out : nullptr;
    u.q = step == iterations ? nullptr : m.q;
    update_kernel<<<update_blocks, kThreads, 0, stream>>>(u, m.q);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace wsss_fast
