// CPU softmax / log_softmax. Layout: `in` and `out` contiguous [outer, n, inner], normalised
// along n. Three passes per row: max, exp(x - max) with its sum, then scale (or subtract the log
// of the sum). f32 rows use the vectorised exp and accumulate in f32 lanes; f64 stays in f64.
// When inner > 1 the passes run across a block of columns at once, so the loads stay contiguous
// and no transpose copy is needed.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../../core/parallel.h"
#include "../../core/simd.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

constexpr int64_t kColBlock = 64;  // columns per work unit when inner > 1

// One contiguous f32 row of n elements.
void row_f32(float* o, const float* x, int64_t n, bool log) {
  using namespace simd;
  const float ninf = -std::numeric_limits<float>::infinity();
  Vec vm = broadcast(ninf);
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) vm = vmax(vm, load(x + i));
  float m = ninf;
  for (int k = 0; k < kWidth; ++k) m = std::max(m, vm[k]);
  for (; i < n; ++i) m = std::max(m, x[i]);

  // The tail goes through a -inf padded buffer, so every element sees the same exp.
  const Vec mv = broadcast(m);
  Vec vs = broadcast(0.0f);
  for (i = 0; i + kWidth <= n; i += kWidth) {
    Vec e = simd::exp(load(x + i) - mv);
    if (!log) store(o + i, e);
    vs += e;
  }
  if (i < n) {
    float buf[kWidth];
    std::fill(buf, buf + kWidth, ninf);
    std::copy(x + i, x + n, buf);
    Vec e = simd::exp(load(buf) - mv);  // the padding adds exp(-inf) = 0
    vs += e;
    if (!log) {
      store(buf, e);
      std::copy(buf, buf + (n - i), o + i);
    }
  }
  float s = 0;
  for (int k = 0; k < kWidth; ++k) s += vs[k];

  if (log) {
    const float ls = std::log(s);
    for (i = 0; i < n; ++i) o[i] = (x[i] - m) - ls;
  } else {
    const float inv = 1.0f / s;
    for (i = 0; i < n; ++i) o[i] *= inv;
  }
}

// One contiguous f64 row.
void row_f64(double* o, const double* x, int64_t n, bool log) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    double e = std::exp(x[i] - m);
    if (!log) o[i] = e;
    s += e;
  }
  if (log) {
    const double ls = std::log(s);
    for (int64_t i = 0; i < n; ++i) o[i] = (x[i] - m) - ls;
  } else {
    const double inv = 1.0 / s;
    for (int64_t i = 0; i < n; ++i) o[i] *= inv;
  }
}

// exp(x[c] - m[c]) for w contiguous columns into e; f32 through the vectorised exp.
template <class T>
void exp_shifted(T* e, const T* x, const T* m, int64_t w) {
  int64_t c = 0;
  if constexpr (std::is_same_v<T, float>) {
    using namespace simd;
    for (; c + kWidth <= w; c += kWidth) store(e + c, simd::exp(load(x + c) - load(m + c)));
  }
  for (; c < w; ++c) e[c] = std::exp(x[c] - m[c]);
}

// Columns [c0, c0 + w) of one [n, inner] slab; m and s are scratch of w elements.
template <class T>
void cols(T* o, const T* x, int64_t n, int64_t inner, int64_t c0, int64_t w, bool log, T* m, T* s,
          T* e) {
  std::fill(m, m + w, -std::numeric_limits<T>::infinity());
  std::fill(s, s + w, T(0));
  for (int64_t t = 0; t < n; ++t) {
    const T* xr = x + t * inner + c0;
    for (int64_t c = 0; c < w; ++c) m[c] = xr[c] > m[c] ? xr[c] : m[c];
  }
  for (int64_t t = 0; t < n; ++t) {
    const T* xr = x + t * inner + c0;
    T* orow = o + t * inner + c0;
    exp_shifted<T>(log ? e : orow, xr, m, w);
    const T* er = log ? e : orow;
    for (int64_t c = 0; c < w; ++c) s[c] += er[c];
  }
  if (log) {
    for (int64_t c = 0; c < w; ++c) s[c] = std::log(s[c]);
    for (int64_t t = 0; t < n; ++t) {
      const T* xr = x + t * inner + c0;
      T* orow = o + t * inner + c0;
      for (int64_t c = 0; c < w; ++c) orow[c] = (xr[c] - m[c]) - s[c];
    }
  } else {
    for (int64_t c = 0; c < w; ++c) s[c] = T(1) / s[c];
    for (int64_t t = 0; t < n; ++t) {
      T* orow = o + t * inner + c0;
      for (int64_t c = 0; c < w; ++c) orow[c] *= s[c];
    }
  }
}

template <class T>
void run(const Tensor& out, const Tensor& in, int64_t outer, int64_t n, int64_t inner, bool log) {
  const T* x = in.data_ptr<T>();
  T* o = out.data_ptr<T>();
  if (inner == 1) {
    parallel_for(0, outer, std::max<int64_t>(1, 32768 / n), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        if constexpr (std::is_same_v<T, float>) {
          row_f32(o + r * n, x + r * n, n, log);
        } else {
          row_f64(o + r * n, x + r * n, n, log);
        }
      }
    });
    return;
  }
  const int64_t bw = std::min(inner, kColBlock), nb = (inner + bw - 1) / bw;
  parallel_for(0, outer * nb, std::max<int64_t>(1, 32768 / (n * bw)), [&](int64_t b, int64_t e) {
    std::vector<T> scratch(static_cast<size_t>(3 * bw));
    for (int64_t u = b; u < e; ++u) {
      const int64_t r = u / nb, c0 = (u % nb) * bw, w = std::min(bw, inner - c0);
      cols<T>(o + r * n * inner, x + r * n * inner, n, inner, c0, w, log, scratch.data(),
              scratch.data() + bw, scratch.data() + 2 * bw);
    }
  });
}

}  // namespace

void softmax_kernel(const Tensor& out, const Tensor& in, int64_t outer, int64_t n, int64_t inner,
                    bool log) {
  if (outer * n * inner == 0) return;
  switch (in.dtype()) {
    case kF32:
      run<float>(out, in, outer, n, inner, log);
      return;
    case kF64:
      run<double>(out, in, outer, n, inner, log);
      return;
    default:
      fail("softmax kernel: expected f32 or f64 (16-bit inputs are widened by the op layer), got ",
           in.dtype());
  }
}

}  // namespace coil::cpu
