// CPU cumulative kernels. Layout: contiguous [outer, n, inner]; the scan runs along n and is
// vectorised across inner. Sums of f32 carry in f64 for accuracy over long rows.
#include <type_traits>
#include <vector>

#include "../../core/parallel.h"
#include "kernels.h"

namespace coil::cpu {

void scan_kernel(ScanOp op, const Tensor& out, const Tensor& in, const Tensor& aux, int64_t outer,
                 int64_t n, int64_t inner, bool reverse) {
  dispatch_dtype(in.dtype(), "cumsum", [&]<class T>() {
    if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Half> ||
                  std::is_same_v<T, bool>) {
      fail("scan kernel: unsupported dtype ", in.dtype());
    } else {
      using A = std::conditional_t<std::is_floating_point_v<T>, double, T>;
      const T* x = in.data_ptr<T>();
      const T* g = aux.defined() ? aux.data_ptr<T>() : nullptr;
      T* o = out.data_ptr<T>();
      parallel_for(0, outer, 1, [&](int64_t b, int64_t e) {
        std::vector<A> acc(static_cast<size_t>(inner)), pre(static_cast<size_t>(inner));
        for (int64_t r = b; r < e; ++r) {
          const T* xr = x + r * n * inner;
          T* orow = o + r * n * inner;
          if (op == ScanOp::cumprod_grad) {
            // dx_k = P_{k-1} * S_k, P the exclusive prefix product, S_k = g_k + x_{k+1} S_{k+1}
            const T* gr = g + r * n * inner;
            for (int64_t c = 0; c < inner; ++c) acc[c] = 0;
            for (int64_t t = n - 1; t >= 0; --t) {
              for (int64_t c = 0; c < inner; ++c) {
                A next_x = t + 1 < n ? static_cast<A>(xr[(t + 1) * inner + c]) : A(0);
                acc[c] = static_cast<A>(gr[t * inner + c]) + next_x * acc[c];
                orow[t * inner + c] = static_cast<T>(acc[c]);  // S_k for now
              }
            }
            for (int64_t c = 0; c < inner; ++c) pre[c] = 1;
            for (int64_t t = 0; t < n; ++t)
              for (int64_t c = 0; c < inner; ++c) {
                orow[t * inner + c] = static_cast<T>(pre[c] * static_cast<A>(orow[t * inner + c]));
                pre[c] *= static_cast<A>(xr[t * inner + c]);
              }
            continue;
          }
          const A init = op == ScanOp::cumsum ? A(0) : A(1);
          for (int64_t c = 0; c < inner; ++c) acc[c] = init;
          for (int64_t s = 0; s < n; ++s) {
            int64_t t = reverse ? n - 1 - s : s;
            for (int64_t c = 0; c < inner; ++c) {
              A v = static_cast<A>(xr[t * inner + c]);
              acc[c] = op == ScanOp::cumsum ? acc[c] + v : acc[c] * v;
              orow[t * inner + c] = static_cast<T>(acc[c]);
            }
          }
        }
      });
    }
  });
}

}  // namespace coil::cpu
