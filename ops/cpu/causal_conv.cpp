// CPU depthwise causal conv of Mamba, channel-last.
// Layout: x, y (B, L, C) contiguous, so one token's channels are adjacent and every inner loop
// runs vectorised over all C channels of a row; w (C, K) with w[c, K-1] on the current token,
// transposed once to (K, C) for contiguous reads; window (B, K-1, C) holds the inputs before
// t = 0. Work is split over blocks of rows, so each thread streams through memory in order.
// The backward recomputes the pre-activation of each row (K FMAs) instead of storing it. For f32
// with K <= 4 it is one fused pass per strip of 16 channels (one SIMD vector) and block of rows:
// the last K inputs, the last K values of ds = dy * silu'(s), the taps and the dw / dbias sums
// stay in registers while the strip walks down the rows, so x and dy are read once and dx is
// written once (rows of the next strip are prefetched, as the hardware does not follow a
// column walk). Other cases run the row-at-a-time loops below.
#include <cmath>
#include <mutex>
#include <type_traits>
#include <vector>

#include "../../core/parallel.h"
#include "../../core/simd.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

constexpr int64_t kRows = 32;  // rows per task

// sigmoid of n values, with the vectorised exp for f32
template <class T>
void sigmoid_into(const T* v, T* out, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; i + simd::kWidth <= n; i += simd::kWidth)
      simd::store(out + i, simd::sigmoid(simd::load(v + i)));
  }
  for (; i < n; ++i) out[i] = T(1) / (T(1) + std::exp(-v[i]));
}

template <class T>
struct Conv {
  const T* x;
  const T* win;       // may be null: zeros before t = 0
  const T* bias;      // may be null
  std::vector<T> wt;  // (K, C)
  int64_t L, C, K;

  Conv(const Tensor& xs, const Tensor& w, const Tensor& b, const Tensor& window)
      : x(xs.data_ptr<T>()),
        win(window.defined() ? window.data_ptr<T>() : nullptr),
        bias(b.defined() ? b.data_ptr<T>() : nullptr),
        L(xs.sizes()[1]),
        C(xs.sizes()[2]),
        K(w.sizes()[1]) {
    const T* wp = w.data_ptr<T>();
    wt.resize(static_cast<size_t>(K * C));
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < K; ++k) wt[k * C + c] = wp[c * K + k];
  }
  // The input row at time s (negative: from the window), or null for zeros.
  const T* row(int64_t b, int64_t s) const {
    if (s >= 0) return x + (b * L + s) * C;
    return win ? win + (b * (K - 1) + (K - 1 + s)) * C : nullptr;
  }
  // Pre-activation of token (b, t) into out[0, C).
  void pre(int64_t b, int64_t t, T* __restrict out) const {
    for (int64_t c = 0; c < C; ++c) out[c] = bias ? bias[c] : T(0);
    for (int64_t k = 0; k < K; ++k) {
      const T* __restrict in = row(b, t + k - (K - 1));
      if (!in) continue;
      const T* __restrict wk = wt.data() + k * C;
      for (int64_t c = 0; c < C; ++c) out[c] += wk[c] * in[c];
    }
  }
};

template <class T>
void forward(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias,
             const Tensor& window, bool silu) {
  const int64_t B = x.sizes()[0], L = x.sizes()[1], C = x.sizes()[2];
  const Conv<T> cv(x, w, bias, window);
  T* yp = y.data_ptr<T>();
  const int64_t chunks = (L + kRows - 1) / kRows;
  parallel_for(0, B * chunks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<T> sg(static_cast<size_t>(C));
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / chunks, t0 = (task % chunks) * kRows, t1 = std::min(L, t0 + kRows);
      for (int64_t t = t0; t < t1; ++t) {
        T* out = yp + (b * L + t) * C;
        cv.pre(b, t, out);
        if (silu) {
          sigmoid_into(out, sg.data(), C);
          for (int64_t c = 0; c < C; ++c) out[c] *= sg[c];
        }
      }
    }
  });
}

