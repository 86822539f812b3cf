// 16-byte SIMD vectors through the GCC/Clang vector extension, for the CPU
// kernels (32-byte vectors measured 2x slower on the baseline x86-64 build of
// the DRS kernel). Templates reach the vector type through the VecOf struct.
#pragma once

#include <cstdint>
#include <cstring>

namespace wsss_fast {
namespace simd {

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(16)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(16)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 16 / sizeof(T);

template <typename T>
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void store(T* p, const Vec<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}
// Stores the first n (< kLanes) lanes.
template <typename T>
inline void store_partial(T* p, const Vec<T>& v, int64_t n) {
  std::memcpy(p, &v, static_cast<size_t>(n) * sizeof(T));
}
template <typename T>
inline Vec<T> broadcast(T v) {
  return Vec<T>{} + v;
}
template <typename T>
inline Vec<T> abs(const Vec<T>& v) {
  return v < T(0) ? -v : v;
}
// Lane masks of float vectors (what comparisons of Vec<float> return), for
// the vector conditional mask ? a : b.
typedef int32_t FloatMask __attribute__((vector_size(16)));

// The mask of lanes [0, n).
inline FloatMask first_lanes(int64_t n) {
  FloatMask m;
  for (int i = 0; i < 4; ++i) m[i] = i < n ? -1 : 0;
  return m;
}
inline float hsum(const Vec<float>& v) { return (v[0] + v[1]) + (v[2] + v[3]); }
inline float hmax(const Vec<float>& v) {
  const float a = v[0] > v[1] ? v[0] : v[1], b = v[2] > v[3] ? v[2] : v[3];
  return a > b ? a : b;
}
inline Vec<float> max(const Vec<float>& a, const Vec<float>& b) { return a > b ? a : b; }

// exp in place of the lanes of a float vector type V of any width at p (I:
// the int32 vector of its size), by Cephes' algorithm (the one of Eigen's SSE
// pexp, which pydensecrf's mean field uses): x clamped to [-87.336, 88.376]
// (so that 2^n stays a normal float), split as g + n ln 2 with |g| <= ln(2) /
// 2, a degree-5 polynomial for exp(g), 2^n through the exponent bits. Within 2
// ulp of exp above -87.336 (1 measured, tests/test_simd_exp.py); exp(-87.336)
// = 1.18e-38 below, -inf included. Lane for lane the same at every width (no
// fused multiply-adds). Vectors pass through memory, not by value, so that
// 32- and 64-byte instantiations inlined into AVX2 / AVX-512 functions never
// cross a call.
template <typename V, typename I>
__attribute__((always_inline)) inline void exp_at(float* p) {
  V x;
  std::memcpy(&x, p, sizeof(x));
  const V hi = V{} + 88.3762626647950f, lo = V{} + -87.3365447505531f;
  x = x < hi ? x : hi;
  x = x > lo ? x : lo;
  V fx = x * 1.44269504088896341f + 0.5f;
  const V t = __builtin_convertvector(__builtin_convertvector(fx, I), V);
  fx = t > fx ? t - 1.0f : t;  // floor
  x = x - fx * 0.693359375f;
  x = x - fx * -2.12194440e-4f;
  const V z = x * x;
  V y = V{} + 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x;
  y = y + 1.0f;
  const I bits = (__builtin_convertvector(fx, I) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  y = y * scale;
  std::memcpy(p, &y, sizeof(y));
}

// sign(v) with sign(0) = 0 (and 0 for NaN). Call as abs<T>(v), sign<T>(v):
// T cannot be deduced through the alias.
template <typename T>
inline Vec<T> sign(const Vec<T>& v) {
  const Vec<T> one = broadcast(T(1)), zero{};
  return (v > T(0) ? one : zero) - (v < T(0) ? one : zero);
}

}  // namespace simd
}  // namespace wsss_fast
