// Dense CRF mean field in pydensecrf's formulation
// (wsss_fast/reference/dense_crf.py), CPU kernel.
//
// Per image, two permutohedral lattices (csrc/dense_crf_lattice.h), Gaussian
// (d = 2) and bilateral (d = 5), built once:
//  * the simplex of every pixel (codes and barycentric weights), in parallel
//    over rows;
//  * the lattice points numbered in order of first appearance (pixel by
//    pixel, remainder by remainder, as pydensecrf numbers them): chunks of
//    pixels number their own corners in hash tables of codes in parallel,
//    then one sequential pass merges the chunks' (far fewer) distinct codes;
//  * the splat as a gather: each point's entries sorted by pixel (a counting
//    sort, each chunk filling its own slots in parallel), so that a point
//    sums its pixels in pydensecrf's order and the points are independent;
//  * the blur neighbours of every point along the d + 1 directions;
//  * the symmetric normalisation n = 1 / sqrt(filter(1)), then folded into
//    the weights: a splat entry's weight times n of its pixel, a pixel's slice
//    weights times alpha, its n and the Potts weight w.
// An iteration: per kernel a splat of Q (parallel over ranges of points
// holding about equal numbers of entries) and d + 1 blur passes (parallel
// over points); then one pass over the pixels (parallel) slices both kernels
// onto -U (pydensecrf subtracts the Potts term -w n filtered) and normalises
// (exp_inplace: Cephes exp, as Eigen's, in the widest vectors the CPU has, a
// tile of pixels at a time), writing Q for the next splats or,
// after the last iteration, into the (K, H, W) output.
// Values are float32 rows of Kp labels (K rounded up to the vector width);
// row 0 of a value table is the zero that stands for a missing neighbour.
// Parallelism: whole images in parallel (one thread each, no barrier) when
// B >= threads, else one image at a time with every step parallel inside it.
// The result does not depend on the number of threads.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../dense_crf_checks.h"
#include "../dense_crf_lattice.h"
#include "vec.h"

namespace wsss_fast {
namespace {

using crf::LatticeSpec;
using FVec = simd::Vec<float>;
constexpr int64_t kL = simd::kLanes<float>;
constexpr float kLowest = -std::numeric_limits<float>::max();
constexpr int64_t kMaxChunks = 16;  // pixel chunks of the lattice build
constexpr int64_t kPrefetch = 8;    // rows ahead that the blur fetches
constexpr int64_t kTile = 16;       // vectors of labels normalised together (pixels: 16 / (Kp / 4))

// Threads that at::parallel_for would use here: 1 inside a parallel region
// (images in parallel), where it runs inline.
int64_t threads_here() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(work_per_item, 1));
}

// exp of n floats in place (n a multiple of 4) with the widest vectors the CPU
// has: 16 lanes (AVX-512F), 8 (AVX2) or 4 (baseline SSE2); the same bits at
// every width (simd::exp_at), chosen once at load time.
typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef float F16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));

template <typename V, typename I>
__attribute__((always_inline)) inline void exp_run(float* x, int64_t n) {
  constexpr int64_t lanes = sizeof(V) / sizeof(float);
  int64_t i = 0;
  for (; i + lanes <= n; i += lanes) simd::exp_at<V, I>(x + i);
  for (; i < n; i += kL) simd::exp_at<FVec, simd::FloatMask>(x + i);
}

__attribute__((target("avx512f"))) void exp_avx512(float* x, int64_t n) {
  exp_run<F16, I16>(x, n);
}
__attribute__((target("avx2"))) void exp_avx2(float* x, int64_t n) { exp_run<F8, I8>(x, n); }
void exp_sse(float* x, int64_t n) { exp_run<FVec, simd::FloatMask>(x, n); }

using ExpFn = void (*)(float*, int64_t);
ExpFn widest_exp() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return exp_avx512;
  if (__builtin_cpu_supports("avx2")) return exp_avx2;
  return exp_sse;
}
const ExpFn exp_inplace = widest_exp();

// Lattice codes -> rows 1, 2, ... in order of first insertion (open
// addressing, linear probing, grows at half load).
class CodeTable {
 public:
  explicit CodeTable(int64_t expected) {
    int64_t cap = 1024;
    while (cap < 2 * expected) cap *= 2;
    rehash(cap);
  }