template <class T>
void backward(const Tensor& dx, const Tensor& dw, const Tensor& dbias, const Tensor& dwindow,
              const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& bias,
              const Tensor& window, bool silu) {
  const int64_t B = x.sizes()[0], L = x.sizes()[1], C = x.sizes()[2], K = w.sizes()[1];
  const Conv<T> cv(x, w, bias, window);
  const T* dyp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  T* dwinp = dwindow.defined() ? dwindow.data_ptr<T>() : nullptr;
  const bool want_dw = dw.defined(), want_db = dbias.defined();
  // dw and dbias sum over every (b, t): per-thread partial sums in f64, added up at the end.
  std::vector<double> dw_sum(static_cast<size_t>(K * C), 0.0), db_sum(static_cast<size_t>(C), 0.0);
  std::mutex mu;
  const int64_t chunks = (L + kRows - 1) / kRows;
  parallel_for(0, B * chunks, 1, [&](int64_t lo, int64_t hi) {
    const int64_t span = kRows + K - 1;
    std::vector<T> ds(static_cast<size_t>(span * C)), sg(static_cast<size_t>(C));
    std::vector<T> dw_part(static_cast<size_t>(K * C)), db_part(static_cast<size_t>(C));
    std::vector<double> dw_acc(want_dw ? static_cast<size_t>(K * C) : 0, 0.0),
        db_acc(want_db ? static_cast<size_t>(C) : 0, 0.0);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / chunks, t0 = (task % chunks) * kRows, t1 = std::min(L, t0 + kRows);
      const int64_t r1 = std::min(L, t1 + K - 1);  // rows of ds this chunk's dx needs
      // ds = dy * silu'(s) for rows [t0, r1)
      for (int64_t t = t0; t < r1; ++t) {
        T* d = ds.data() + (t - t0) * C;
        const T* g = dyp + (b * L + t) * C;
        if (silu) {
          cv.pre(b, t, d);
          sigmoid_into(d, sg.data(), C);
          for (int64_t c = 0; c < C; ++c) d[c] = g[c] * sg[c] * (T(1) + d[c] * (T(1) - sg[c]));
        } else {
          for (int64_t c = 0; c < C; ++c) d[c] = g[c];
        }
      }
      // dx[t] = sum_k w[k] ds[t + K-1-k]
      for (int64_t t = t0; t < t1; ++t) {
        T* __restrict out = dxp + (b * L + t) * C;
        for (int64_t c = 0; c < C; ++c) out[c] = T(0);
        for (int64_t k = 0; k < K; ++k) {
          const int64_t src = t + (K - 1) - k;
          if (src >= L) continue;
          const T* __restrict d = ds.data() + (src - t0) * C;
          const T* __restrict wk = cv.wt.data() + k * C;
          for (int64_t c = 0; c < C; ++c) out[c] += wk[c] * d[c];
        }
      }
      // the window's gradient: input time j-(K-1) feeds outputs t = j - k
      if (dwinp && t0 == 0) {
        for (int64_t j = 0; j < K - 1; ++j) {
          T* __restrict out = dwinp + (b * (K - 1) + j) * C;
          for (int64_t c = 0; c < C; ++c) out[c] = T(0);
          for (int64_t k = 0; k <= j; ++k) {
            if (j - k >= r1) continue;
            const T* __restrict d = ds.data() + (j - k) * C;
            const T* __restrict wk = cv.wt.data() + k * C;
            for (int64_t c = 0; c < C; ++c) out[c] += wk[c] * d[c];
          }
        }
      }
      if (want_dw || want_db) {
        std::fill(dw_part.begin(), dw_part.end(), T(0));
        std::fill(db_part.begin(), db_part.end(), T(0));
        for (int64_t t = t0; t < t1; ++t) {
          const T* __restrict d = ds.data() + (t - t0) * C;
          for (int64_t c = 0; c < C; ++c) db_part[c] += d[c];
          for (int64_t k = 0; k < K; ++k) {
            const T* __restrict in = cv.row(b, t + k - (K - 1));
            if (!in) continue;
            T* __restrict acc = dw_part.data() + k * C;
            for (int64_t c = 0; c < C; ++c) acc[c] += d[c] * in[c];
          }
        }
        if (want_dw)
          for (int64_t i = 0; i < K * C; ++i) dw_acc[i] += dw_part[i];
        if (want_db)
          for (int64_t c = 0; c < C; ++c) db_acc[c] += db_part[c];
      }
    }
    std::lock_guard<std::mutex> lk(mu);
    if (want_dw)
      for (int64_t i = 0; i < K * C; ++i) dw_sum[i] += dw_acc[i];
    if (want_db)
      for (int64_t c = 0; c < C; ++c) db_sum[c] += db_acc[c];
  });
  if (want_dw) {
    T* dwp = dw.data_ptr<T>();
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < K; ++k) dwp[c * K + k] = static_cast<T>(dw_sum[k * C + c]);
  }
  if (want_db) {
    T* dbp = dbias.data_ptr<T>();
    for (int64_t c = 0; c < C; ++c) dbp[c] = static_cast<T>(db_sum[c]);
  }
}

// ---- fused f32 backward for K <= 4 ----

