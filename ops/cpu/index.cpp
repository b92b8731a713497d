// CPU indexing kernels. Layout: the indexed tensor is contiguous [outer, n, inner]; index, src and
// gather's out are contiguous [outer, m, inner], or index is 1-d (m) for index_select/index_add.
// Indices are int64 and checked here: an index outside [0, n) is an error naming op, dim and size.
// The accumulating kernels split work by destination, never by source row, so duplicate indices
// neither race nor change the summation order with the thread count.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../../core/parallel.h"
#include "kernels.h"

namespace coil::cpu {

namespace {

constexpr int64_t kGrain = 32768;  // elements per task below which threads do not pay

// Rows of `width` elements per task, so a task moves about kGrain elements.
int64_t rows_grain(int64_t width) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(width, 1));
}

[[noreturn]] void bad_index(const IndexGeom& g, int64_t v) {
  fail(g.op, ": index ", v, " is out of range for dim ", g.dim, " of size ", g.n);
}
inline void check_index(const IndexGeom& g, int64_t v) {
  if (__builtin_expect(v < 0 || v >= g.n, 0)) bad_index(g, v);
}
// A 1-d index is checked once up front, so the copy loops below stay branch-free.
void check_all(const IndexGeom& g, const int64_t* idx, int64_t m) {
  for (int64_t j = 0; j < m; ++j) check_index(g, idx[j]);
}

// Kernels that add work in the compute dtypes only: the op layer widens 16-bit floats to f32.
template <class T>
constexpr bool kAddable = !std::is_same_v<T, BFloat16> && !std::is_same_v<T, Half>;

// bool accumulates as logical or, as in PyTorch.
template <class T>
inline void add_into(T& dst, T v) {
  if constexpr (std::is_same_v<T, bool>) {
    dst = dst || v;
  } else {
    dst += v;
  }
}
template <class T>
inline T scaled(T a, T v) {
  if constexpr (std::is_same_v<T, bool>) {
    return a && v;
  } else {
    return static_cast<T>(a * v);
  }
}

}  // namespace

void index_select_kernel(const Tensor& out, const Tensor& x, const Tensor& index,
                         const IndexGeom& g) {
  const int64_t* idx = index.data_ptr<int64_t>();
  check_all(g, idx, g.m);
  // Rows move whole, so the copy is dtype-agnostic.
  const size_t es = x.element_size(), row = static_cast<size_t>(g.inner) * es;
  const char* src = static_cast<const char*>(x.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  const int64_t rows = g.outer * g.m;
  const int64_t grain = rows_grain(g.inner);
  parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t o = r / g.m, j = r % g.m;
      std::memcpy(dst + static_cast<size_t>(r) * row,
                  src + static_cast<size_t>(o * g.n + idx[j]) * row, row);
    }
  });
}

void index_add_kernel(const Tensor& out, const Tensor& src, const Tensor& index, const IndexGeom& g,
                      double alpha) {
  const int64_t* idx = index.data_ptr<int64_t>();
  check_all(g, idx, g.m);
  dispatch_dtype(out.dtype(), g.op, [&]<class T>() {
    if constexpr (!kAddable<T>) {
      fail(g.op, ": the kernel does not accumulate ", out.dtype());
    } else {
      T* o = out.data_ptr<T>();
      const T* s = src.data_ptr<T>();
      const T a = static_cast<T>(alpha);
      const bool unit = alpha == 1;
      // Tasks own ranges of destination rows [outer * n] and scan the whole index for rows they
      // own: duplicates in the index add in index order on one thread.
      const int64_t work = g.outer * g.m * g.inner;
      const int64_t grain = work < kGrain ? g.outer * g.n : 1;
      parallel_for(0, g.outer * g.n, grain, [&](int64_t b, int64_t e) {
        for (int64_t ob = b / g.n; ob * g.n < e; ++ob) {
          const int64_t lo = std::max(b, ob * g.n) - ob * g.n;
          const int64_t hi = std::min(e, (ob + 1) * g.n) - ob * g.n;
          for (int64_t j = 0; j < g.m; ++j) {
            const int64_t r = idx[j];
            if (r < lo || r >= hi) continue;
            T* orow = o + (ob * g.n + r) * g.inner;
            const T* srow = s + (ob * g.m + j) * g.inner;
            if (unit) {
              for (int64_t i = 0; i < g.inner; ++i) add_into(orow[i], srow[i]);
            } else {
              for (int64_t i = 0; i < g.inner; ++i) add_into(orow[i], scaled(a, srow[i]));
            }
          }
        }
      });
    }
  });
}

void gather_kernel(const Tensor& out, const Tensor& x, const Tensor& index, const IndexGeom& g) {
  dispatch_dtype(x.dtype(), g.op, [&]<class T>() {
    const T* xs = x.data_ptr<T>();
    const int64_t* idx = index.data_ptr<int64_t>();
    T* o = out.data_ptr<T>();
    const int64_t rows = g.outer * g.m;
    const int64_t grain = rows_grain(g.inner);
    parallel_for(0, rows, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t ob = r / g.m;
        const int64_t* irow = idx + r * g.inner;
        const T* xbase = xs + ob * g.n * g.inner;
        T* orow = o + r * g.inner;
        for (int64_t i = 0; i < g.inner; ++i) {
          check_index(g, irow[i]);
          orow[i] = xbase[irow[i] * g.inner + i];
        }
      }
    });
  });
}

void scatter_add_kernel(const Tensor& out, const Tensor& src, const Tensor& index,
                        const IndexGeom& g) {
  dispatch_dtype(out.dtype(), g.op, [&]<class T>() {
    if constexpr (!kAddable<T>) {
      fail(g.op, ": the kernel does not accumulate ", out.dtype());
    } else {
      T* o = out.data_ptr<T>();
      const T* s = src.data_ptr<T>();
      const int64_t* idx = index.data_ptr<int64_t>();
      // A task owns (outer row, column tile) pairs: every write to a column comes from the same
      // column of src, so tiles never collide and each element sums in index order.
      constexpr int64_t kTile = 256;
      const int64_t tiles = (g.inner + kTile - 1) / kTile;
      const int64_t work = g.outer * g.m * g.inner;
      const int64_t grain = work < kGrain ? g.outer * tiles : 1;
      parallel_for(0, g.outer * tiles, grain, [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          const int64_t ob = t / tiles, i0 = (t % tiles) * kTile;
          const int64_t i1 = std::min(g.inner, i0 + kTile);
          T* obase = o + ob * g.n * g.inner;
          for (int64_t j = 0; j < g.m; ++j) {
            const int64_t* irow = idx + (ob * g.m + j) * g.inner;
            const T* srow = s + (ob * g.m + j) * g.inner;
            for (int64_t i = i0; i < i1; ++i) {
              check_index(g, irow[i]);
              add_into(obase[irow[i] * g.inner + i], srow[i]);
            }
          }
        }
      });
    }
  });
}

void one_hot_kernel(const Tensor& out, const Tensor& ids, int64_t num_classes) {
  const int64_t* id = ids.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const int64_t n = ids.numel();
  parallel_for(0, n, rows_grain(num_classes), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t v = id[r];
      COIL_CHECK(v >= 0 && v < num_classes, "one_hot: class value ", v,
                 " is out of range for num_classes ", num_classes);
      int64_t* orow = o + r * num_classes;
      for (int64_t c = 0; c < num_classes; ++c) orow[c] = 0;
      orow[v] = 1;
    }
  });
}

}  // namespace coil::cpu