  int32_t insert(uint64_t code) {
    if (2 * (size() + 1) > static_cast<int64_t>(keys_.size())) rehash(2 * keys_.size());
    uint64_t h = crf::hash_code(code) & mask_;
    while (rows_[h] != 0) {
      if (keys_[h] == code) return rows_[h];
      h = (h + 1) & mask_;
    }
    keys_[h] = code;
    codes_.push_back(code);
    return rows_[h] = static_cast<int32_t>(size());
  }

  // Row of code, 0 if absent.
  int32_t find(uint64_t code) const {
    uint64_t h = crf::hash_code(code) & mask_;
    while (rows_[h] != 0) {
      if (keys_[h] == code) return rows_[h];
      h = (h + 1) & mask_;
    }
    return 0;
  }

  int64_t size() const { return static_cast<int64_t>(codes_.size()); }
  uint64_t code_of(int64_t row) const { return codes_[row - 1]; }

 private:
  void rehash(size_t cap) {
    keys_.assign(cap, 0);
    rows_.assign(cap, 0);
    mask_ = cap - 1;
    for (size_t r = 0; r < codes_.size(); ++r) {
      uint64_t h = crf::hash_code(codes_[r]) & mask_;
      while (rows_[h] != 0) h = (h + 1) & mask_;
      keys_[h] = codes_[r];
      rows_[h] = static_cast<int32_t>(r + 1);
    }
  }

  std::vector<uint64_t> keys_;
  std::vector<int32_t> rows_;  // 0: empty slot
  std::vector<uint64_t> codes_;
  uint64_t mask_ = 0;
};

// One kernel's lattice over the N pixels of one image.
struct Lattice {
  int D = 0;                     // d + 1 corners per pixel, d + 1 blur directions
  int64_t M = 0;                 // points: value-table rows 1..M
  std::vector<int32_t> vertex;   // (N, D) row of each corner
  std::vector<float> slice_w;    // (N, D) barycentric weight * alpha (later * n * w)
  std::vector<int32_t> start;    // (M + 2) splat entries of row v: [start[v], start[v + 1])
  std::vector<int32_t> pixel;    // (N * D) the entries' pixels, by row, then pixel
  std::vector<float> splat_w;    // (N * D) their barycentric weights (later * n)
  std::vector<int32_t> nbr;      // (D, M + 1, 2) rows of the blur neighbours (0: none)
  std::vector<int64_t> parts;    // row ranges of about equal splat work
  std::vector<float> norm;       // (N) symmetric normalisation
};

// Rows are processed in blocks of up to kBlock vectors whose accumulators
// stay in registers: with_block(nv, f) calls f(Block<nv>{}).
constexpr int64_t kBlock = 8;
template <int NV>
using Block = std::integral_constant<int, NV>;

template <typename F>
void with_block(int64_t nv, F&& f) {
  switch (nv) {
    case 1: f(Block<1>{}); break;
    case 2: f(Block<2>{}); break;
    case 3: f(Block<3>{}); break;
    case 4: f(Block<4>{}); break;
    case 5: f(Block<5>{}); break;
    case 6: f(Block<6>{}); break;
    case 7: f(Block<7>{}); break;
    default: f(Block<8>{}); break;
  }
}

// Calls f(c0, nv) for the blocks [c0, c0 + nv * kL) of a row of Kp lanes.
template <typename F>
void for_each_block(int64_t Kp, F&& f) {
  for (int64_t c0 = 0; c0 < Kp; c0 += kBlock * kL) f(c0, std::min(kBlock, (Kp - c0) / kL));
}

// V[v] = sum of splat_w * in[pixel] over row v's entries, rows [v0, v1),
// lanes [c0, c0 + NV * kL).
template <int NV>
void splat_rows(const Lattice& lat, const float* in, float* V, int64_t Kp, int64_t c0,
                int64_t v0, int64_t v1) {
  for (int64_t v = v0; v < v1; ++v) {
    FVec acc[NV] = {};
    for (int32_t e = lat.start[v]; e < lat.start[v + 1]; ++e) {
      const FVec w = simd::broadcast(lat.splat_w[e]);
      const float* src = in + static_cast<int64_t>(lat.pixel[e]) * Kp + c0;
      for (int i = 0; i < NV; ++i) acc[i] += w * simd::load(src + i * kL);
    }
    for (int i = 0; i < NV; ++i) simd::store(V + v * Kp + c0 + i * kL, acc[i]);
  }
}

