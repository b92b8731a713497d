#include <limits>

#include "test_util.h"

using namespace coil;

TEST_SUITE("ops.dropout") {
  TEST_CASE("kept fraction and scale on 100k elements") {
    manual_seed(31);
    for (double p : {0.1, 0.3, 0.5, 0.9}) {
      CAPTURE(p);
      Tensor x = ones({100000});
      std::vector<double> y = ct::vals(dropout(x, p));
      const double scale = static_cast<double>(static_cast<float>(1.0 / (1.0 - p)));
      int64_t kept = 0;
      bool values_ok = true;
      for (double v : y) {
        if (v != 0) {
          ++kept;
          values_ok &= v == scale;
        }
      }
      CHECK(values_ok);
      // binomial std is at most 0.0016 here: 0.01 is more than six sigmas
      CHECK(std::fabs(static_cast<double>(kept) / 1e5 - (1 - p)) < 0.01);
    }
  }

  TEST_CASE("same seed, same mask, whatever the thread count; fresh draws differ") {
    const int threads = get_num_threads();
    Tensor x = ct::rnd({317, 331}, kF32, -1, 1, true);  // odd sizes, non-contiguous
    auto draw = [&](int nt) {
      set_num_threads(nt);
      manual_seed(77);
      return ct::vals(dropout(x, 0.4));
    };
    std::vector<double> one = draw(1), two = draw(2), three = draw(3);
    set_num_threads(threads);
    CHECK(one == two);
    CHECK(one == three);
    // the output keeps x's values at the kept positions
    std::vector<double> xv = ct::vals(x);
    bool match = true;
    for (size_t i = 0; i < xv.size(); ++i)
      match &= one[i] == 0 || one[i] == static_cast<double>(static_cast<float>(xv[i]) / 0.6f) ||
               std::fabs(one[i] - xv[i] / 0.6) < 1e-6;
    CHECK(match);
    manual_seed(77);
    std::vector<double> a = ct::vals(dropout(x, 0.4)), b = ct::vals(dropout(x, 0.4));
    CHECK(a == one);
    CHECK(a != b);
    manual_seed(78);
    CHECK(ct::vals(dropout(x, 0.4)) != one);
  }

  TEST_CASE("the mask is the documented Philox draw: counter offset + i / 4, lane i % 4") {
    manual_seed(99);
    Tensor warm = empty({5});
    uniform_(warm);  // move the generator off offset 0
    RngState s = get_rng_state();
    const double p = 0.35;
    std::vector<double> y = ct::vals(dropout(ones({1001}), p));
    bool same = true;
    for (size_t i = 0; i < y.size(); ++i) {
      auto r = philox4x32(s.seed, s.offset + i / 4);
      const bool keep = static_cast<double>(r[i % 4]) / 4294967296.0 >= p;
      same &= (y[i] != 0) == keep;
    }
    CHECK(same);
    CHECK(get_rng_state().offset == s.offset + 251);  // (1001 + 3) / 4 counters reserved
  }

  TEST_CASE("identity when p == 0 or not training; zeros when p == 1") {
    Tensor x = ct::rnd({5, 7}, kF32).requires_grad_();
    CHECK(dropout(x, 0.0).is_same(x));
    CHECK(dropout(x, 0.7, false).is_same(x));
    CHECK(dropout(x, 1.0, false).is_same(x));
    const float inf = std::numeric_limits<float>::infinity();
    Tensor xi = tensor(std::vector<float>{1, -2, inf, 3}).requires_grad_();
    Tensor y = dropout(xi, 1.0);
    ct::check_close(y, {0, 0, 0, 0}, 0, 0, "p == 1");
    y.sum().backward();
    ct::check_close(xi.grad(), {0, 0, 0, 0}, 0, 0, "p == 1 grad");
  }

  TEST_CASE("backward is grad * mask / (1 - p); dtypes are kept") {
    manual_seed(32);
    Tensor x = ones({64, 33}, kF64).requires_grad_();
    Tensor y = dropout(x, 0.25);
    Tensor w = ct::rnd({64, 33}, kF64);
    (y * w).sum().backward();
    // x is ones, so y itself is mask / (1 - p)
    std::vector<double> yv = ct::vals(y), wv = ct::vals(w), ref;
    for (size_t i = 0; i < yv.size(); ++i) ref.push_back(yv[i] * wv[i]);
    ct::check_close(x.grad(), ref, 1e-15, 0);
    for (DType t : {kF32, kF64, kBF16, kF16}) {
      Tensor xt = ones({10, 3}, t);
      Tensor yt = dropout(xt, 0.5);
      CHECK(yt.dtype() == t);
      for (double v : ct::vals(yt)) CHECK((v == 0 || v == 2));
    }
    GradcheckCase c = op_info("dropout").gradcheck();
    ct::check_gradcheck(c.fn, c.inputs);
    CHECK(op_info("dropout").has_kernel(kCPU));
    CHECK(op_info("dropout").boxed);
  }

  TEST_CASE("checkpoint replays the same mask in backward") {
    Tensor w = ct::rnd({8, 9}, kF64);
    auto fn = [w](const TensorList& v) { return TensorList{dropout(v[0] * 2.0, 0.5) * w}; };
    Tensor x1 = ct::rnd({8, 9}, kF64).requires_grad_();
    Tensor x2 = x1.detach().clone().requires_grad_();
    manual_seed(5);
    Tensor y1 = fn({x1})[0];
    y1.sum().backward();
    manual_seed(5);
    Tensor y2 = checkpoint(fn, {x2})[0];
    ct::check_close(y2, ct::vals(y1), 0, 0);
    y2.sum().backward();
    ct::check_close(x2.grad(), ct::vals(x1.grad()), 0, 0);
  }

  TEST_CASE("bad inputs are errors naming the op and p") {
    Tensor x = zeros({3});
    ct::check_error([&] { dropout(x, -0.1); }, {"dropout", "-0.1"});
    ct::check_error([&] { dropout(x, 1.5); }, {"dropout", "1.5"});
    ct::check_error([&] { dropout(x, std::nan("")); }, {"dropout", "nan"});
    ct::check_error([&] { dropout(x, 2.0, false); }, {"dropout", "2"});
    ct::check_error([&] { dropout(zeros({3}, kI64), 0.5); }, {"dropout", "int64"});
  }
}
