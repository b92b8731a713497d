#include <limits>

#include "test_util.h"

using namespace coil;

namespace {
// softmax / log_softmax of row-major values of `shape` along dim d, by plain loops in f64.
std::vector<double> ref_softmax(const std::vector<double>& x, const Shape& shape, int64_t d,
                                bool log) {
  int64_t outer = 1, inner = 1;
  const int64_t nd = static_cast<int64_t>(shape.size()), n = nd ? shape[d] : 1;
  for (int64_t i = 0; i < d; ++i) outer *= shape[i];
  for (int64_t i = d + 1; i < nd; ++i) inner *= shape[i];
  std::vector<double> y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < inner; ++c) {
      auto at = [&](int64_t t) { return (o * n + t) * inner + c; };
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < n; ++t) m = std::max(m, x[at(t)]);
      double s = 0;
      for (int64_t t = 0; t < n; ++t) s += std::exp(x[at(t)] - m);
      for (int64_t t = 0; t < n; ++t)
        y[at(t)] = log ? x[at(t)] - m - std::log(s) : std::exp(x[at(t)] - m) / s;
    }
  return y;
}

Tensor run(bool log, const Tensor& x, int64_t d) { return log ? log_softmax(x, d) : softmax(x, d); }
}  // namespace

TEST_SUITE("ops.softmax") {
  TEST_CASE("forward matches a float64 reference on every dim, odd shapes, views and dtypes") {
    manual_seed(3);
    for (bool log : {false, true}) {
      for (Shape s : {Shape{7}, Shape{1, 1}, Shape{3, 37}, Shape{2, 5, 131}, Shape{4, 1, 9},
                      Shape{2, 3, 4, 5}}) {
        const int64_t nd = static_cast<int64_t>(s.size());
        for (bool nc : {false, true}) {
          Tensor x = ct::rnd(s, kF32, -6, 6, nc);
          std::vector<double> xv = ct::vals(x);
          for (int64_t dim = -nd; dim < nd; ++dim) {
            const std::string shape = shape_str(s);
            CAPTURE(log);
            CAPTURE(shape);
            CAPTURE(dim);
            CAPTURE(nc);
            const int64_t d = dim < 0 ? dim + nd : dim;
            std::vector<double> ref = ref_softmax(xv, s, d, log);
            Tensor y = run(log, x, dim);
            CHECK(y.dtype() == kF32);
            CHECK(y.sizes() == s);
            ct::check_close(y, ref, 2e-6, 2e-6, "f32");
            ct::check_close(run(log, x.to(kF64), dim), ref, 1e-12, 1e-12, "f64");
            Tensor xb = x.to(kBF16);
            Tensor yb = run(log, xb, dim);
            CHECK(yb.dtype() == kBF16);
            ct::check_close(yb, ref_softmax(ct::vals(xb), s, d, log), 1e-2, 1e-2, "bf16");
            Tensor yh = run(log, x.to(kF16), dim);
            CHECK(yh.dtype() == kF16);
            ct::check_close(yh, ref_softmax(ct::vals(x.to(kF16)), s, d, log), 2e-3, 2e-3, "f16");
          }
        }
      }
    }
  }

  TEST_CASE("long rows take the vectorised path and stay accurate") {
    manual_seed(4);
    for (int64_t n : {8, 15, 16, 17, 1000, 4099}) {
      Tensor x = ct::rnd({3, n}, kF32, -20, 20);
      for (bool log : {false, true}) {
        CAPTURE(n);
        CAPTURE(log);
        ct::check_close(run(log, x, 1), ref_softmax(ct::vals(x), {3, n}, 1, log), 2e-6,
                        log ? 2e-5 : 1e-7, "row");
        // inner > 1 with a wide column block
        Tensor xt = x.t();
        ct::check_close(run(log, xt, 0), ref_softmax(ct::vals(xt), {n, 3}, 0, log), 2e-6,
                        log ? 2e-5 : 1e-7, "column");
      }
    }
    Tensor wide = ct::rnd({2, 5, 600}, kF32, -5, 5);  // more columns than one block
    ct::check_close(softmax(wide, 1), ref_softmax(ct::vals(wide), {2, 5, 600}, 1, false), 2e-6,
                    1e-7);
  }

  TEST_CASE("shift invariance, large logits, -inf entries, 0-d and empty tensors") {
    Tensor x = tensor(std::vector<float>{1000, 1001, 1002, -1000});
    ct::check_close(softmax(x, 0), ref_softmax({1000, 1001, 1002, -1000}, {4}, 0, false), 1e-6,
                    1e-7);
    ct::check_close(log_softmax(x, 0), ref_softmax({1000, 1001, 1002, -1000}, {4}, 0, true), 1e-6,
                    1e-5);
    const float ninf = -std::numeric_limits<float>::infinity();
    Tensor m = tensor(std::vector<float>{0, ninf, 0, ninf, 1, 2, 3, 4, 5, 6}, {1, 10});
    std::vector<double> p = ct::vals(softmax(m, 1)), lp = ct::vals(log_softmax(m, 1));
    CHECK(p[1] == 0.0);
    CHECK(std::isinf(lp[1]));
    CHECK(lp[1] < 0);
    CHECK(std::isfinite(lp[0]));
    Tensor nanrow = tensor(std::vector<float>{1, NAN, 2});
    for (double v : ct::vals(softmax(nanrow, 0))) CHECK(std::isnan(v));
    Tensor s = scalar_tensor(3.5, kF32);
    ct::check_close(softmax(s, 0), {1}, 0, 0);
    ct::check_close(log_softmax(s, -1), {0}, 0, 0);
    CHECK(softmax(zeros({0, 5}), 1).sizes() == Shape{0, 5});
    CHECK(log_softmax(zeros({3, 0}), 1).sizes() == Shape{3, 0});
    CHECK(softmax(zeros({3, 0, 2}), 0).sizes() == Shape{3, 0, 2});
  }

  TEST_CASE("Tensor methods and rows summing to one") {
    manual_seed(5);
    Tensor x = ct::rnd({4, 6, 3}, kF32);
    ct::check_close(x.softmax(1), ct::vals(softmax(x, 1)), 0, 0);
    ct::check_close(x.log_softmax(-1), ct::vals(log_softmax(x, 2)), 0, 0);
    ct::check_close(x.softmax(1).sum({1}), std::vector<double>(12, 1.0), 1e-6, 1e-6);
    ct::check_close(x.log_softmax(0).exp().sum({0}), std::vector<double>(18, 1.0), 1e-6, 1e-6);
  }

  TEST_CASE("gradcheck: registry cases and every dim") {
    for (const char* name : {"softmax", "log_softmax"}) {
      CAPTURE(name);
      GradcheckCase c = op_info(name).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
      CHECK(op_info(name).has_kernel(kCPU));
      CHECK(op_info(name).boxed);
      ct::check_close(op_info(name).boxed({c.inputs[0]}, {{"dim", int64_t{1}}})[0],
                      ct::vals(c.fn(c.inputs)), 0, 0);
    }
    Tensor x = ct::rnd({3, 4, 5}, kF64, -3, 3);
    x.requires_grad_();
    for (bool log : {false, true})
      for (int64_t d : {0, 2, -1}) {
        CAPTURE(log);
        CAPTURE(d);
        ct::check_gradcheck([log, d](const TensorList& v) { return run(log, v[0], d); }, {x});
        // a non-contiguous view of the input
        ct::check_gradcheck(
            [log, d](const TensorList& v) { return run(log, v[0].transpose(0, 2), d); }, {x});
      }
  }

  TEST_CASE("bf16 backward is computed in f32 and matches the f64 gradient") {
    manual_seed(6);
    Tensor x64 = ct::rnd({5, 33}, kF64, -3, 3).to(kBF16).to(kF64);
    Tensor w = ct::rnd({5, 33}, kF64);
    for (bool log : {false, true}) {
      Tensor a = x64.clone().requires_grad_();
      (run(log, a, 1) * w).sum().backward();
      Tensor b = x64.to(kBF16).requires_grad_();
      (run(log, b, 1).to(kF64) * w).sum().backward();
      CHECK(b.grad().dtype() == kBF16);
      ct::check_close(b.grad(), ct::vals(a.grad()), 3e-2, 3e-2, log ? "log_softmax" : "softmax");
    }
  }

  TEST_CASE("bad inputs are errors naming the op and values") {
    ct::check_error([] { softmax(tensor(std::vector<int64_t>{1, 2}), 0); }, {"softmax", "int64"});
    ct::check_error([] { log_softmax(zeros({2, 3}), 2); }, {"log_softmax", "dim 2"});
    ct::check_error([] { softmax(zeros({2, 3}), -3); }, {"softmax", "-3"});
  }
}
