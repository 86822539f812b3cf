// The permutohedral lattice of the dense CRF (Adams et al. 2010, as pydensecrf
// builds it in permutohedral.cpp), shared by the CPU kernel and the CUDA device
// code: no torch, no CUDA headers; __host__ __device__ under nvcc. The Python
// twin is wsss_fast/reference/dense_crf.py (class Lattice).
//
// A pixel's features are f_i = raw_i / sigma_i with raw = (x, y) (Gaussian
// kernel, d = 2) or (x, y, r, g, b) (bilateral, d = 5). They are elevated onto
// the hyperplane sum = 0 of R^(d+1), and the pixel splats onto the d + 1
// corners of its enclosing simplex with barycentric weights. Each step is done
// in float32 in pydensecrf's order of operations (and without fused
// multiply-adds on the device), so both pick the same simplex and weights.
//
// A lattice point (its key: d integer coordinates, the last one implied by
// sum = 0; all coordinates are congruent to the remainder k in 0..d modulo
// d + 1) is stored as one 64-bit code: k + (d + 1) * (mixed-radix number of the
// quotients q_i = (key_i - k) / (d + 1) over the box the features can reach).
// The box is derived from the feature ranges before any pixel is seen
// (make_lattice_spec), so codes compare and hash as plain integers on both
// devices; a lattice whose box needs more than 2^62 codes is refused.
#pragma once

#include <cmath>
#include <cstdint>

#ifndef WSSS_HD
#if defined(__CUDACC__)
#define WSSS_HD __host__ __device__
#else
#define WSSS_HD
#endif
#endif

namespace wsss_fast {
namespace crf {

constexpr int kMaxDim = 5;                 // bilateral: x, y, r, g, b
constexpr int kGaussianDim = 2;            // x, y
constexpr int kBilateralDim = 5;
constexpr uint64_t kNoCode = ~uint64_t{0};  // not a lattice point
constexpr float kProbFloor = 1e-5f;        // unary = -log(max(p, 1e-5))

// float32 arithmetic exactly as written: the device would otherwise fuse
// a * b + c into one rounding, which pydensecrf's SSE code does not.
WSSS_HD inline float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
WSSS_HD inline float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
WSSS_HD inline float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

struct LatticeSpec {
  int d = 0;                      // feature dimensions
  float sigma[kMaxDim] = {};      // f_i = raw_i / sigma_i
  float scale[kMaxDim] = {};      // diagonal of the elevation matrix
  int64_t qlo[kMaxDim] = {};      // lowest key quotient of each coordinate
  int64_t radix[kMaxDim] = {};    // number of key quotients of each coordinate
  uint64_t stride[kMaxDim] = {};  // mixed-radix place values
  float alpha = 0.f;              // slice scale 1 / (1 + 2^-d)
};

// Fills spec for features raw_i / sigma_i with raw_i in [0, raw_max_i] (host
// only). Returns false when the lattice box has more than 2^62 codes or an
// elevated coordinate could exceed 2^22 (where float32 no longer holds the
// lattice's integers exactly); sigma must be > 0.
inline bool make_lattice_spec(int d, const double* sigma, const double* raw_max,
                              LatticeSpec* spec) {
  spec->d = d;
  const int D = d + 1;
  // pydensecrf: float inv_std_dev = sqrt(2/3) (d + 1); the factor of
  // coordinate i is 1 / sqrt((i + 1)(i + 2)) * inv_std_dev in double, rounded.
  const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * D);
  double top[kMaxDim];  // largest f_i * scale_i
  for (int i = 0; i < d; ++i) {
    spec->sigma[i] = static_cast<float>(sigma[i]);
    spec->scale[i] =
        static_cast<float>(1.0 / std::sqrt(static_cast<double>((i + 2) * (i + 1))) * inv_std_dev);
    top[i] = raw_max[i] / static_cast<double>(spec->sigma[i]) * spec->scale[i];
  }
  spec->alpha = 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-d)));
  // elevated_0 = sum_i cf_i; elevated_j = sum_{i >= j} cf_i - j cf_{j-1}, cf_i
  // in [0, top_i]. A key coordinate is within 3 (d + 1) of its elevated one
  // (rounding, the wrap of the rank, the canonical simplex); 4 (d + 1) + 2 is
  // kept, and one more quotient on each side.
  const double margin = 4.0 * D + 2.0;  // and one quotient beyond: room for the neighbours
  double codes = D;
  for (int j = 0; j < d; ++j) {
    double hi = 0.0;
    for (int i = j; i < d; ++i) hi += top[i];
    const double lo = j == 0 ? 0.0 : -j * top[j - 1];
    if (!(hi < 4194304.0 && lo > -4194304.0)) return false;  // 2^22
    const int64_t qlo = static_cast<int64_t>(std::floor((lo - margin) / D)) - 1;
    const int64_t qhi = static_cast<int64_t>(std::ceil((hi + margin) / D)) + 1;
    spec->qlo[j] = qlo;
    spec->radix[j] = qhi - qlo + 1;
    spec->stride[j] = j == 0 ? 1 : spec->stride[j - 1] * static_cast<uint64_t>(spec->radix[j - 1]);
    codes *= static_cast<double>(spec->radix[j]);
  }
  if (d > 0) {  // the last coordinate, elevated_d = -d cf_{d-1}, is implied
    if (!(d * top[d - 1] < 4194304.0)) return false;
  }
  return codes < 4.611686018427388e18;  // 2^62
}