// One SIMD vector of channels, or one channel (the tail past the last whole vector).
template <class V>
struct Lane;
template <>
struct Lane<simd::Vec> {
  static constexpr int64_t kWidth = simd::kWidth;
  static simd::Vec load(const float* p) { return simd::load(p); }
  static void store(float* p, simd::Vec v) { simd::store(p, v); }
  static simd::Vec bcast(float v) { return simd::broadcast(v); }
  static simd::Vec sigmoid(simd::Vec v) { return simd::sigmoid(v); }
  static void add_to(double* acc, simd::Vec v) {
    for (int i = 0; i < simd::kWidth; ++i) acc[i] += v[i];
  }
};
template <>
struct Lane<float> {
  static constexpr int64_t kWidth = 1;
  static float load(const float* p) { return *p; }
  static void store(float* p, float v) { *p = v; }
  static float bcast(float v) { return v; }
  static float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }
  static void add_to(double* acc, float v) { *acc += v; }
};

constexpr int64_t kFusedRows = 128;  // rows per task of the fused backward

struct FusedArgs {
  const float *x, *win, *wt, *bias, *dy;  // wt: (K, C)
  float *dx, *dwin;                       // dwin may be null
  int64_t L, C;
  bool silu, want_dw, want_db;
};

// Channels [c, c + width) of rows [t0, t1) of batch b: dx for those rows (and the window's
// gradient when t0 = 0), and their terms of dw and dbias added to dw_acc (K, C) and db_acc (C).
template <int K, class V>
void fused_strip(const FusedArgs& a, int64_t b, int64_t t0, int64_t t1, int64_t c, bool prefetch,
                 double* dw_acc, double* db_acc) {
  using Ln = Lane<V>;
  const int64_t L = a.L, C = a.C;
  V w[K], xw[K], ds[K], dw[K];
  for (int k = 0; k < K; ++k) {
    w[k] = Ln::load(a.wt + k * C + c);
    xw[k] = Ln::bcast(0.0f);
    ds[k] = Ln::bcast(0.0f);
    dw[k] = Ln::bcast(0.0f);
  }
  V db = Ln::bcast(0.0f);
  const V bias = a.bias ? Ln::load(a.bias + c) : Ln::bcast(0.0f);
  // xw[k] holds the input at t + k - (K-1): before the first step, the K-1 inputs before t0
  for (int k = 1; k < K; ++k) {
    const int64_t s = t0 - K + k;
    if (s >= 0)
      xw[k] = Ln::load(a.x + (b * L + s) * C + c);
    else if (a.win)
      xw[k] = Ln::load(a.win + (b * (K - 1) + (K - 1 + s)) * C + c);
  }
  const bool to_win = a.dwin && t0 == 0;
  // One row t: ds[t] (zero past L: kInput false), its dw / dbias terms when t < t1 (kAcc), and
  // dx of row t - (K-1), which the ds of rows t-K+1 .. t complete (ds[k] holds ds at t - k).
  // kMain: that row is in [t0, t1) and the next strip's rows are prefetched.
  auto step = [&]<bool kInput, bool kAcc, bool kMain>(int64_t t) __attribute__((always_inline)) {
    V d = Ln::bcast(0.0f);
    if constexpr (kInput) {
      const int64_t r = (b * L + t) * C + c;
      if constexpr (kMain && std::is_same_v<V, simd::Vec>) {
        if (prefetch) {
          __builtin_prefetch(a.x + r + simd::kWidth, 0);
          __builtin_prefetch(a.dy + r + simd::kWidth, 0);
          __builtin_prefetch(a.dx + (r - (K - 1) * C) + simd::kWidth, 1);
        }
      }
      for (int k = 0; k + 1 < K; ++k) xw[k] = xw[k + 1];
      xw[K - 1] = Ln::load(a.x + r);
      V s = bias;
      for (int k = 0; k < K; ++k) s += w[k] * xw[k];
      const V g = Ln::load(a.dy + r);
      if (a.silu) {
        const V sg = Ln::sigmoid(s);
        d = g * sg * (1.0f + s * (1.0f - sg));
      } else {
        d = g;
      }
      if constexpr (kAcc) {
        db += d;
        for (int k = 0; k < K; ++k) dw[k] += d * xw[k];
      }
    }
    for (int k = K - 1; k > 0; --k) ds[k] = ds[k - 1];
    ds[0] = d;
    const int64_t s = t - (K - 1);
    float* out;
    if (kMain || s >= t0)
      out = a.dx + (b * L + s) * C + c;
    else if (to_win)
      out = a.dwin + (b * (K - 1) + (K - 1 + s)) * C + c;
    else
      return;
    V o = w[0] * ds[0];
    for (int k = 1; k < K; ++k) o += w[k] * ds[k];
    Ln::store(out, o);
  };
  // Rows t0 .. t0+K-2 complete output rows before t0 (the window's, or none); rows t1 .. t1+K-2
  // complete the last output rows, reading inputs up to L and zeros past it.
  const int64_t head = std::min(t1, t0 + K - 1);
  int64_t t = t0;
  for (; t < head; ++t) step.template operator()<true, true, false>(t);
  for (; t < t1; ++t) step.template operator()<true, true, true>(t);
  const int64_t tail = std::min(L, t1 + K - 1);
  for (; t < tail; ++t) step.template operator()<true, false, false>(t);
  for (; t < t1 + K - 1; ++t) step.template operator()<false, false, false>(t);
  if (a.want_db) Ln::add_to(db_acc + c, db);
  if (a.want_dw)
    for (int k = 0; k < K; ++k) Ln::add_to(dw_acc + k * C + c, dw[k]);
}