void splat(const Lattice& lat, const float* in, float* V, int64_t Kp) {
  const int64_t nparts = static_cast<int64_t>(lat.parts.size()) - 1;
  at::parallel_for(0, nparts, 1, [&](int64_t p0, int64_t p1) {
    for_each_block(Kp, [&](int64_t c0, int64_t nv) {
      with_block(nv, [&](auto b) {
        splat_rows<decltype(b)::value>(lat, in, V, Kp, c0, lat.parts[p0], lat.parts[p1]);
      });
    });
  });
}

// out[v] = in[v] + (in[n1] + in[n2]) / 2 along direction j.
void blur(const Lattice& lat, const float* in, float* out, int j, int64_t Kp) {
  const int32_t* nb = lat.nbr.data() + static_cast<int64_t>(j) * (lat.M + 1) * 2;
  at::parallel_for(1, lat.M + 1, grain_for(3 * Kp), [&](int64_t v0, int64_t v1) {
    const FVec half = simd::broadcast(0.5f);
    for (int64_t v = v0; v < v1; ++v) {
      if (v + kPrefetch < v1) {  // the neighbours' rows are scattered: fetch them ahead
        for (int s = 0; s < 2; ++s) {
          const float* ahead = in + static_cast<int64_t>(nb[2 * (v + kPrefetch) + s]) * Kp;
          for (int64_t c = 0; c < Kp; c += 16) __builtin_prefetch(ahead + c);
        }
      }
      const float* a = in + static_cast<int64_t>(nb[2 * v]) * Kp;
      const float* b = in + static_cast<int64_t>(nb[2 * v + 1]) * Kp;
      const float* o = in + v * Kp;
      float* dst = out + v * Kp;
      for (int64_t c = 0; c < Kp; c += kL) {
        simd::store(dst + c, simd::load(o + c) + half * (simd::load(a + c) + simd::load(b + c)));
      }
    }
  });
}

// Splat, blur along directions 0..d; returns the table holding the result
// (tables[0] or tables[1], each (M + 1, Kp) with row 0 zero).
float* filter_to_table(const Lattice& lat, const float* in, float* const* tables, int64_t Kp) {
  splat(lat, in, tables[0], Kp);
  for (int j = 0; j < lat.D; ++j) blur(lat, tables[j % 2], tables[(j + 1) % 2], j, Kp);
  return tables[lat.D % 2];
}

// acc = sum over pixel p's corners of slice_w * table[vertex], lanes
// [c0, c0 + NV * kL).
template <int NV>
inline void slice_pixel(const Lattice& lat, const float* table, int64_t p, int64_t Kp,
                        int64_t c0, FVec* acc) {
  for (int i = 0; i < NV; ++i) acc[i] = FVec{};
  for (int r = 0; r < lat.D; ++r) {
    const FVec w = simd::broadcast(lat.slice_w[p * lat.D + r]);
    const float* row = table + static_cast<int64_t>(lat.vertex[p * lat.D + r]) * Kp + c0;
    for (int i = 0; i < NV; ++i) acc[i] += w * simd::load(row + i * kL);
  }
}

// energy = -U + sum over the kernels of the slice of their filtered table,
// lanes [c0, c0 + NV kL); the slice weights hold the Potts weight w and the
// normalisation n (pydensecrf subtracts -w * n * slice from -U).
template <int NV>
inline void energy_block(const Lattice* lat, const float* const* filtered, const float* neg_unary,
                         int64_t p, int64_t Kp, int64_t c0, float* energy) {
  FVec e[NV], m[NV];
  for (int i = 0; i < NV; ++i) e[i] = simd::load(neg_unary + c0 + i * kL);
  for (int f = 0; f < 2; ++f) {
    slice_pixel<NV>(lat[f], filtered[f], p, Kp, c0, m);
    for (int i = 0; i < NV; ++i) e[i] += m[i];
  }
  for (int i = 0; i < NV; ++i) simd::store(energy + c0 + i * kL, e[i]);
}

