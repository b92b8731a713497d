#include <algorithm>
#include <limits>
#include <random>

#include "test_util.h"

using namespace coil;

namespace {
struct CeRef {
  std::vector<double> none;  // per target position
  double sum = 0, mean = 0;
};

// Cross entropy of row-major logits (N, C, L...) flattened to (N, C, L) and targets (N, L), by
// plain loops in f64, following PyTorch's definition of ignore_index and label smoothing.
CeRef ref_ce(const std::vector<double>& x, const std::vector<int64_t>& t, int64_t N, int64_t C,
             int64_t L, int64_t ignore, double eps) {
  CeRef r;
  int64_t valid = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t l = 0; l < L; ++l) {
      auto at = [&](int64_t c) { return x[(n * C + c) * L + l]; };
      const int64_t tgt = t[n * L + l];
      if (tgt == ignore) {
        r.none.push_back(0);
        continue;
      }
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < C; ++c) m = std::max(m, at(c));
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += std::exp(at(c) - m);
      const double lse = m + std::log(s);
      double smooth = 0;
      for (int64_t c = 0; c < C; ++c) smooth += -(at(c) - lse) / static_cast<double>(C);
      const double nll = -(at(tgt) - lse);
      r.none.push_back((1 - eps) * nll + eps * smooth);
      ++valid;
    }
  for (double v : r.none) r.sum += v;
  r.mean = r.sum / static_cast<double>(valid);
  return r;
}

// Targets in [0, C) with about a fifth set to `ignore` (when asked).
std::vector<int64_t> make_targets(int64_t n, int64_t C, int64_t ignore, bool with_ignored,
                                  unsigned seed) {
  std::mt19937 g(seed);
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (auto& v : t) v = static_cast<int64_t>(g() % static_cast<unsigned>(C));
  if (with_ignored)
    for (size_t i = 0; i < t.size(); i += 5) t[i] = ignore;
  return t;
}
}  // namespace

