// Strided elementwise loops shared by the CPU kernels (internal). An ElemLoop walks the output
// shape with one byte-stride per operand per dim; dims that are contiguous for every operand are
// merged first, so most loops run as one long inner row the compiler vectorises.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "../../core/parallel.h"
#include "../../core/tensor.h"

namespace coil::cpu {

inline constexpr int64_t kElemGrain = 32768;

struct ElemLoop {
  static constexpr int kMaxOps = 4;
  int n_ops = 0;
  Shape shape;                                        // merged dims, innermost last
  std::vector<std::array<int64_t, kMaxOps>> strides;  // bytes, per dim per operand
  std::array<char*, kMaxOps> base{};
  int64_t numel = 1;
};

// ops[0] is the output (its shape is the loop shape); inputs are broadcast to it.
ElemLoop make_loop(const TensorList& ops);

// Calls inner(char** ptrs, const int64_t* inner_strides, int64_t n) on rows of the loop, in
// parallel over the elements.
template <class Inner>
void run_loop(const ElemLoop& L, const Inner& inner, int64_t grain = kElemGrain) {
  const int nd = static_cast<int>(L.shape.size());
  const int64_t inner_n = nd ? L.shape[nd - 1] : 1;
  std::array<int64_t, ElemLoop::kMaxOps> in_st{};
  if (nd) in_st = L.strides[nd - 1];
  parallel_for(0, L.numel, grain, [&](int64_t b, int64_t e) {
    int64_t i = b;
    std::array<char*, ElemLoop::kMaxOps> ptrs;
    while (i < e) {
      int64_t pos = i % inner_n, outer = i / inner_n;
      for (int k = 0; k < L.n_ops; ++k) ptrs[k] = L.base[k] + pos * in_st[k];
      for (int d = nd - 2; d >= 0 && outer > 0; --d) {
        int64_t c = outer % L.shape[d];
        outer /= L.shape[d];
        for (int k = 0; k < L.n_ops; ++k) ptrs[k] += c * L.strides[d][k];
      }
      int64_t n = std::min(inner_n - pos, e - i);
      inner(ptrs.data(), in_st.data(), n);
      i += n;
    }
  });
}

}  // namespace coil::cpu