void build_lattice(Lattice& lat, const LatticeSpec& spec, const uint8_t* rgb, int64_t H,
                   int64_t W) {
  const int D = spec.d + 1;
  const int64_t N = H * W;
  lat.D = D;
  std::vector<uint64_t> codes(N * D);
  std::vector<float> bary(N * D);
  std::atomic<bool> inside{true};
  at::parallel_for(0, H, grain_for(W * D * 8), [&](int64_t y0, int64_t y1) {
    float raw[crf::kMaxDim];
    for (int64_t y = y0; y < y1; ++y) {
      for (int64_t x = 0; x < W; ++x) {
        const int64_t p = y * W + x;
        raw[0] = static_cast<float>(x);
        raw[1] = static_cast<float>(y);
        for (int c = 0; c + 2 < spec.d; ++c) raw[2 + c] = static_cast<float>(rgb[c * N + p]);
        if (!crf::pixel_simplex(spec, raw, &codes[p * D], &bary[p * D])) inside = false;
      }
    }
  });
  TORCH_CHECK(inside.load(), "dense_crf: internal error: a lattice point outside its box");

  // Rows in order of first appearance (pixel by pixel, corner by corner): each
  // chunk of pixels numbers its own codes in parallel, then the chunks' codes
  // are merged in chunk order; the numbering does not depend on the chunks.
  const int64_t chunks =
      std::clamp<int64_t>(std::min<int64_t>(threads_here(), kMaxChunks), 1,
                          std::max<int64_t>(1, N / 4096));
  const auto first_pixel = [&](int64_t c) { return N * c / chunks; };
  std::vector<CodeTable> local;
  for (int64_t c = 0; c < chunks; ++c) local.emplace_back(first_pixel(c + 1) - first_pixel(c));
  std::vector<std::vector<int8_t>> local_remainder(chunks, std::vector<int8_t>(1, 0));
  lat.vertex.resize(N * D);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      // consecutive pixels often share a corner: remember the last one
      std::vector<uint64_t> last_code(D, crf::kNoCode);
      std::vector<int32_t> last_row(D, 0);
      for (int64_t e = first_pixel(c) * D; e < first_pixel(c + 1) * D; ++e) {
        const int r = static_cast<int>(e % D);
        if (codes[e] != last_code[r]) {
          last_code[r] = codes[e];
          const int64_t before = local[c].size();
          last_row[r] = local[c].insert(codes[e]);
          if (local[c].size() > before) local_remainder[c].push_back(static_cast<int8_t>(r));
        }
        lat.vertex[e] = last_row[r];
      }
    }
  });
  std::vector<int8_t> remainder = std::move(local_remainder[0]);  // of each row
  CodeTable table = std::move(local[0]);
  if (chunks > 1) {
    std::vector<std::vector<int32_t>> global_row(chunks);
    for (int64_t c = 1; c < chunks; ++c) {
      global_row[c].assign(local[c].size() + 1, 0);
      for (int64_t u = 1; u <= local[c].size(); ++u) {
        const int64_t before = table.size();
        global_row[c][u] = table.insert(local[c].code_of(u));
        if (table.size() > before) remainder.push_back(local_remainder[c][u]);
      }
    }
    at::parallel_for(1, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        for (int64_t e = first_pixel(c) * D; e < first_pixel(c + 1) * D; ++e) {
          lat.vertex[e] = global_row[c][lat.vertex[e]];
        }
      }
    });
  }
  const int64_t M = table.size();
  lat.M = M;

  // splat entries by row, then pixel: a counting sort, each chunk filling its
  // own slots of every row
  std::vector<int32_t> slot(chunks * (M + 1), 0);  // [chunk][row]: count, then next slot
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int32_t* count = slot.data() + c * (M + 1);
      for (int64_t e = first_pixel(c) * D; e < first_pixel(c + 1) * D; ++e) ++count[lat.vertex[e]];
    }
  });
  lat.start.assign(M + 2, 0);
  int32_t pos = 0;
  for (int64_t v = 1; v <= M; ++v) {
    lat.start[v] = pos;
    for (int64_t c = 0; c < chunks; ++c) {
      const int32_t n = slot[c * (M + 1) + v];
      slot[c * (M + 1) + v] = pos;
      pos += n;
    }
  }
  lat.start[M + 1] = pos;
  lat.pixel.resize(N * D);
  lat.splat_w.resize(N * D);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int32_t* next = slot.data() + c * (M + 1);
      for (int64_t e = first_pixel(c) * D; e < first_pixel(c + 1) * D; ++e) {
        const int32_t at = next[lat.vertex[e]]++;
        lat.pixel[at] = static_cast<int32_t>(e / D);
        lat.splat_w[at] = bary[e];
      }
    }
  });
  lat.slice_w.resize(N * D);
  at::parallel_for(0, N * D, grain_for(1), [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) lat.slice_w[e] = bary[e] * spec.alpha;
  });

  // ranges of rows with about equal numbers of splat entries
  const int64_t nparts = std::min<int64_t>(M, 8 * threads_here());
  lat.parts.assign(1, 1);
  for (int64_t t = 1; t < nparts; ++t) {
    const int32_t target = static_cast<int32_t>(N * D * t / nparts);
    lat.parts.push_back(
        std::max(lat.parts.back(),
                 static_cast<int64_t>(std::lower_bound(lat.start.begin() + 1,
                                                       lat.start.end() - 1, target) -
                                      lat.start.begin())));
  }
  lat.parts.push_back(M + 1);

  std::vector<int64_t> delta(D * D * 2);  // [remainder][direction][side]
  for (int k = 0; k < D; ++k) {
    for (int j = 0; j < D; ++j) {
      for (int side = 0; side < 2; ++side) {
        delta[(k * D + j) * 2 + side] = crf::neighbour_delta(spec, k, j, side);
      }
    }
  }
  lat.nbr.assign(static_cast<size_t>(D) * (M + 1) * 2, 0);
  at::parallel_for(1, M + 1, grain_for(D * 64), [&](int64_t v0, int64_t v1) {
    for (int64_t v = v0; v < v1; ++v) {
      const uint64_t code = table.code_of(v);
      const int64_t* dk = delta.data() + remainder[v] * D * 2;
      for (int j = 0; j < D; ++j) {
        for (int side = 0; side < 2; ++side) {
          lat.nbr[(j * (M + 1) + v) * 2 + side] =
              table.find(code + static_cast<uint64_t>(dk[j * 2 + side]));
        }
      }
    }
  });

  // n = 1 / sqrt(filter(1) + 1e-20), the filter of ones in lane 0
  std::vector<float> ones(N * kL, 0.f), t0((M + 1) * kL, 0.f), t1((M + 1) * kL, 0.f);
  for (int64_t p = 0; p < N; ++p) ones[p * kL] = 1.f;
  float* tables[2] = {t0.data(), t1.data()};
  const float* filtered = filter_to_table(lat, ones.data(), tables, kL);
  lat.norm.resize(N);
  at::parallel_for(0, N, grain_for(D * kL), [&](int64_t p0, int64_t p1) {
    FVec acc;
    for (int64_t p = p0; p < p1; ++p) {
      slice_pixel<1>(lat, filtered, p, kL, 0, &acc);
      lat.norm[p] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(acc[0]) + 1e-20));
    }
  });
  // from now on the splat reads Q: its weights take n of their pixel
  at::parallel_for(0, N * D, grain_for(2), [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) lat.splat_w[e] *= lat.norm[lat.pixel[e]];
  });
}

