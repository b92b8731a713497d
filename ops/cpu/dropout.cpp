// CPU dropout. Layout: in, out, mask contiguous with the same numel, holding elements first ..
// first + numel - 1 of the draw. One Philox call gives four 32-bit draws, so element e uses
// counter offset + e / 4, lane e % 4: the mask depends only on (seed, offset), never on how the
// range is split over threads or ranks. Philox runs for a block of
// counters first, in a loop the compiler vectorises across counters, then the block is applied.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../../core/parallel.h"
#include "../../core/rng.h"
#include "kernels.h"

namespace coil::cpu {

namespace {
constexpr int64_t kGroups = 64;  // Philox calls per block
}  // namespace

void dropout_kernel(const Tensor& out, const Tensor& mask, const Tensor& in, double p, double scale,
                    uint64_t seed, uint64_t offset, uint64_t first) {
  const int64_t n = in.numel();
  if (n == 0) return;
  // counters c0 .. c1 - 1 cover the elements; block b draws c0 + b * kGroups + (0 .. kGroups - 1)
  const int64_t f = static_cast<int64_t>(first), c0 = f / 4, c1 = (f + n - 1) / 4 + 1;
  const int64_t blocks = (c1 - c0 + kGroups - 1) / kGroups;
  // u = draw / 2^32 is kept when u >= p, that is when draw >= ceil(p 2^32) (exact in double)
  const uint64_t threshold = static_cast<uint64_t>(std::ceil(p * 4294967296.0));
  dispatch_dtype(in.dtype(), "dropout", [&]<class T>() {
    if constexpr (std::is_integral_v<T>) {
      fail("dropout kernel: expected a floating dtype, got ", in.dtype());
    } else {
      using C = std::conditional_t<std::is_same_v<T, double>, double, float>;
      const T* x = in.data_ptr<T>();
      T* o = out.data_ptr<T>();
      bool* mk = mask.data_ptr<bool>();
      const C sc = static_cast<C>(scale);
      parallel_for(0, blocks, 16, [&](int64_t b, int64_t e) {
        alignas(64) uint32_t bits[4 * kGroups];
        for (int64_t blk = b; blk < e; ++blk) {
          const int64_t g0 = c0 + blk * kGroups;
          for (int64_t l = 0; l < kGroups; ++l) {  // the last block may draw unused counters
            auto r = philox4x32(seed, offset + static_cast<uint64_t>(g0 + l));
            bits[4 * l] = r[0];
            bits[4 * l + 1] = r[1];
            bits[4 * l + 2] = r[2];
            bits[4 * l + 3] = r[3];
          }
          // elements e0 .. e1 - 1 of the draw are bits[e - 4 g0] and out[e - f]
          const int64_t e0 = std::max(f, 4 * g0), e1 = std::min(f + n, 4 * (g0 + kGroups));
          for (int64_t e = e0; e < e1; ++e) {
            const bool keep = bits[e - 4 * g0] >= threshold;
            const int64_t i = e - f;
            mk[i] = keep;
            o[i] = keep ? static_cast<T>(static_cast<C>(x[i]) * sc) : static_cast<T>(C(0));
          }
        }
      });
    }
  });
}

}  // namespace coil::cpu
