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
// sign(v) with sign(0) = 0 (and 0 for NaN). Call as abs<T>(v), sign<T>(v):
// T cannot be deduced through the alias.
template <typename T>
inline Vec<T> sign(const Vec<T>& v) {
  const Vec<T> one = broadcast(T(1)), zero{};
  return (v > T(0) ? one : zero) - (v < T(0) ? one : zero);
}

}  // namespace simd
}  // namespace wsss_fast
