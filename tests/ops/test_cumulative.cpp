#include "test_util.h"

using namespace coil;

namespace {
std::vector<double> ref_cum(const Tensor& x, int64_t d, bool prod, bool reverse = false) {
  std::vector<double> v = ct::vals(x), r(v.size());
  const Shape& s = x.sizes();
  d = d < 0 ? d + x.dim() : d;
  for (int64_t i = 0; i < x.numel(); ++i) {
    Shape idx = ct::unravel(i, s);
    double acc = prod ? 1 : 0;
    int64_t lo = reverse ? idx[d] : 0, hi = reverse ? s[d] - 1 : idx[d];
    for (int64_t t = lo; t <= hi; ++t) {
      Shape j = idx;
      j[d] = t;
      double e = v[ct::ravel(j, s)];
      acc = prod ? acc * e : acc + e;
    }
    r[i] = acc;
  }
  return r;
}
}  // namespace

TEST_SUITE("ops.cumulative") {
  TEST_CASE("cumsum and cumprod along every dim, views, reverse") {
    for (Shape s : {Shape{7}, Shape{3, 5}, Shape{2, 9, 3}, Shape{1, 1000}}) {
      for (int64_t d = -static_cast<int64_t>(s.size()); d < static_cast<int64_t>(s.size()); ++d) {
        Tensor x = ct::rnd(s, kF32, 0.5, 1.5, true);
        ct::check_close(cumsum(x, d), ref_cum(x, d, false), 1e-5, 1e-5, "cumsum");
        ct::check_close(cumsum(x, d, true), ref_cum(x, d, false, true), 1e-5, 1e-5,
                        "cumsum reverse");
        if (s.back() < 100)
          ct::check_close(cumprod(x, d), ref_cum(x, d, true), 1e-5, 1e-6, "cumprod");
      }
    }
    CHECK(cumsum(tensor(std::vector<int32_t>{1, 2, 3}), 0).dtype() == kI64);
  }

  TEST_CASE("gradients, including cumprod through zeros") {
    for (const char* n : {"cumsum", "cumprod"}) {
      GradcheckCase c = op_info(n).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
    }
    Tensor x = tensor(std::vector<double>{2, 0, 3, 0, 5}).requires_grad_();
    ct::check_gradcheck([](const TensorList& v) { return cumprod(v[0], 0); }, {x});
    Tensor y = tensor(std::vector<double>{2, 0, 3, 4}).requires_grad_();
    cumprod(y, 0).sum().backward();
    // d/dy1 of (2, 2*y1, 2*y1*3, 2*y1*3*4) summed = 2 + 6 + 24
    ct::check_close(y.grad(), {1, 32, 0, 0}, 1e-12, 0);
  }

  TEST_CASE("bad dims") {
    ct::check_error([] { cumsum(ones({2, 3}), 2); }, {"cumsum", "dim 2"});
  }
}
