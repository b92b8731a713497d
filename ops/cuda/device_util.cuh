// Device-code helpers shared by ops/cuda/*.cu: the grid size of an element loop, the loop itself,
// and a dispatch over the arithmetic element types.
#pragma once
#include <cstdint>

#include "launch.h"

namespace coil::cuda {

inline int blocks_for(int64_t n) {
  const int64_t b = (n + 255) / 256;
  return static_cast<int>(b < 65535 * 8 ? (b > 0 ? b : 1) : 65535 * 8);
}

// A grid-stride loop over [0, n) for kernels launched with blocks_for(n) blocks of 256.
#define COIL_GRID_LOOP(i, n)                                                \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(blockDim.x) * gridDim.x)

// Calls f(T{}) for the arithmetic Ty values (f32, f64, i32, i64; b8 as uint8_t when kWithBool).
template <bool kWithBool = false, class F>
void by_type(Ty t, F&& f) {
  switch (t) {
    case Ty::f32:
      return f(float{});
    case Ty::f64:
      return f(double{});
    case Ty::i32:
      return f(int32_t{});
    case Ty::i64:
      return f(int64_t{});
    case Ty::b8:
      if constexpr (kWithBool) f(uint8_t{});
      return;
    default:
      return;
  }
}

}  // namespace coil::cuda