// The mean field of one image. probs: its (K_all, H, W) planes, of which the
// first K are used; out: (K_all, H, W), zero beyond K (already zeroed).
void mean_field_image(const uint8_t* rgb, const float* probs, int64_t K, int64_t H, int64_t W,
                      const CrfParams& prm, const LatticeSpec* specs, float* out) {
  const int64_t N = H * W;
  const int64_t Kp = (K + kL - 1) / kL * kL;
  Lattice lat[2];
  for (int f = 0; f < 2; ++f) build_lattice(lat[f], specs[f], rgb, H, W);
  // the slice weights take n of their pixel and the Potts weight
  const float compat[2] = {static_cast<float>(prm.gaussian_compat),
                           static_cast<float>(prm.bilateral_compat)};
  for (int f = 0; f < 2; ++f) {
    at::parallel_for(0, N, grain_for(2 * lat[f].D), [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        for (int r = 0; r < lat[f].D; ++r) lat[f].slice_w[p * lat[f].D + r] *= lat[f].norm[p] * compat[f];
      }
    });
  }

  // -U = log(clip(p, 1e-5, 1)), pixel-major, lanes beyond K zero
  std::vector<float> neg_unary(N * Kp, 0.f);
  at::parallel_for(0, N, grain_for(K * 16), [&](int64_t p0, int64_t p1) {
    for (int64_t l = 0; l < K; ++l) {
      for (int64_t p = p0; p < p1; ++p) {
        const float v = std::min(std::max(probs[l * N + p], crf::kProbFloor), 1.0f);
        neg_unary[p * Kp + l] = std::log(v);
      }
    }
  });

  std::vector<float> q(N * Kp);  // the marginals, pixel-major, lanes beyond K zero
  std::vector<float> tables[2][2];
  for (int f = 0; f < 2; ++f) {
    for (auto& t : tables[f]) t.assign((lat[f].M + 1) * Kp, 0.f);
  }
  const float* filtered[2] = {nullptr, nullptr};
  // step 0 normalises -U; step s > 0 is mean-field iteration s
  for (int64_t step = 0; step <= prm.iterations; ++step) {
    if (step > 0) {
      for (int f = 0; f < 2; ++f) {
        float* t[2] = {tables[f][0].data(), tables[f][1].data()};
        filtered[f] = filter_to_table(lat[f], q.data(), t, Kp);
      }
    }
    const bool last = step == prm.iterations;
    const simd::FloatMask tail = simd::first_lanes(K - (Kp - kL));
    at::parallel_for(0, N, grain_for(Kp * 24), [&](int64_t p0, int64_t p1) {
      const int64_t tile = std::max<int64_t>(1, kTile * kL / Kp);
      std::vector<float> energy(tile * Kp);
      float mx[kTile], sum[kTile];
      for (int64_t p0t = p0; p0t < p1; p0t += tile) {
        const int64_t n = std::min(tile, p1 - p0t);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t p = p0t + i;
          const float* nu = neg_unary.data() + p * Kp;
          float* e = energy.data() + i * Kp;
          if (step == 0) {
            std::copy(nu, nu + Kp, e);
          } else {
            for_each_block(Kp, [&](int64_t c0, int64_t nv) {
              with_block(nv, [&](auto b) {
                energy_block<decltype(b)::value>(lat, filtered, nu, p, Kp, c0, e);
              });
            });
          }
          // softmax over the first K lanes: the padding never wins the max ...
          simd::store(e + Kp - kL, tail ? simd::load(e + Kp - kL) : simd::broadcast(kLowest));
          FVec vmax = simd::load(e);
          for (int64_t c = kL; c < Kp; c += kL) vmax = simd::max(vmax, simd::load(e + c));
          mx[i] = simd::hmax(vmax);
        }
        // ... the tile's exps in wide vectors
        for (int64_t i = 0; i < n; ++i) {
          float* e = energy.data() + i * Kp;
          const FVec m = simd::broadcast(mx[i]);
          for (int64_t c = 0; c < Kp; c += kL) simd::store(e + c, simd::load(e + c) - m);
        }
        exp_inplace(energy.data(), n * Kp);
        for (int64_t i = 0; i < n; ++i) {  // ... and adds nothing to the sum
          float* e = energy.data() + i * Kp;
          simd::store(e + Kp - kL, tail ? simd::load(e + Kp - kL) : FVec{});
          FVec vsum{};
          for (int64_t c = 0; c < Kp; c += kL) vsum += simd::load(e + c);
          sum[i] = simd::hsum(vsum);
        }
        for (int64_t i = 0; i < n; ++i) {
          const int64_t p = p0t + i;
          const float* e = energy.data() + i * Kp;
          const FVec vsum = simd::broadcast(sum[i]);
          if (last) {
            for (int64_t l = 0; l < K; ++l) out[l * N + p] = e[l] / sum[i];
            continue;
          }
          float* dst = q.data() + p * Kp;
          for (int64_t c = 0; c < Kp; c += kL) simd::store(dst + c, simd::load(e + c) / vsum);
        }
      }
    });
  }
}

