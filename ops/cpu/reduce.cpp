// CPU reduction kernel. Layout: `in` contiguous [outer, r], reduced over its last dim into
// out [outer] (contiguous). Sums of f32 accumulate in f64; NaN propagates through max/min.
#include <cmath>
#include <limits>
#include <vector>

#include "../../core/parallel.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

template <class T, class A>
A sum_row(const T* a, int64_t r) {
  A s0 = 0, s1 = 0, s2 = 0, s3 = 0;  // four chains: more ILP, less rounding drift
  int64_t i = 0;
  for (; i + 4 <= r; i += 4) {
    s0 += static_cast<A>(a[i]);
    s1 += static_cast<A>(a[i + 1]);
    s2 += static_cast<A>(a[i + 2]);
    s3 += static_cast<A>(a[i + 3]);
  }
  for (; i < r; ++i) s0 += static_cast<A>(a[i]);
  return (s0 + s1) + (s2 + s3);
}

template <class T>
void reduce_row(ReduceOp op, const T* a, int64_t r, T* out, int64_t* idx) {
  using A = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
  switch (op) {
    case ReduceOp::sum:
      *out = static_cast<T>(sum_row<T, A>(a, r));
      return;
    case ReduceOp::prod: {
      A p = 1;
      for (int64_t i = 0; i < r; ++i) p *= static_cast<A>(a[i]);
      *out = static_cast<T>(p);
      return;
    }
    case ReduceOp::max:
    case ReduceOp::min:
    case ReduceOp::argmax:
    case ReduceOp::argmin: {
      const bool is_max = op == ReduceOp::max || op == ReduceOp::argmax;
      T best = a[0];
      int64_t bi = 0;
      for (int64_t i = 1; i < r; ++i) {
        T v = a[i];
        if constexpr (std::is_floating_point_v<T>) {
          if (best != best) break;  // NaN wins and stays
          if (v != v) {
            best = v;
            bi = i;
            break;
          }
        }
        if (is_max ? v > best : v < best) {
          best = v;
          bi = i;
        }
      }
      if (out) *out = best;
      if (idx) *idx = bi;
      return;
    }
    case ReduceOp::logsumexp: {
      if constexpr (std::is_floating_point_v<T>) {
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t i = 0; i < r; ++i) m = std::max(m, static_cast<double>(a[i]));
        if (std::isinf(m)) {  // all -inf (or +inf present): lse is m
          *out = static_cast<T>(m);
          for (int64_t i = 0; i < r; ++i)
            if (a[i] != a[i]) *out = a[i];
          return;
        }
        double s = 0;
        for (int64_t i = 0; i < r; ++i) s += std::exp(static_cast<double>(a[i]) - m);
        *out = static_cast<T>(m + std::log(s));
      }
      return;
    }
    case ReduceOp::any_nonfinite: {
      bool bad = false;
      if constexpr (std::is_floating_point_v<T>)
        for (int64_t i = 0; i < r; ++i) bad |= !std::isfinite(a[i]);
      *out = static_cast<T>(bad);
      return;
    }
  }
}

}  // namespace

void reduce_kernel(ReduceOp op, const Tensor& out, const Tensor& idx, const Tensor& in,
                   int64_t outer, int64_t r) {
  int64_t* ip = idx.defined() ? idx.data_ptr<int64_t>() : nullptr;
  const bool index_only = op == ReduceOp::argmax || op == ReduceOp::argmin;
  dispatch_dtype(in.dtype(), "reduce", [&]<class T>() {
    if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>) {
      fail("reduce kernel: 16-bit inputs are converted to f32 by the op layer");
    } else {
      const T* a = in.data_ptr<T>();
      T* o = index_only ? nullptr : out.data_ptr<T>();
      // One long row (a full reduction): split the row over threads, then combine.
      if (outer == 1 && r >= 1 << 16 && op == ReduceOp::sum && get_num_threads() > 1) {
        using A = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
        int nt = get_num_threads();
        std::vector<A> part(nt, 0);
        int64_t chunk = (r + nt - 1) / nt;
        parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
          for (int64_t t = b; t < e; ++t) {
            int64_t s = t * chunk, n = std::min(r, s + chunk) - s;
            if (n > 0) part[t] = sum_row<T, A>(a + s, n);
          }
        });
        A s = 0;
        for (A v : part) s += v;
        *o = static_cast<T>(s);
        return;
      }
      parallel_for(0, outer, std::max<int64_t>(1, 32768 / std::max<int64_t>(r, 1)),
                   [&](int64_t b, int64_t e) {
                     for (int64_t i = b; i < e; ++i)
                       reduce_row<T>(op, a + i * r, r, o ? o + i : nullptr, ip ? ip + i : nullptr);
                   });
    }
  });
}

}  // namespace coil::cpu
