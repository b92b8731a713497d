#include "loops.h"

namespace coil::cpu {

ElemLoop make_loop(const TensorList& ops) {
  ElemLoop L;
  L.n_ops = static_cast<int>(ops.size());
  const Shape& shape = ops[0].sizes();
  const int nd = static_cast<int>(shape.size());
  std::vector<std::array<int64_t, ElemLoop::kMaxOps>> st(nd);
  for (int k = 0; k < L.n_ops; ++k) {
    const Tensor& t = ops[k];
    L.base[k] = static_cast<char*>(t.raw_data());
    const int64_t es = static_cast<int64_t>(t.element_size());
    const int off = nd - static_cast<int>(t.dim());
    for (int d = 0; d < nd; ++d) {
      int64_t s = 0;
      if (d >= off && t.sizes()[d - off] != 1) s = t.strides()[d - off] * es;
      st[d][k] = s;
    }
  }
  // Drop size-1 dims, then merge dim d into d+1 where every operand is contiguous across them.
  Shape sh;
  std::vector<std::array<int64_t, ElemLoop::kMaxOps>> ss;
  for (int d = 0; d < nd; ++d) {
    if (shape[d] == 1) continue;
    if (!sh.empty()) {
      bool mergeable = true;
      for (int k = 0; k < L.n_ops; ++k)
        if (ss.back()[k] != st[d][k] * shape[d]) mergeable = false;
      if (mergeable) {
        sh.back() *= shape[d];
        ss.back() = st[d];
        continue;
      }
    }
    sh.push_back(shape[d]);
    ss.push_back(st[d]);
  }
  L.shape = sh;
  L.strides = ss;
  L.numel = shape_numel(shape);
  return L;
}

}  // namespace coil::cpu