template <int K>
void fused_backward(const Tensor& dx, const Tensor& dw, const Tensor& dbias, const Tensor& dwindow,
                    const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& bias,
                    const Tensor& window, bool silu) {
  const int64_t B = x.sizes()[0], L = x.sizes()[1], C = x.sizes()[2];
  const Conv<float> cv(x, w, bias, window);
  FusedArgs a;
  a.x = cv.x;
  a.win = cv.win;
  a.wt = cv.wt.data();
  a.bias = cv.bias;
  a.dy = dy.data_ptr<float>();
  a.dx = dx.data_ptr<float>();
  a.dwin = dwindow.defined() ? dwindow.data_ptr<float>() : nullptr;
  a.L = L;
  a.C = C;
  a.silu = silu;
  a.want_dw = dw.defined();
  a.want_db = dbias.defined();
  constexpr int64_t V = simd::kWidth;
  const int64_t cv_end = C / V * V;
  std::vector<double> dw_sum(static_cast<size_t>(K * C), 0.0), db_sum(static_cast<size_t>(C), 0.0);
  std::mutex mu;
  const int64_t chunks = (L + kFusedRows - 1) / kFusedRows;
  parallel_for(0, B * chunks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<double> dw_acc(static_cast<size_t>(K * C), 0.0),
        db_acc(static_cast<size_t>(C), 0.0);
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / chunks, t0 = (task % chunks) * kFusedRows;
      const int64_t t1 = std::min(L, t0 + kFusedRows);
      for (int64_t c = 0; c < cv_end; c += V)
        fused_strip<K, simd::Vec>(a, b, t0, t1, c, c + V < cv_end, dw_acc.data(), db_acc.data());
      for (int64_t c = cv_end; c < C; ++c)
        fused_strip<K, float>(a, b, t0, t1, c, false, dw_acc.data(), db_acc.data());
    }
    std::lock_guard<std::mutex> lk(mu);
    for (int64_t i = 0; i < K * C; ++i) dw_sum[i] += dw_acc[i];
    for (int64_t c = 0; c < C; ++c) db_sum[c] += db_acc[c];
  });
  if (a.want_dw) {
    float* dwp = dw.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < K; ++k) dwp[c * K + k] = static_cast<float>(dw_sum[k * C + c]);
  }
  if (a.want_db) {
    float* dbp = dbias.data_ptr<float>();
    for (int64_t c = 0; c < C; ++c) dbp[c] = static_cast<float>(db_sum[c]);
  }
}

}  // namespace

void causal_conv_kernel(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias,
                        const Tensor& window, bool silu) {
  if (x.dtype() == kF64) return forward<double>(y, x, w, bias, window, silu);
  if (x.dtype() == kF32) return forward<float>(y, x, w, bias, window, silu);
  fail("causal_conv1d: kernel dtype ", x.dtype(), " (expected float32 or float64)");
}

void causal_conv_backward_kernel(const Tensor& dx, const Tensor& dw, const Tensor& dbias,
                                 const Tensor& dwindow, const Tensor& dy, const Tensor& x,
                                 const Tensor& w, const Tensor& bias, const Tensor& window,
                                 bool silu) {
  if (x.dtype() == kF64)
    return backward<double>(dx, dw, dbias, dwindow, dy, x, w, bias, window, silu);
  if (x.dtype() == kF32) {
    switch (w.sizes()[1]) {
      case 1:
        return fused_backward<1>(dx, dw, dbias, dwindow, dy, x, w, bias, window, silu);
      case 2:
        return fused_backward<2>(dx, dw, dbias, dwindow, dy, x, w, bias, window, silu);
      case 3:
        return fused_backward<3>(dx, dw, dbias, dwindow, dy, x, w, bias, window, silu);
      case 4:
        return fused_backward<4>(dx, dw, dbias, dwindow, dy, x, w, bias, window, silu);
      default:
        return backward<float>(dx, dw, dbias, dwindow, dy, x, w, bias, window, silu);
    }
  }
  fail("causal_conv1d: kernel dtype ", x.dtype(), " (expected float32 or float64)");
}

}  // namespace coil::cpu
