// CPU depthwise causal conv of Mamba, channel-last.
// Layout: x, y (B, L, C) contiguous, so one token's channels are adjacent and every loop runs
// vectorised over channels; w (C, K) with w[c, K-1] on the current token; window (B, K-1, C)
// holds the inputs before t = 0. Work is split over channel blocks: each thread owns its
// channels for all (b, t), so dw and dbias need no cross-thread reduction.
#include <cmath>
#include <type_traits>
#include <vector>

#include "../../core/parallel.h"
#include "../../core/simd.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

constexpr int64_t kBlock = 64;  // channels per task

// sigmoid of n values, with the vectorised exp for f32
template <class T>
void sigmoid_into(const T* v, T* out, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    for (; i + simd::kWidth <= n; i += simd::kWidth) simd::store(out + i, simd::sigmoid(simd::load(v + i)));
  }
  for (; i < n; ++i) out[i] = T(1) / (T(1) + std::exp(-v[i]));
}

// Input at time index s (may be negative: then from the window, or zero).
template <class T>
struct Source {
  const T* x;
  const T* win;  // may be null
  int64_t L, C, K;
  const T* at(int64_t b, int64_t s) const {
    if (s >= 0) return x + (b * L + s) * C;
    if (!win) return nullptr;
    return win + (b * (K - 1) + (K - 1 + s)) * C;
  }
};

// Pre-activation conv output for channels [c0, c1) of token (b, t) into out.
template <class T>
void conv_row(const Source<T>& src, const T* w, const T* bias, int64_t b, int64_t t, int64_t c0,
              int64_t c1, T* out) {
  const int64_t K = src.K;
  for (int64_t c = c0; c < c1; ++c) out[c - c0] = bias ? bias[c] : T(0);
  for (int64_t k = 0; k < K; ++k) {
    const T* in = src.at(b, t + k - (K - 1));
    if (!in) continue;
    for (int64_t c = c0; c < c1; ++c) out[c - c0] += w[c * K + k] * in[c];
  }
}

template <class T>
void forward(const Tensor& y, const Tensor& x, const Tensor& w, const Tensor& bias,
             const Tensor& window, bool silu) {
  const int64_t B = x.sizes()[0], L = x.sizes()[1], C = x.sizes()[2], K = w.sizes()[1];
  Source<T> src{x.data_ptr<T>(), window.defined() ? window.data_ptr<T>() : nullptr, L, C, K};
  const T* wp = w.data_ptr<T>();
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  const int64_t nblocks = (C + kBlock - 1) / kBlock;
  // transposed weights (K, C) so the inner loop reads them contiguously
  std::vector<T> wt(static_cast<size_t>(K * C));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = 0; k < K; ++k) wt[k * C + c] = wp[c * K + k];
  parallel_for(0, B * nblocks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t task = lo; task < hi; ++task) {
      const int64_t b = task / nblocks, c0 = (task % nblocks) * kBlock, c1 = std::min(C, c0 + kBlock);
      for (int64_t t = 0; t < L; ++t) {
        T* out = yp + (b * L + t) * C;
        for (int64_t c = c0; c < c1; ++c) out[c] = bp ? bp[c] : T(0);
        for (int64_t k = 0; k < K; ++k) {
          const T* in = src.at(b, t + k - (K - 1));
          if (!in) continue;
          const T* wk = wt.data() + k * C;
          for (int64_t c = c0; c < c1; ++c) out[c] += wk[c] * in[c];
        }
        if (silu) {
          T sg[kBlock];
          sigmoid_into(out + c0, sg, c1 - c0);
          for (int64_t c = c0; c < c1; ++c) out[c] *= sg[c - c0];
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
  Source<T> src{x.data_ptr<T>(), window.defined() ? window.data_ptr<T>() : nullptr, L, C, K};
  const T* wp = w.data_ptr<T>();
  const T* bp = bias.defined() ? bias.data_ptr<T>() : nullptr;
  const T* dyp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  T* dwp = dw.defined() ? dw.data_ptr<T>() : nullptr;
  T* dbp = dbias.defined() ? dbias.data_ptr<T>() : nullptr;
  T* dwinp = dwindow.defined() ? dwindow.data_ptr<T>() : nullptr;
  const int64_t nblocks = (C + kBlock - 1) / kBlock;
  parallel_for(0, nblocks, 1, [&](int64_t lo, int64_t hi) {
    using A = double;  // dw and dbias sum over all (b, t): accumulate wide
    std::vector<T> s(static_cast<size_t>(kBlock)), sg(static_cast<size_t>(kBlock)),
        ds(static_cast<size_t>(kBlock));
    std::vector<A> dw_acc(static_cast<size_t>(K * kBlock)), db_acc(static_cast<size_t>(kBlock));
    for (int64_t blk = lo; blk < hi; ++blk) {
      const int64_t c0 = blk * kBlock, c1 = std::min(C, c0 + kBlock), n = c1 - c0;
      std::fill(dw_acc.begin(), dw_acc.end(), A(0));
      std::fill(db_acc.begin(), db_acc.end(), A(0));
      for (int64_t b = 0; b < B; ++b) {
        // dx rows start at zero; each ds_t scatters into the K inputs it read
        for (int64_t t = 0; t < L; ++t)
          for (int64_t c = c0; c < c1; ++c) dxp[(b * L + t) * C + c] = T(0);
        if (dwinp)
          for (int64_t j = 0; j < K - 1; ++j)
            for (int64_t c = c0; c < c1; ++c) dwinp[(b * (K - 1) + j) * C + c] = T(0);
        for (int64_t t = 0; t < L; ++t) {
          const T* g = dyp + (b * L + t) * C;
          T* dst = ds.data();
          if (silu) {
            conv_row(src, wp, bp, b, t, c0, c1, s.data());
            sigmoid_into(s.data(), sg.data(), n);
            for (int64_t i = 0; i < n; ++i) dst[i] = g[c0 + i] * sg[i] * (T(1) + s[i] * (T(1) - sg[i]));
          } else {
            for (int64_t i = 0; i < n; ++i) dst[i] = g[c0 + i];
          }
          for (int64_t i = 0; i < n; ++i) db_acc[i] += dst[i];
          for (int64_t k = 0; k < K; ++k) {
            const int64_t sidx = t + k - (K - 1);
            const T* in = src.at(b, sidx);
            if (!in) continue;
            T* din = sidx >= 0 ? dxp + (b * L + sidx) * C
                               : (dwinp ? dwinp + (b * (K - 1) + (K - 1 + sidx)) * C : nullptr);
            for (int64_t i = 0; i < n; ++i) {
              const int64_t c = c0 + i;
              dw_acc[k * kBlock + i] += static_cast<A>(dst[i]) * in[c];
              if (din) din[c] += wp[c * K + k] * dst[i];
            }
          }
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        if (dbp) dbp[c0 + i] = static_cast<T>(db_acc[i]);
        if (dwp)
          for (int64_t k = 0; k < K; ++k) dwp[(c0 + i) * K + k] = static_cast<T>(dw_acc[k * kBlock + i]);
      }
    }
  });
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
  if (x.dtype() == kF64) return backward<double>(dx, dw, dbias, dwindow, dy, x, w, bias, window, silu);
  if (x.dtype() == kF32) return backward<float>(dx, dw, dbias, dwindow, dy, x, w, bias, window, silu);
  fail("causal_conv1d: kernel dtype ", x.dtype(), " (expected float32 or float64)");
}

}  // namespace coil::cpu