// The blur reads two neighbours of a lattice point along each direction j
// (0..d): side 0 is key - 1 with key_j + d, side 1 is key + 1 with key_j - d
// (for j = d only the d stored coordinates move). Both have remainder
// k' = k -/+ 1 modulo d + 1 and quotients that differ by at most 1, so the
// neighbour's code is the point's code plus a constant that depends only on
// (k, j, side). The box keeps every reachable point at least one quotient away
// from its faces, so the sum is always the neighbour's code (a point that may
// or may not exist).
WSSS_HD inline int64_t neighbour_delta(const LatticeSpec& s, int k, int j, int side) {
  const int D = s.d + 1;
  const int step = side == 0 ? -1 : 1;
  const int kn = (k + step + D) % D;
  const int carry = (k + step - kn) / D;  // -1, 0 or 1
  int64_t delta = kn - k;
  for (int i = 0; i < s.d; ++i) {
    delta += static_cast<int64_t>(D) * (carry - (i == j ? step : 0)) *
             static_cast<int64_t>(s.stride[i]);
  }
  return delta;
}

// The d + 1 corners (codes, by remainder 0..d) of the simplex enclosing the
// pixel with raw features raw[0..d-1], and its barycentric weights. Returns
// false if a corner lies outside the spec's box (not for raw within the
// raw_max given to make_lattice_spec).
WSSS_HD inline bool pixel_simplex(const LatticeSpec& s, const float* raw, uint64_t* code,
                                  float* weight) {
  const int d = s.d, D = d + 1;
  const float inv_d1 = 1.0f / static_cast<float>(D);
  const float d1 = static_cast<float>(D);
  // elevate: sm accumulates cf from the last coordinate down
  float elevated[kMaxDim + 1];
  float sm = 0.f;
  for (int j = d; j > 0; --j) {
    const float cf = mul_rn(raw[j - 1] / s.sigma[j - 1], s.scale[j - 1]);
    elevated[j] = sub_rn(sm, mul_rn(static_cast<float>(j), cf));
    sm = add_rn(sm, cf);
  }
  elevated[0] = sm;
  // the nearest remainder-0 point, coordinate by coordinate (half to even):
  // rem0 = (d + 1) * quot
  float rem0[kMaxDim + 1];
  int quot[kMaxDim + 1];
  int sum = 0;
  for (int i = 0; i <= d; ++i) {
    const float v = rintf(mul_rn(inv_d1, elevated[i]));
    rem0[i] = mul_rn(v, d1);
    quot[i] = static_cast<int>(v);
    sum += quot[i];
  }
  // rank_i: how many coordinates have a larger residual elevated - rem0 than
  // coordinate i (of two equal ones the earlier counts as larger); then the
  // rank is shifted by the sum of the rounded coordinates, back onto the plane
  int rank[kMaxDim + 1];
  for (int i = 0; i <= d; ++i) rank[i] = 0;
  for (int i = 0; i < d; ++i) {
    const float di = sub_rn(elevated[i], rem0[i]);
    for (int j = i + 1; j <= d; ++j) {
      const int smaller = di < sub_rn(elevated[j], rem0[j]) ? 1 : 0;
      rank[i] += smaller;
      rank[j] += 1 - smaller;
    }
  }
  for (int i = 0; i <= d; ++i) {
    rank[i] += sum;
    if (rank[i] < 0) {
      rank[i] += D;
      rem0[i] = add_rn(rem0[i], d1);
      ++quot[i];
    } else if (rank[i] > d) {
      rank[i] -= D;
      rem0[i] = sub_rn(rem0[i], d1);
      --quot[i];
    }
  }
  // barycentric weights, accumulated in coordinate order
  float bary[kMaxDim + 2];
  for (int i = 0; i <= d + 1; ++i) bary[i] = 0.f;
  for (int i = 0; i <= d; ++i) {
    const float v = mul_rn(sub_rn(elevated[i], rem0[i]), inv_d1);
    bary[d - rank[i]] = add_rn(bary[d - rank[i]], v);
    bary[d - rank[i] + 1] = sub_rn(bary[d - rank[i] + 1], v);
  }
  bary[0] = add_rn(bary[0], add_rn(1.f, bary[d + 1]));
  // corner of remainder k: rem0 + the canonical simplex's vertex k, whose
  // coordinates are k (rank <= d - k) or k - (d + 1): quotients quot or quot - 1
  bool inside = true;
  for (int k = 0; k <= d; ++k) {
    uint64_t rest = 0;
    bool in_box = true;
    for (int i = 0; i < d; ++i) {
      const int64_t q = quot[i] - (rank[i] <= d - k ? 0 : 1) - s.qlo[i];
      in_box = in_box && q >= 0 && q < s.radix[i];
      rest += static_cast<uint64_t>(q) * s.stride[i];
    }
    code[k] = in_box ? static_cast<uint64_t>(k) + static_cast<uint64_t>(D) * rest : kNoCode;
    inside = inside && in_box;
    weight[k] = bary[k];
  }
  return inside;
}

// 64-bit mixer (splitmix64's finaliser) for the hash tables of codes.
WSSS_HD inline uint64_t hash_code(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace crf
}  // namespace wsss_fast
