// A small portable SIMD layer on GCC/Clang vector extensions: the compiler lowers it to AVX-512,
// AVX2, SSE or NEON for the target, or to scalar code. Kernels use Vec and the math below instead
// of scattering intrinsics. Internal header (not installed as public API).
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

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
// x - 0 (not 0 + x) lets the compiler drop the add: it keeps -0, so it is a plain broadcast
inline Vec broadcast(float x) { return x - Vec{}; }
inline Vec vmax(Vec a, Vec b) { return a > b ? a : b; }
inline Vec vmin(Vec a, Vec b) { return a < b ? a : b; }
inline Vec select(VecI mask, Vec a, Vec b) { return mask ? a : b; }

// exp(x) to about 1 ulp in f32: x = n ln2 + r with |r| <= ln2/2, a degree-6 polynomial for
// e^r, and 2^n added straight into the exponent bits. Results below FLT_MIN flush to zero
// (absolute error under 1.2e-38); overflow gives +inf; NaN stays NaN.
inline Vec exp(Vec x) {
  const Vec xc =
      vmin(vmax(x, broadcast(-87.3365479f)), broadcast(88.7228391f));  // n in [-126, 128]
  const Vec round = broadcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  Vec nf = (xc * 1.44269504088896341f + round) - round;
  Vec r = xc - nf * 0.693359375f;  // ln2 split in two for exactness
  r = r - nf * -2.12194440e-4f;
  Vec p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  Vec y = p * (r * r) + r + 1.0f;
  VecI n = __builtin_convertvector(nf, VecI);
  VecI top = n > 127;  // 2^128 has no exponent code: use 2^127 and double y
  y = select(top, y + y, y);
  n = n + top;  // top lanes are -1: n - 1
  VecI yi;
  std::memcpy(&yi, &y, sizeof(y));
  yi += n << 23;
  std::memcpy(&y, &yi, sizeof(y));
  y = select(x > 88.7228391f, broadcast(__builtin_inff()), y);
  y = select(x < -87.3365479f, broadcast(0.0f), y);
  return select(x != x, x, y);
}

// 1 / d: the hardware estimate (14 or 12 bits) and one Newton step, about 2^-23 relative, much
// cheaper than a vector division. d must be finite and nonzero.
inline Vec recip(Vec d) {
#if defined(__AVX512F__)
  Vec r = (Vec)_mm512_maskz_rcp14_ps(0xFFFF, (__m512)d);  // maskz: no undefined-register warning
#elif defined(__AVX__)
  Vec r = (Vec)_mm256_rcp_ps((__m256)d);
#else
  return 1.0f / d;
#endif
#if defined(__AVX512F__) || defined(__AVX__)
  return r * (2.0f - d * r);
#endif
}

// x is clamped to |x| <= 87 so 1 + exp(-x) stays finite: below -87 sigmoid is under 2e-38.
inline Vec sigmoid(Vec x) {
  Vec xc = vmin(vmax(x, broadcast(-87.0f)), broadcast(87.0f));
  Vec s = recip(1.0f + exp(-xc));
  return select(x != x, x, s);
}
inline Vec silu(Vec x) { return x * sigmoid(x); }
// log(x) for positive finite normal x, about 1 ulp (Cephes' logf): x = m 2^e, m in [sqrt(1/2),
// sqrt(2)), a degree-8 polynomial in m - 1.
inline Vec log(Vec x) {
  VecI bits;
  std::memcpy(&bits, &x, sizeof(bits));
  VecI mbits = (bits & 0x007fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  Vec m, e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, Vec);
  std::memcpy(&m, &mbits, sizeof(m));
  VecI small = m < 0.707106781186547524f;
  e = select(small, e - 1.0f, e);
  m = select(small, m + m - 1.0f, m - 1.0f);
  Vec z = m * m;
  Vec p = broadcast(7.0376836292e-2f);
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  Vec r = p * m * z + e * -2.12194440e-4f - 0.5f * z;
  return m + r + e * 0.693359375f;
}

// softplus(x) = log(1 + exp(x)) with PyTorch's threshold (x > 20 passes through), and its
// derivative sigmoid(x) (1 above the threshold). Written on exp(-|x|) so nothing overflows.
inline void softplus(Vec x, Vec& sp, Vec& dsp) {
  Vec v = exp(-vmax(x, -x));  // in (0, 1]
  Vec w = 1.0f + v;
  // log1p(v) = log(w) * v / (w - 1) keeps the digits of v that 1 + v rounds away
  Vec l1p = select(w == 1.0f, v, log(w) * (v / (w - 1.0f)));
  VecI big = x > 20.0f;
  sp = select(big, x, vmax(x, broadcast(0.0f)) + l1p);
  Vec s = select(x >= 0.0f, 1.0f / w, v / w);
  dsp = select(big, broadcast(1.0f), s);
}

}  // namespace coil::simd
