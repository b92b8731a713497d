// A small portable SIMD layer on GCC/Clang vector extensions: the compiler lowers it to AVX-512,
// AVX2, SSE or NEON for the target, or to scalar code. Kernels use Vec and the math below instead
// of scattering intrinsics. Internal header (not installed as public API).
#pragma once
#include <cstdint>
#include <cstring>

namespace coil::simd {

#if defined(__AVX512F__)
inline constexpr int kWidth = 16;
#else
inline constexpr int kWidth = 8;
#endif
typedef float Vec __attribute__((vector_size(kWidth * 4)));
typedef int32_t VecI __attribute__((vector_size(kWidth * 4)));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, Vec v) { std::memcpy(p, &v, sizeof(v)); }
inline Vec broadcast(float x) { return Vec{} + x; }
inline Vec vmax(Vec a, Vec b) { return a > b ? a : b; }
inline Vec vmin(Vec a, Vec b) { return a < b ? a : b; }
inline Vec select(VecI mask, Vec a, Vec b) { return mask ? a : b; }

// exp(x) to about 1 ulp in f32: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r,
// scale by 2^n through the exponent bits. Saturates to 0 and +inf, keeps NaN.
inline Vec exp(Vec x) {
  const Vec hi = broadcast(88.7228391f), lo = broadcast(-103.972084f);
  VecI nan_mask = x != x;
  VecI over = x > hi, under = x < lo;
  Vec xc = vmin(vmax(x, lo), hi);
  Vec fx = xc * 1.44269504088896341f;
  // round to nearest
  VecI n = __builtin_convertvector(fx + select(fx >= 0, broadcast(0.5f), broadcast(-0.5f)), VecI);
  Vec nf = __builtin_convertvector(n, Vec);
  Vec r = xc - nf * 0.693359375f;  // ln2 split in two for exactness
  r = r - nf * -2.12194440e-4f;
  Vec p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  Vec y = p * (r * r) + r + 1.0f;
  // 2^n in two steps so n down to -150 (subnormal results) stays representable
  VecI n1 = n >> 1, n2 = n - n1;
  Vec s1, s2;
  VecI b1 = (n1 + 127) << 23, b2 = (n2 + 127) << 23;
  std::memcpy(&s1, &b1, sizeof(s1));
  std::memcpy(&s2, &b2, sizeof(s2));
  y = y * s1 * s2;
  y = select(over, broadcast(__builtin_inff()), y);
  y = select(under, broadcast(0.0f), y);
  return select(nan_mask, x, y);
}

inline Vec sigmoid(Vec x) { return 1.0f / (1.0f + exp(-x)); }
inline Vec silu(Vec x) { return x / (1.0f + exp(-x)); }
}  // namespace coil::simd
