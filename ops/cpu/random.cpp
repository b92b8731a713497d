// CPU random fill. Element e of the draw uses Philox counter (offset + e) (normal: the pair 2j,
// 2j+1 shares counter offset + j); `out` holds elements first .. first + numel - 1. Results do
// not depend on how the range is split over threads or ranks.
#include <cmath>

#include "../../core/parallel.h"
#include "../../core/rng.h"
#include "kernels.h"

namespace coil::cpu {

void random_kernel(RandomKind kind, const Tensor& out, double a, double b, uint64_t seed,
                   uint64_t offset, uint64_t first) {
  const int64_t n = out.numel();
  dispatch_dtype(out.dtype(), "random", [&]<class T>() {
    T* o = out.data_ptr<T>();
    auto store = [o](int64_t i, double v) {
      if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>) {
        o[i] = T(static_cast<float>(v));
      } else {
        o[i] = static_cast<T>(v);
      }
    };
    if (kind == RandomKind::normal) {
      // Box-Muller gives two normals per draw: elements 2j and 2j+1 share counter (offset + j).
      if (n == 0) return;
      const int64_t f = static_cast<int64_t>(first), j0 = f / 2, j1 = (f + n - 1) / 2 + 1;
      parallel_for(j0, j1, 2048, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) {
          auto r = philox4x32(seed, offset + static_cast<uint64_t>(j));
          double u1 = 1.0 - uint_to_unit_f64(r[0], r[1]);  // (0, 1]
          double u2 = 6.283185307179586 * uint_to_unit_f64(r[2], r[3]);
          double rad = b * std::sqrt(-2.0 * std::log(u1));
          if (2 * j >= f) store(2 * j - f, a + rad * std::cos(u2));
          if (2 * j + 1 < f + n) store(2 * j + 1 - f, a + rad * std::sin(u2));
        }
      });
      return;
    }
    parallel_for(0, n, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        auto r = philox4x32(seed, offset + first + static_cast<uint64_t>(i));
        double v = 0;
        switch (kind) {
          case RandomKind::uniform:
            v = a + (b - a) * uint_to_unit_f64(r[0], r[1]);
            break;
          case RandomKind::normal:  // handled above
            break;
          case RandomKind::randint: {
            uint64_t span = static_cast<uint64_t>(b - a);
            uint64_t x = (static_cast<uint64_t>(r[0]) << 32) | r[1];
            v = a + static_cast<double>(x % span);
            break;
          }
          case RandomKind::bernoulli:
            v = uint_to_unit_f64(r[0], r[1]) < a ? 1.0 : 0.0;
            break;
        }
        store(i, v);
      }
    });
  });
}

}  // namespace coil::cpu