at::Tensor dense_crf_cpu(const at::Tensor& image, const at::Tensor& probs,
                         const std::optional<at::Tensor>& num_labels, const CrfParams& prm) {
  const int64_t B = probs.size(0), K = probs.size(1), H = probs.size(2), W = probs.size(3);
  auto out = at::zeros(probs.sizes(), probs.options());
  if (B == 0) return out;
  LatticeSpec specs[2];
  lattice_specs(prm, H, W, specs, "dense_crf");
  std::vector<int64_t> labels(B, K);
  if (num_labels.has_value()) {
    const auto n = num_labels->contiguous();
    const int64_t* np = n.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(np[b] >= 1 && np[b] <= K, "dense_crf: num_labels must be in [1, K = ", K,
                  "], got ", np[b], " for image ", b);
      labels[b] = np[b];
    }
  }
  const auto ic = image.contiguous();
  const auto pc = probs.contiguous();
  const uint8_t* img = ic.const_data_ptr<uint8_t>();
  const float* pr = pc.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  const int64_t N = H * W;
  const auto one = [&](int64_t b) {
    mean_field_image(img + b * 3 * N, pr + b * K * N, labels[b], H, W, prm, specs, o + b * K * N);
  };
  if (B > 1 && B >= at::get_num_threads()) {
    at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) one(b);
    });
  } else {
    for (int64_t b = 0; b < B; ++b) one(b);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(wsss_fast, CPU, m) { m.impl("dense_crf", &dense_crf_op<dense_crf_cpu>); }

}  // namespace wsss_fast
