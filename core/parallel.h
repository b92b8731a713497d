// Thread control and a parallel loop over an index range (OpenMP inside, none in this header).
#pragma once
#include <cstdint>

namespace coil {

int get_num_threads();
// Sets coil's threads; OpenBLAS (OpenMP build) follows the same setting, so the two never
// oversubscribe the cores.
void set_num_threads(int n);
bool in_parallel_region();

namespace detail {
using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);
void parallel_for_impl(int64_t begin, int64_t end, int64_t grain, RangeFn fn, void* ctx);
}  // namespace detail

// Calls f(b, e) on disjoint pieces of [begin, end); runs inline when the range is under `grain`
// or when already inside a parallel region.
template <class F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (end <= begin) return;
  detail::parallel_for_impl(
      begin, end, grain,
      [](void* ctx, int64_t b, int64_t e) { (*static_cast<const F*>(ctx))(b, e); },
      const_cast<F*>(&f));
}

}  // namespace coil
