// Printing: tensor([[1, 2], [3, 4]], dtype=float32), long dims elided with "...".
#include <iomanip>
#include <ostream>

#include "../core/tensor.h"

namespace coil {

namespace {
void print_rec(std::ostream& os, const std::vector<double>& v, const Shape& s, size_t d,
               int64_t off, int64_t stride) {
  if (d == s.size()) {
    os << v[off];
    return;
  }
  const int64_t n = s[d];
  int64_t inner = stride / std::max<int64_t>(n, 1);
  os << "[";
  for (int64_t i = 0; i < n; ++i) {
    if (n > 8 && i == 3) {
      os << "..., ";
      i = n - 3;
    }
    print_rec(os, v, s, d + 1, off + i * inner, inner);
    if (i + 1 < n) os << ", ";
  }
  os << "]";
}
}  // namespace

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  if (!t.defined()) return os << "tensor(undefined)";
  std::vector<double> v = to_vector<double>(t);
  os << "tensor(";
  auto flags = os.flags();
  os << std::setprecision(6);
  print_rec(os, v, t.sizes(), 0, 0, t.numel());
  os.flags(flags);
  os << ", dtype=" << t.dtype();
  if (!t.device().is_cpu()) os << ", device=" << t.device();
  if (t.requires_grad()) os << ", requires_grad=true";
  return os << ")";
}

}  // namespace coil
