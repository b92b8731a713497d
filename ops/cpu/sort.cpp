// CPU sort/top-k kernel. Layout: in contiguous [outer, n], sorted along its last dim; values and
// indices contiguous [outer, k]; scratch int64 [outer, n] when k < n. Each row sorts a
// permutation of 0..n-1 in place (in indices, or scratch for top-k) with a comparator that breaks
// ties by position: the order is total, so std::sort and std::partial_sort are stable without
// the buffer std::stable_sort would allocate. NaN compares as the largest value, as in PyTorch.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../../core/parallel.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

// a < b with NaN above every number and equal to itself.
template <class T>
inline bool value_less(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(b)) return !std::isnan(a);
    if (std::isnan(a)) return false;
  }
  return a < b;
}

template <class T>
void sort_rows(const Tensor& values, const Tensor& indices, const Tensor& scratch, const Tensor& in,
               int64_t outer, int64_t n, int64_t k, bool descending) {
  const T* x = in.data_ptr<T>();
  T* vo = values.data_ptr<T>();
  int64_t* io = indices.data_ptr<int64_t>();
  int64_t* perm_base = k < n ? scratch.data_ptr<int64_t>() : io;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
  parallel_for(0, outer, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const T* row = x + r * n;
      int64_t* perm = perm_base + r * n;
      for (int64_t i = 0; i < n; ++i) perm[i] = i;
      auto before = [row, descending](int64_t i, int64_t j) {
        const T a = row[i], c = row[j];
        if (descending ? value_less(c, a) : value_less(a, c)) return true;
        if (descending ? value_less(a, c) : value_less(c, a)) return false;
        return i < j;  // equal values keep their order
      };
      if (k == n) {
        std::sort(perm, perm + n, before);
      } else {
        std::partial_sort(perm, perm + k, perm + n, before);
      }
      T* vrow = vo + r * k;
      int64_t* irow = io + r * k;
      for (int64_t i = 0; i < k; ++i) {
        irow[i] = perm[i];
        vrow[i] = row[perm[i]];
      }
    }
  });
}

}  // namespace

void sort_kernel(const Tensor& values, const Tensor& indices, const Tensor& scratch,
                 const Tensor& in, int64_t outer, int64_t n, int64_t k, bool descending) {
  dispatch_dtype(in.dtype(), "sort", [&]<class T>() {
    if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>) {
      fail("sort: the kernel does not compare ", in.dtype(), "; widen it to f32 first");
    } else {
      sort_rows<T>(values, indices, scratch, in, outer, n, k, descending);
    }
  });
}

}  // namespace coil::cpu
