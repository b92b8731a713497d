#include "test_util.h"

using namespace coil;

TEST_SUITE("nn.optim") {
  TEST_CASE("AdamW matches a float64 reference loop over several steps") {
    manual_seed(9);
    Tensor p = ct::rnd({5}, kF64).requires_grad_();
    std::vector<double> ref = ct::vals(p), m(5, 0), v(5, 0);
    optim::AdamWOptions o;
    o.lr = 0.1;
    o.beta1 = 0.8;
    o.beta2 = 0.9;
    o.eps = 1e-6;
    o.weight_decay = 0.05;
    optim::AdamW opt({p}, o);
    for (int t = 1; t <= 4; ++t) {
      opt.zero_grad();
      (p * p * p).sum().backward();  // grad 3 p^2
      opt.step();
      for (int i = 0; i < 5; ++i) {
        double g = 3 * ref[i] * ref[i];
        ref[i] *= 1 - o.lr * o.weight_decay;
        m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
        v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
        double mh = m[i] / (1 - std::pow(o.beta1, t)), vh = v[i] / (1 - std::pow(o.beta2, t));
        ref[i] -= o.lr * mh / (std::sqrt(vh) + o.eps);
      }
      ct::check_close(p, ref, 1e-12, 1e-12, "step");
    }
  }

  TEST_CASE("SGD with momentum, Nesterov and weight decay matches a reference") {
    for (bool nesterov : {false, true}) {
      Tensor p = tensor(std::vector<double>{1, -2}).requires_grad_();
      std::vector<double> ref = {1, -2}, buf(2, 0);
      optim::SGDOptions o;
      o.lr = 0.1;
      o.momentum = 0.9;
      o.weight_decay = 0.01;
      o.nesterov = nesterov;
      optim::SGD opt({p}, o);
      for (int t = 0; t < 3; ++t) {
        opt.zero_grad();
        (p * p).sum().backward();
        opt.step();
        for (int i = 0; i < 2; ++i) {
          double d = 2 * ref[i] + o.weight_decay * ref[i];
          buf[i] = t == 0 ? d : o.momentum * buf[i] + d;
          ref[i] -= o.lr * (nesterov ? d + o.momentum * buf[i] : buf[i]);
        }
        ct::check_close(p, ref, 1e-12, 1e-12);
      }
    }
  }

  TEST_CASE("param groups, clip_grad_norm_, errors") {
    Tensor a = ones({2}, kF64).requires_grad_(), b = ones({2}, kF64).requires_grad_();
    optim::AdamW opt(std::vector<optim::ParamGroup>{{{a}, -1, 0.0}, {{b}, -1, 0.5}},
                     optim::AdamWOptions{});
    (a.sum() + b.sum()).backward();
    opt.step();
    CHECK(ct::vals(a)[0] == doctest::Approx(1 - 1e-3).epsilon(1e-9));
    CHECK(ct::vals(b)[0] == doctest::Approx(1 * (1 - 1e-3 * 0.5) - 1e-3).epsilon(1e-9));
    Tensor g = tensor(std::vector<double>{3, 4}).requires_grad_();
    (g * g * 0.5).sum().backward();  // grad = (3, 4), norm 5
    double n = optim::clip_grad_norm_({g}, 1.0);
    CHECK(n == doctest::Approx(5));
    ct::check_close(g.grad(), {0.6, 0.8}, 1e-6, 0);
    ct::check_error([] { optim::SGD({ones({2})}); }, {"SGD", "require grad", "[2]"});
    ct::check_error(
        [&] {
          optim::AdamWOptions o;
          o.beta1 = 1.0;
          optim::AdamW({a}, o);
        },
        {"AdamW", "betas", "1"});
  }
}
