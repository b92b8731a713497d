#include "parallel.h"

#include <algorithm>
#include <exception>

#include "error.h"
#ifdef _OPENMP
#include <omp.h>
#endif

namespace coil {

int get_num_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) {
  COIL_CHECK(n >= 1, "set_num_threads: expected a positive count, got ", n);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

bool in_parallel_region() {
#ifdef _OPENMP
  return omp_in_parallel();
#else
  return false;
#endif
}

namespace detail {
void parallel_for_impl(int64_t begin, int64_t end, int64_t grain, RangeFn fn, void* ctx) {
  const int64_t n = end - begin;
  int nt = get_num_threads();
  if (nt <= 1 || n <= grain || in_parallel_region()) {
    fn(ctx, begin, end);
    return;
  }
  nt = static_cast<int>(std::min<int64_t>(nt, (n + grain - 1) / std::max<int64_t>(grain, 1)));
#ifdef _OPENMP
  // Exceptions must not cross the OpenMP region: keep the first and rethrow after.
  std::exception_ptr err;
#pragma omp parallel num_threads(nt)
  {
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    int64_t chunk = (n + T - 1) / T;
    int64_t b = begin + t * chunk, e = std::min(end, b + chunk);
    if (b < e) {
      try {
        fn(ctx, b, e);
      } catch (...) {
#pragma omp critical
        if (!err) err = std::current_exception();
      }
    }
  }
  if (err) std::rethrow_exception(err);
#else
  fn(ctx, begin, end);
#endif
}
}  // namespace detail

}  // namespace coil
