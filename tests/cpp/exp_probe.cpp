// Checks csrc/cpu/vec.h's exp_at at 4 lanes (SSE2), 8 (AVX2) and 16
// (AVX-512F) where the CPU has them: the same bits at every width, the ulp
// distance to exp (computed in double) above -87.336, and below it one tiny
// positive value (exp(-87.336), 1.18e-38). Prints "widths W checked N max_ulp
// U mismatches M". Built and run by tests/test_simd_exp.py with the host
// compiler.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <limits>
#include <vector>

#include "cpu/vec.h"

namespace simd = wsss_fast::simd;
typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef float F16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));

template <typename V, typename I>
__attribute__((always_inline)) inline void run(float* x, size_t n) {
  for (size_t i = 0; i < n; i += sizeof(V) / sizeof(float)) simd::exp_at<V, I>(x + i);
}
void run4(float* x, size_t n) { run<simd::Vec<float>, simd::FloatMask>(x, n); }
__attribute__((target("avx2"))) void run8(float* x, size_t n) { run<F8, I8>(x, n); }
__attribute__((target("avx512f"))) void run16(float* x, size_t n) { run<F16, I16>(x, n); }

int64_t ulps(float a, float b) {
  int32_t ia, ib;
  std::memcpy(&ia, &a, 4);
  std::memcpy(&ib, &b, 4);
  return ia > ib ? int64_t{ia} - ib : int64_t{ib} - ia;
}

int main() {
  std::vector<float> x;
  for (float v = -100.f; v <= 88.f; v += 0.0137f) x.push_back(v);
  for (float v : {0.f, -0.f, -87.33f, -87.34f, -88.f, -1e-7f, 1e-7f, 88.37f,
                  -std::numeric_limits<float>::infinity()}) {
    x.push_back(v);
  }
  while (x.size() % 16) x.push_back(0.f);
  std::vector<float> y4 = x, y8 = x, y16 = x;
  run4(y4.data(), x.size());
  __builtin_cpu_init();
  int widths = 1;
  if (__builtin_cpu_supports("avx2")) {
    run8(y8.data(), x.size());
    ++widths;
  } else {
    y8 = y4;
  }
  if (__builtin_cpu_supports("avx512f")) {
    run16(y16.data(), x.size());
    ++widths;
  } else {
    y16 = y4;
  }
  int64_t max_ulp = 0, mismatches = 0;
  const float floor_value = y4[0];  // x[0] = -100
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::memcmp(&y4[i], &y8[i], 4) != 0 || std::memcmp(&y4[i], &y16[i], 4) != 0) ++mismatches;
    if (x[i] > -87.336f) {
      const float want = static_cast<float>(std::exp(static_cast<double>(x[i])));
      const int64_t u = ulps(y4[i], want);
      if (u > max_ulp) max_ulp = u;
    } else if (y4[i] != floor_value || !(floor_value > 0.f && floor_value < 1.2e-38f)) {
      ++mismatches;
    }
  }
  std::cout << "widths " << widths << " checked " << x.size() << " max_ulp " << max_ulp
            << " mismatches " << mismatches << '\n';
  return 0;
}
