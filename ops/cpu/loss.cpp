// CPU cross-entropy, fused: one kernel for the loss of each row and one for the gradient of the
// logits, instead of log_softmax + a class mask + where + sum and their backwards (about ten
// passes over the (N, C) logits, which for a language model's head are the largest activations).
//
// Layout: logits x (N, C) contiguous, f32 or f64; target (N) contiguous int64; per-row outputs
// (N) contiguous in x's dtype. With s = label_smoothing and lse_i = log sum_c exp(x_ic):
//   loss_i = lse_i - (1 - s) x_i,t - s mean_c x_ic        (0 where t_i == ignore_index)
//   dx_ic  = g_i (exp(x_ic - lse_i) - (1 - s) [c == t_i] - s / C)   (0 rows where ignored)
// f32 rows use the vectorised exp of core/simd.h and accumulate the sums in f32 lanes, as the
// softmax kernel does; f64 stays in f64.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../../core/parallel.h"
#include "../../core/simd.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

// Row max, sum exp(x - max), and sum x, over one contiguous row of n elements.
void row_stats(const float* x, int64_t n, float* max_out, float* sumexp_out, double* sum_out) {
  using namespace simd;
  const float ninf = -std::numeric_limits<float>::infinity();
  Vec vm = broadcast(ninf), vx = broadcast(0.0f);
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) {
    const Vec v = load(x + i);
    vm = vmax(vm, v);
    vx += v;
  }
  float m = ninf;
  double sx = 0;
  for (int k = 0; k < kWidth; ++k) {
    m = std::max(m, vm[k]);
    sx += vx[k];
  }
  for (int64_t j = i; j < n; ++j) {
    m = std::max(m, x[j]);
    sx += x[j];
  }
  // The tail goes through a -inf padded buffer, so every element sees the same exp.
  const Vec mv = broadcast(m);
  Vec vs = broadcast(0.0f);
  for (i = 0; i + kWidth <= n; i += kWidth) vs += simd::exp(load(x + i) - mv);
  if (i < n) {
    float buf[kWidth];
    std::fill(buf, buf + kWidth, ninf);
    std::copy(x + i, x + n, buf);
    vs += simd::exp(load(buf) - mv);
  }
  float s = 0;
  for (int k = 0; k < kWidth; ++k) s += vs[k];
  *max_out = m;
  *sumexp_out = s;
  *sum_out = sx;
}

void row_stats(const double* x, int64_t n, double* max_out, double* sumexp_out, double* sum_out) {
  double m = -std::numeric_limits<double>::infinity(), sx = 0;
  for (int64_t i = 0; i < n; ++i) {
    m = std::max(m, x[i]);
    sx += x[i];
  }
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  *max_out = m;
  *sumexp_out = s;
  *sum_out = sx;
}

// o[c] = g * exp(x[c] - lse) + shift, for one row.
void row_grad(float* o, const float* x, int64_t n, float lse, float g, float shift) {
  using namespace simd;
  const Vec lv = broadcast(lse), gv = broadcast(g), sv = broadcast(shift);
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) store(o + i, gv * simd::exp(load(x + i) - lv) + sv);
  if (i < n) {
    float buf[kWidth];
    std::fill(buf, buf + kWidth, 0.0f);
    std::copy(x + i, x + n, buf);
    store(buf, gv * simd::exp(load(buf) - lv) + sv);
    std::copy(buf, buf + (n - i), o + i);
  }
}

void row_grad(double* o, const double* x, int64_t n, double lse, double g, double shift) {
  for (int64_t i = 0; i < n; ++i) o[i] = g * std::exp(x[i] - lse) + shift;
}

// Rows per parallel piece: about 16K elements of work each.
int64_t row_grain(int64_t C) {
  return std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(C, 1));
}

template <class T>
void forward(const Tensor& loss, const Tensor& lse, const Tensor& logits, const Tensor& target,
             int64_t ignore_index, double smoothing) {
  const int64_t N = logits.sizes()[0], C = logits.sizes()[1];
  const T* x = logits.data_ptr<T>();
  const int64_t* t = target.data_ptr<int64_t>();
  T* lo = loss.data_ptr<T>();
  T* ls = lse.data_ptr<T>();
  const double keep = 1.0 - smoothing;
  parallel_for(0, N, row_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const T* row = x + i * C;
      T m, s;
      double sx;
      row_stats(row, C, &m, &s, &sx);
      const T l = m + std::log(s);
      ls[i] = l;
      if (t[i] == ignore_index) {
        lo[i] = T(0);
        continue;
      }
      // -logp_t and -mean(logp) in the row's precision, then weighted as the composite does.
      const T nll = l - row[t[i]];
      if (smoothing == 0) {
        lo[i] = nll;
      } else {
        const T smooth = static_cast<T>(static_cast<double>(l) - sx / static_cast<double>(C));
        lo[i] = static_cast<T>(keep * nll + smoothing * smooth);
      }
    }
  });
}

template <class T>
void backward(const Tensor& dlogits, const Tensor& grad_rows, const Tensor& logits,
              const Tensor& lse, const Tensor& target, int64_t ignore_index, double smoothing) {
  const int64_t N = logits.sizes()[0], C = logits.sizes()[1];
  const T* x = logits.data_ptr<T>();
  const T* ls = lse.data_ptr<T>();
  const T* g = grad_rows.data_ptr<T>();
  const int64_t* t = target.data_ptr<int64_t>();
  T* d = dlogits.data_ptr<T>();
  const T keep = static_cast<T>(1.0 - smoothing);
  const T uniform = static_cast<T>(smoothing / static_cast<double>(C));
  parallel_for(0, N, row_grain(C), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      T* o = d + i * C;
      if (t[i] == ignore_index) {
        std::fill(o, o + C, T(0));
        continue;
      }
      const T gi = g[i];
      row_grad(o, x + i * C, C, ls[i], gi, -gi * uniform);
      o[t[i]] -= gi * keep;
    }
  });
}

}  // namespace

void cross_entropy_kernel(const Tensor& loss, const Tensor& lse, const Tensor& logits,
                          const Tensor& target, int64_t ignore_index, double label_smoothing) {
  if (logits.dtype() == kF32)
    forward<float>(loss, lse, logits, target, ignore_index, label_smoothing);
  else if (logits.dtype() == kF64)
    forward<double>(loss, lse, logits, target, ignore_index, label_smoothing);
  else
    fail("cross_entropy: the fused CPU kernel takes f32 or f64 logits, got ", logits.dtype());
}

void cross_entropy_backward_kernel(const Tensor& dlogits, const Tensor& grad_rows,
                                   const Tensor& logits, const Tensor& lse, const Tensor& target,
                                   int64_t ignore_index, double label_smoothing) {
  if (logits.dtype() == kF32)
    backward<float>(dlogits, grad_rows, logits, lse, target, ignore_index, label_smoothing);
  else if (logits.dtype() == kF64)
    backward<double>(dlogits, grad_rows, logits, lse, target, ignore_index, label_smoothing);
  else
    fail("cross_entropy: the fused CPU kernel takes f32 or f64 logits, got ", logits.dtype());
}

}  // namespace coil::cpu