TEST_SUITE("ops.loss") {
  TEST_CASE("cross_entropy matches a float64 reference") {
    manual_seed(11);
    struct Case {
      Shape logits;
      int64_t ignore;
      bool with_ignored;
      double eps;
    };
    const Case cases[] = {{{7, 11}, -100, false, 0.0},      {{7, 11}, -100, true, 0.0},
                          {{7, 11}, 3, true, 0.1},          {{3, 5, 4}, -100, true, 0.25},
                          {{2, 3, 4, 5}, -100, false, 0.0}, {{1, 1}, -100, false, 0.3},
                          {{5, 130}, -1, true, 0.05}};
    unsigned seed = 1;
    for (const Case& k : cases) {
      const Shape& s = k.logits;
      const int64_t N = s[0], C = s[1];
      Shape ts{N};
      int64_t L = 1;
      for (size_t i = 2; i < s.size(); ++i) {
        ts.push_back(s[i]);
        L *= s[i];
      }
      std::vector<int64_t> tv = make_targets(N * L, C, k.ignore, k.with_ignored, seed++);
      for (bool nc : {false, true}) {
        Tensor x = ct::rnd(s, kF32, -4, 4, nc);
        CeRef r = ref_ce(ct::vals(x), tv, N, C, L, k.ignore, k.eps);
        const std::string shape = shape_str(s);
        CAPTURE(shape);
        CAPTURE(k.eps);
        CAPTURE(nc);
        for (DType tt : {kI64, kI32}) {
          Tensor t = tensor(tv, ts).to(tt);
          ct::check_close(cross_entropy(x, t, k.ignore, k.eps), {r.mean}, 1e-5, 1e-6, "mean");
          ct::check_close(cross_entropy(x, t, k.ignore, k.eps, "sum"), {r.sum}, 1e-5, 1e-5, "sum");
          Tensor none = cross_entropy(x, t, k.ignore, k.eps, "none");
          CHECK(none.sizes() == ts);
          ct::check_close(none, r.none, 1e-5, 1e-6, "none");
        }
        Tensor t = tensor(tv, ts);
        ct::check_close(cross_entropy(x.to(kF64), t, k.ignore, k.eps, "none"), r.none, 1e-12, 1e-12,
                        "f64");
        Tensor xb = x.to(kBF16);
        CeRef rb = ref_ce(ct::vals(xb), tv, N, C, L, k.ignore, k.eps);
        Tensor lb = cross_entropy(xb, t, k.ignore, k.eps);
        CHECK(lb.dtype() == kBF16);
        ct::check_close(lb, {rb.mean}, 1e-2, 1e-2, "bf16");
      }
    }
  }

  TEST_CASE("cross_entropy: unbatched logits, all targets ignored, extreme logits") {
    Tensor x = tensor(std::vector<double>{0.5, -1, 2});
    Tensor t = tensor(std::vector<int64_t>{2}, Shape{});
    CeRef r = ref_ce({0.5, -1, 2}, {2}, 1, 3, 1, -100, 0);
    ct::check_close(cross_entropy(x, t), {r.mean}, 1e-12, 1e-12);
    CHECK(cross_entropy(x, t, -100, 0, "none").dim() == 0);

    Tensor xs = ct::rnd({4, 3}, kF32);
    Tensor ign = tensor(std::vector<int64_t>{-100, -100, -100, -100});
    CHECK(std::isnan(cross_entropy(xs, ign).item<float>()));  // 0 / 0, as PyTorch
    CHECK(cross_entropy(xs, ign, -100, 0.1, "sum").item<float>() == 0.0f);
    ct::check_close(cross_entropy(xs, ign, -100, 0, "none"), {0, 0, 0, 0}, 0, 0);

    // a -inf logit away from the target neither breaks the loss nor its gradient
    const float ninf = -std::numeric_limits<float>::infinity();
    Tensor xi = tensor(std::vector<float>{0, ninf, 1, 2}, {2, 2}).requires_grad_();
    Tensor l = cross_entropy(xi, tensor(std::vector<int64_t>{0, 1}));
    ct::check_close(l, {0.5 * (0 + -(2 - (2 + std::log1p(std::exp(-1.0)))))}, 1e-6, 1e-6);
    l.backward();
    for (double g : ct::vals(xi.grad())) CHECK(std::isfinite(g));
    Tensor big = tensor(std::vector<float>{1e4f, -1e4f, 0});
    CHECK(std::isfinite(
        cross_entropy(big.view({1, 3}), tensor(std::vector<int64_t>{1})).item<float>()));
  }

  TEST_CASE("cross_entropy gradcheck: registry case, ignore_index with smoothing, 3-d logits") {
    GradcheckCase c = op_info("cross_entropy").gradcheck();
    ct::check_gradcheck(c.fn, c.inputs);
    CHECK(op_info("cross_entropy").composite);
    ct::check_close(
        op_info("cross_entropy").boxed(c.inputs, {{"reduction", std::string("sum")}})[0],
        ct::vals(cross_entropy(c.inputs[0], c.inputs[1], -100, 0, "sum")), 0, 0);

    Tensor x = ct::rnd({6, 4}, kF64).requires_grad_();
    Tensor t = tensor(std::vector<int64_t>{1, -100, 3, 0, -100, 2});
    for (const char* red : {"mean", "sum", "none"}) {
      CAPTURE(red);
      std::string rs = red;
      ct::check_gradcheck(
          [t, rs](const TensorList& v) { return cross_entropy(v[0], t, -100, 0.2, rs); }, {x});
    }
    Tensor x3 = ct::rnd({2, 3, 4, 2}, kF64).requires_grad_();
    Tensor t3 =
        tensor(std::vector<int64_t>{0, 1, 2, 1, 0, 0, 2, 2, 1, 2, 0, 1, 1, 0, 2, 2}, {2, 4, 2});
    ct::check_gradcheck([t3](const TensorList& v) { return cross_entropy(v[0], t3, 1, 0.1); },
                        {x3});
    ct::check_gradcheck(
        [t3](const TensorList& v) { return cross_entropy(v[0], t3, -100, 0, "none"); }, {x3});
  }

  TEST_CASE("cross_entropy on (N, C) CPU logits (the fused kernels): loss and gradient vs f64") {
    manual_seed(13);
    struct Case {
      int64_t N, C, ignore;
      bool with_ignored;
      double eps;
    };
    const Case cases[] = {{9, 1003, -100, true, 0.0},
                          {4, 16, -100, false, 0.1},
                          {3, 50280, 7, true, 0.0},
                          {6, 37, -1, true, 0.2},
                          {1, 1, -100, false, 0.0}};
    unsigned seed = 100;
    for (const Case& k : cases) {
      std::vector<int64_t> tv = make_targets(k.N, k.C, k.ignore, k.with_ignored, seed++);
      for (bool nc : {false, true}) {
        for (const char* red : {"mean", "sum", "none"}) {
          CAPTURE(k.C);
          CAPTURE(nc);
          CAPTURE(red);
          Tensor x = ct::rnd({k.N, k.C}, kF32, -6, 6, nc).requires_grad_();
          Tensor t = tensor(tv, {k.N});
          std::vector<double> xv = ct::vals(x);
          CeRef r = ref_ce(xv, tv, k.N, k.C, 1, k.ignore, k.eps);
          Tensor loss = cross_entropy(x, t, k.ignore, k.eps, red);
          const std::string rs = red;
          int64_t valid = 0;
          for (int64_t v : tv) valid += v != k.ignore;
          std::vector<double> go(static_cast<size_t>(k.N), 1.0);  // d total / d loss_i
          if (rs == "none") {
            ct::check_close(loss, r.none, 1e-5, 1e-5, "none");
            Tensor g = ct::rnd({k.N}, kF32);
            go = ct::vals(g);
            loss.backward(g);
          } else {
            ct::check_close(loss, {rs == "sum" ? r.sum : r.mean}, 1e-5, 1e-5, rs);
            if (rs == "mean")
              for (double& v : go) v = 1.0 / static_cast<double>(valid);
            loss.backward();
          }
          // d loss_i / d x_ic = softmax_ic - (1 - eps) [c == t_i] - eps / C
          std::vector<double> ref(xv.size(), 0.0);
          for (int64_t i = 0; i < k.N; ++i) {
            if (tv[static_cast<size_t>(i)] == k.ignore) continue;
            const double* row = xv.data() + i * k.C;
            double m = *std::max_element(row, row + k.C), s = 0;
            for (int64_t c = 0; c < k.C; ++c) s += std::exp(row[c] - m);
            for (int64_t c = 0; c < k.C; ++c) {
              double d = std::exp(row[c] - m) / s - k.eps / static_cast<double>(k.C);
              if (c == tv[static_cast<size_t>(i)]) d -= 1 - k.eps;
              ref[static_cast<size_t>(i * k.C + c)] = go[static_cast<size_t>(i)] * d;
            }
          }
          CHECK(x.grad().sizes() == x.sizes());
          ct::check_close(x.grad(), ref, 1e-4, 1e-6, "grad");
        }
      }
    }
    // f64 logits through the same kernels (here a transposed view), by central differences
    Tensor x = ct::rnd({33, 5}, kF64, -3, 3).requires_grad_();
    Tensor t = tensor(std::vector<int64_t>{3, -100, 32, 0, 7});
    for (const char* red : {"mean", "sum", "none"}) {
      const std::string rs = red;
      ct::check_gradcheck(
          [t, rs](const TensorList& v) { return cross_entropy(v[0].t(), t, -100, 0.15, rs); }, {x});
    }
    // modifying the logits in place after the loss is an error at backward, naming the op
    Tensor y = ct::rnd({3, 4}, kF32).requires_grad_();
    Tensor z = y * 2.0;
    Tensor l = cross_entropy(z, tensor(std::vector<int64_t>{0, 1, 2}));
    z.mul_(3.0);
    ct::check_error([&] { l.backward(); }, {"cross_entropy"});
  }

  TEST_CASE("cross_entropy bad inputs") {
    Tensor x = zeros({3, 4});
    Tensor t = tensor(std::vector<int64_t>{0, 1, 2});
    ct::check_error(
        [&] {
          cross_entropy(x, tensor(std::vector<int64_t>{0, 4, 1}));
        },
        {"cross_entropy", "target value 4", "4 classes"});
    ct::check_error(
        [&] {
          cross_entropy(x, tensor(std::vector<int64_t>{0, -3, 1}));
        },
        {"cross_entropy", "-3"});
    ct::check_error(
        [&] {
          cross_entropy(x, tensor(std::vector<float>{0, 1, 2}));
        },
        {"cross_entropy", "float32"});
    ct::check_error(
        [&] {
          cross_entropy(x, tensor(std::vector<int64_t>{0, 1}));
        },
        {"cross_entropy", "[2]", "[3, 4]"});
    ct::check_error(
        [&] {
          cross_entropy(zeros({2, 3, 5}), zeros({2, 3}, kI64));
        },
        {"cross_entropy", "[2, 3]", "[2, 5]"});
    ct::check_error([&] { cross_entropy(x, t, -100, 0, "avg"); }, {"cross_entropy", "avg"});
    ct::check_error([&] { cross_entropy(x, t, -100, 1.5); },
                    {"cross_entropy", "label_smoothing", "1.5"});
    ct::check_error([&] { cross_entropy(zeros({3, 4}, kI64), t); }, {"cross_entropy", "int64"});
    ct::check_error([&] { cross_entropy(zeros({3, 0}), t); }, {"cross_entropy", "no classes"});
  }

  TEST_CASE("mse_loss matches a float64 reference, gradcheck, bad inputs") {
    manual_seed(12);
    for (Shape s : {Shape{}, Shape{7}, Shape{3, 37}, Shape{2, 5, 13}}) {
      for (bool nc : {false, true}) {
        Tensor a = ct::rnd(s, kF32, -3, 3, nc), b = ct::rnd(s, kF32, -3, 3, !nc);
        std::vector<double> av = ct::vals(a), bv = ct::vals(b), none;
        double sum = 0;
        for (size_t i = 0; i < av.size(); ++i) {
          none.push_back((av[i] - bv[i]) * (av[i] - bv[i]));
          sum += none.back();
        }
        ct::check_close(mse_loss(a, b, "none"), none, 1e-6, 1e-6, "none");
        ct::check_close(mse_loss(a, b, "sum"), {sum}, 1e-5, 1e-5, "sum");
        ct::check_close(mse_loss(a, b), {sum / static_cast<double>(av.size())}, 1e-5, 1e-6, "mean");
        ct::check_close(mse_loss(a.to(kF64), b.to(kF64)), {sum / static_cast<double>(av.size())},
                        1e-12, 1e-12, "f64");
        Tensor lb = mse_loss(a.to(kBF16), b.to(kBF16));
        CHECK(lb.dtype() == kBF16);
        ct::check_close(lb, {sum / static_cast<double>(av.size())}, 3e-2, 3e-2, "bf16");
      }
    }
    CHECK(std::isnan(mse_loss(zeros({0}), zeros({0})).item<float>()));
    GradcheckCase c = op_info("mse_loss").gradcheck();
    ct::check_gradcheck(c.fn, c.inputs);
    CHECK(op_info("mse_loss").composite);
    Tensor a = ct::rnd({4, 3}, kF64).requires_grad_(), b = ct::rnd({4, 3}, kF64).requires_grad_();
    ct::check_gradcheck([](const TensorList& v) { return mse_loss(v[0].t(), v[1].t(), "none"); },
                        {a, b});
    ct::check_gradcheck([](const TensorList& v) { return mse_loss(v[0], v[1], "sum"); }, {a, b});
    ct::check_error(
        [] {
          mse_loss(zeros({2, 3}), zeros({3, 2}));
        },
        {"mse_loss", "[2, 3]", "[3, 2]"});
    ct::check_error([] { mse_loss(zeros({2}), zeros({2}), "max"); }, {"mse_loss", "max"});
    ct::check_error([] { mse_loss(zeros({2}, kI64), zeros({2})); }, {"mse_loss", "int64"});
  }
}
