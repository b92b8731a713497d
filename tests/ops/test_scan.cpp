// associative_scan and causal_conv1d against sequential float64 loops.
#include "test_util.h"

using namespace coil;

namespace {
const ScanCombine kAdd = [](const TensorList& a, const TensorList& b) {
  return TensorList{a[0] + b[0]};
};
const ScanCombine kMul = [](const TensorList& a, const TensorList& b) {
  return TensorList{a[0] * b[0]};
};
const ScanCombine kMax = [](const TensorList& a, const TensorList& b) {
  return TensorList{maximum(a[0], b[0])};
};
// h_t = a_t h_{t-1} + b_t
const ScanCombine kLinear = [](const TensorList& x, const TensorList& y) {
  return TensorList{x[0] * y[0], y[0] * x[1] + y[1]};
};
// 2x2 matrices as four tensors (m00, m01, m10, m11); x∘y = x @ y (not commutative)
const ScanCombine kMatmul = [](const TensorList& x, const TensorList& y) {
  return TensorList{x[0] * y[0] + x[1] * y[2], x[0] * y[1] + x[1] * y[3], x[2] * y[0] + x[3] * y[2],
                    x[2] * y[1] + x[3] * y[3]};
};

// Sequential scan along dim 1 of (2, n, 3) tuples with a scalar combine.
using Elem = std::vector<double>;
std::vector<std::vector<double>> seq_scan(const TensorList& xs,
                                          const std::function<Elem(const Elem&, const Elem&)>& f,
                                          bool reverse) {
  const Shape s = xs[0].sizes();
  std::vector<std::vector<double>> v;
  for (const Tensor& x : xs) v.push_back(ct::vals(x));
  std::vector<std::vector<double>> out(xs.size(), std::vector<double>(v[0].size()));
  for (int64_t b = 0; b < s[0]; ++b)
    for (int64_t c = 0; c < s[2]; ++c) {
      Elem acc;
      for (int64_t k = 0; k < s[1]; ++k) {
        int64_t t = reverse ? s[1] - 1 - k : k;
        int64_t i = (b * s[1] + t) * s[2] + c;
        Elem e;
        for (auto& vv : v) e.push_back(vv[i]);
        acc = k == 0 ? e : f(acc, e);
        for (size_t j = 0; j < xs.size(); ++j) out[j][i] = acc[j];
      }
    }
  return out;
}
}  // namespace

TEST_SUITE("ops.scan") {
  TEST_CASE("associative_scan equals a sequential loop for many combines and lengths") {
    manual_seed(21);
    for (int64_t n : {1, 2, 3, 7, 64, 1000}) {
      for (bool rev : {false, true}) {
        CAPTURE(n);
        CAPTURE(rev);
        Tensor x = ct::rnd({2, n, 3}, kF64, 0.9, 1.1);
        auto check = [&](const ScanCombine& comb, const TensorList& xs,
                         const std::function<Elem(const Elem&, const Elem&)>& f, const char* what) {
          TensorList got = associative_scan(comb, xs, 1, rev);
          auto ref = seq_scan(xs, f, rev);
          for (size_t j = 0; j < xs.size(); ++j)
            ct::check_close(got[j], ref[j], 1e-12, 1e-12, what);
        };
        check(
            kAdd, {x}, [](const Elem& a, const Elem& b) { return Elem{a[0] + b[0]}; }, "cumsum");
        check(
            kMul, {x}, [](const Elem& a, const Elem& b) { return Elem{a[0] * b[0]}; }, "cumprod");
        check(
            kMax, {ct::rnd({2, n, 3}, kF64)},
            [](const Elem& a, const Elem& b) { return Elem{std::max(a[0], b[0])}; }, "running max");
        Tensor a = ct::rnd({2, n, 3}, kF64, 0.5, 1), bb = ct::rnd({2, n, 3}, kF64);
        check(
            kLinear, {a, bb},
            [](const Elem& p, const Elem& q) {
              return Elem{p[0] * q[0], q[0] * p[1] + q[1]};
            },
            "linear recurrence");
        TensorList m = {ct::rnd({2, n, 3}, kF64, -0.7, 0.7), ct::rnd({2, n, 3}, kF64, -0.7, 0.7),
                        ct::rnd({2, n, 3}, kF64, -0.7, 0.7), ct::rnd({2, n, 3}, kF64, -0.7, 0.7)};
        check(
            kMatmul, m,
            [](const Elem& p, const Elem& q) {
              return Elem{p[0] * q[0] + p[1] * q[2], p[0] * q[1] + p[1] * q[3],
                          p[2] * q[0] + p[3] * q[2], p[2] * q[1] + p[3] * q[3]};
            },
            "2x2 matrix product");
      }
    }
    // the cumsum combine agrees with the cumsum op, in f32, along another dim
    Tensor x = ct::rnd({5, 9});
    ct::check_close(associative_scan(kAdd, {x}, 0)[0], ct::vals(cumsum(x, 0)), 1e-6, 1e-6);
  }

  TEST_CASE("associative_scan is differentiable") {
    Tensor a = ct::rnd({1, 7, 2}, kF64, 0.5, 1).requires_grad_(),
           b = ct::rnd({1, 7, 2}, kF64).requires_grad_();
    for (bool rev : {false, true})
      ct::check_gradcheck(
          [rev](const TensorList& v) {
            return associative_scan(kLinear, {v[0], v[1]}, 1, rev)[1];
          },
          {a, b});
    Tensor m0 = ct::rnd({1, 5, 1}, kF64).requires_grad_(),
           m1 = ct::rnd({1, 5, 1}, kF64).requires_grad_();
    ct::check_gradcheck(
        [](const TensorList& v) {
          TensorList r = associative_scan(kMatmul, {v[0], v[1], v[1] * 0.5, v[0] * -1.0}, 1);
          return r[0] + r[3] * 2.0;
        },
        {m0, m1});
  }

  TEST_CASE("associative_scan errors") {
    ct::check_error([] { associative_scan(kAdd, {}, 0); }, {"associative_scan", "empty"});
    ct::check_error(
        [] {
          associative_scan(kAdd, {ones({2}), ones({3})}, 0);
        },
        {"associative_scan", "[2]", "[3]"});
    ct::check_error([] { associative_scan(kAdd, {ones({2})}, 1); }, {"associative_scan", "dim 1"});
    ScanCombine bad = [](const TensorList& a, const TensorList&) { return TensorList{a[0].sum()}; };
    ct::check_error([&] { associative_scan(bad, {ones({4})}, 0); },
                    {"associative_scan", "combine returned shape"});
  }
}

namespace {
// y[b,t,c] = bias[c] + sum_k w[c,k] * in[b, t+k-K+1, c] over [window; x], then silu.
std::vector<double> ref_conv(const Tensor& x, const Tensor& w, const Tensor& bias,
                             const Tensor& win, bool silu) {
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2), K = w.size(1);
  std::vector<double> xv = ct::vals(x), wv = ct::vals(w),
                      bv = bias.defined() ? ct::vals(bias) : std::vector<double>(C, 0),
                      winv =
                          win.defined() ? ct::vals(win) : std::vector<double>(B * (K - 1) * C, 0),
                      y;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t c = 0; c < C; ++c) {
        double s = bv[c];
        for (int64_t k = 0; k < K; ++k) {
          int64_t src = t + k - (K - 1);
          double in =
              src >= 0 ? xv[(b * L + src) * C + c] : winv[(b * (K - 1) + (K - 1 + src)) * C + c];
          s += wv[c * K + k] * in;
        }
        y.push_back(silu ? s / (1 + std::exp(-s)) : s);
      }
  return y;
}
}  // namespace

TEST_SUITE("ops.scan") {
  TEST_CASE("causal_conv1d matches a float64 loop: windows, bias, silu, sizes, dtypes") {
    manual_seed(22);
    struct Case {
      int64_t B, L, C, K;
    };
    for (Case cs : {Case{1, 1, 1, 1}, Case{2, 5, 3, 4}, Case{2, 2, 17, 4}, Case{1, 300, 70, 4},
                    Case{3, 9, 129, 2}}) {
      for (bool with_bias : {false, true})
        for (bool with_win : {false, true})
          for (bool silu : {false, true})
            for (DType t : {kF32, kF64}) {
              Tensor x = ct::rnd({cs.B, cs.L, cs.C}, t, -1, 1, true), w = ct::rnd({cs.C, cs.K}, t);
              Tensor b = with_bias ? ct::rnd({cs.C}, t) : Tensor();
              Tensor win = with_win ? ct::rnd({cs.B, cs.K - 1, cs.C}, t) : Tensor();
              CausalConv1dOptions o;
              o.bias = b;
              o.initial_window = win;
              o.activation_silu = silu;
              o.return_final_window = true;
              auto [y, fw] = causal_conv1d(x, w, o);
              double tol = t == kF32 ? 1e-5 : 1e-12;
              ct::check_close(y, ref_conv(x, w, b, win, silu), tol, tol, "y");
              // final window: the last K-1 inputs of [window; x]
              Tensor full = cat({win.defined() ? win : zeros({cs.B, cs.K - 1, cs.C}, t), x}, 1);
              ct::check_close(fw, ct::vals(full.narrow(1, cs.L, cs.K - 1)), 0, 0, "final window");
            }
    }
    Tensor xb = ct::rnd({2, 6, 5}, kBF16), wb = ct::rnd({5, 4}, kBF16);
    Tensor yb = causal_conv1d(xb, wb).first;
    CHECK(yb.dtype() == kBF16);
    ct::check_close(yb, ref_conv(xb, wb, Tensor(), Tensor(), true), 2e-2, 2e-2, "bf16");
  }

  TEST_CASE("causal_conv1d: split sequence with the window equals the whole; gradients") {
    Tensor x = ct::rnd({2, 11, 6}, kF64).requires_grad_(),
           w = ct::rnd({6, 4}, kF64).requires_grad_(), b = ct::rnd({6}, kF64).requires_grad_();
    CausalConv1dOptions o;
    o.bias = b;
    Tensor whole = causal_conv1d(x, w, o).first;
    Tensor gy = ct::rnd({2, 11, 6}, kF64);
    (whole * gy).sum().backward();
    std::vector<double> gx = ct::vals(x.grad()), gw = ct::vals(w.grad()), gb = ct::vals(b.grad());
    x.set_grad(Tensor());
    w.set_grad(Tensor());
    b.set_grad(Tensor());
    for (int64_t cut : {1, 2, 5}) {  // includes halves shorter than K-1
      o.return_final_window = true;
      o.initial_window = Tensor();
      auto [y1, win] = causal_conv1d(x.narrow(1, 0, cut), w, o);
      o.initial_window = win;
      Tensor y2 = causal_conv1d(x.narrow(1, cut, 11 - cut), w, o).first;
      Tensor y = cat({y1, y2}, 1);
      ct::check_close(y, ct::vals(whole), 1e-12, 1e-12, "split forward");
      (y * gy).sum().backward();
      ct::check_close(x.grad(), gx, 1e-12, 1e-12, "split dx");
      ct::check_close(w.grad(), gw, 1e-12, 1e-12, "split dw");
      ct::check_close(b.grad(), gb, 1e-12, 1e-12, "split db");
      x.set_grad(Tensor());
      w.set_grad(Tensor());
      b.set_grad(Tensor());
    }
    GradcheckCase c = op_info("causal_conv1d").gradcheck();
    ct::check_gradcheck(c.fn, c.inputs);
    Tensor x2 = ct::rnd({1, 3, 2}, kF64).requires_grad_(),
           w2 = ct::rnd({2, 3}, kF64).requires_grad_();
    ct::check_gradcheck(
        [](const TensorList& v) {
          CausalConv1dOptions o2;
          o2.activation_silu = false;
          return causal_conv1d(v[0].transpose(0, 1).transpose(0, 1), v[1], o2).first;
        },
        {x2, w2});
  }

  TEST_CASE("causal_conv1d of an empty sequence passes the window's gradient through") {
    // (a context-parallel rank can hold no tokens: its window's gradient was left unwritten)
    for (DType t : {kF32, kF64}) {
      Tensor w = ct::rnd({5, 4}, t).requires_grad_(), win = ct::rnd({2, 3, 5}, t).requires_grad_();
      CausalConv1dOptions o;
      o.initial_window = win;
      o.return_final_window = true;
      auto [y, fin] = causal_conv1d(zeros({2, 0, 5}, t).requires_grad_(), w, o);
      CHECK(y.size(1) == 0);
      Tensor g = ct::rnd({2, 3, 5}, t);
      std::vector<Tensor> junk;  // freed blocks of NaN that the backward may reuse
      for (int i = 0; i < 64; ++i) junk.push_back(full({2, 3, 5}, NAN, t));
      junk.clear();
      ((fin * g).sum() + y.sum()).backward();  // y.sum() runs the conv's backward
      ct::check_close(win.grad(), ct::vals(g), 0, 0, "window gradient");
      ct::check_close(w.grad(), std::vector<double>(20, 0.0), 0, 0, "weight gradient");
    }
  }

  TEST_CASE("causal_conv1d float32 gradients match float64: strips, row blocks, K, windows") {
    // The f32 backward has a fused kernel for K <= 4 (16-channel strips plus single-channel
    // tails, blocks of 128 rows); K = 5 takes the general loops. Same values in both dtypes.
    manual_seed(23);
    struct Case {
      int64_t B, L, C, K;
    };
    auto normwise = [](const Tensor& got, const Tensor& ref) {
      std::vector<double> g = ct::vals(got), r = ct::vals(ref);
      double num = 0, den = 0;
      for (size_t i = 0; i < g.size(); ++i) {
        num += (g[i] - r[i]) * (g[i] - r[i]);
        den += r[i] * r[i];
      }
      return std::sqrt(num / std::max(den, 1e-300));
    };
    for (Case cs :
         {Case{1, 1, 1, 4}, Case{2, 2, 17, 4}, Case{1, 3, 40, 3}, Case{2, 130, 33, 4},
          Case{1, 300, 70, 4}, Case{3, 129, 16, 2}, Case{1, 257, 48, 1}, Case{2, 40, 21, 5}}) {
      for (bool with_bias : {false, true})
        for (bool with_win : {false, true})
          for (bool silu : {false, true}) {
            CAPTURE(cs.B);
            CAPTURE(cs.L);
            CAPTURE(cs.C);
            CAPTURE(cs.K);
            CAPTURE(with_bias);
            CAPTURE(with_win);
            CAPTURE(silu);
            TensorList v32 = {ct::rnd({cs.B, cs.L, cs.C}), ct::rnd({cs.C, cs.K}), ct::rnd({cs.C}),
                              ct::rnd({cs.B, cs.K - 1, cs.C})};
            Tensor gy = ct::rnd({cs.B, cs.L, cs.C});
            TensorList grads[2];
            for (int f64 = 0; f64 < 2; ++f64) {
              TensorList v;
              for (const Tensor& t : v32)
                v.push_back((f64 ? t.to(kF64) : t.clone()).requires_grad_());
              CausalConv1dOptions o;
              if (with_bias) o.bias = v[2];
              if (with_win) o.initial_window = v[3];
              o.activation_silu = silu;
              Tensor y = causal_conv1d(v[0], v[1], o).first;
              y.backward(f64 ? gy.to(kF64) : gy);
              for (int i = 0; i < 4; ++i) grads[f64].push_back(v[i].grad());
            }
            const char* names[] = {"dx", "dw", "dbias", "dwindow"};
            for (int i = 0; i < 4; ++i) {
              CAPTURE(names[i]);
              const bool used = i < 2 || (i == 2 && with_bias) || (i == 3 && with_win);
              REQUIRE(grads[0][i].defined() == used);
              if (!used) continue;
              CHECK(grads[0][i].dtype() == kF32);
              CHECK(normwise(grads[0][i], grads[1][i]) <= 1e-5);
              std::vector<double> ref = ct::vals(grads[1][i]);
              double scale = 0;
              for (double r : ref) scale = std::max(scale, std::fabs(r));
              ct::check_close(grads[0][i], ref, 1e-4, 1e-5 * scale, names[i]);
            }
          }
    }
  }

  TEST_CASE("causal_conv1d errors name the argument") {
    ct::check_error(
        [] {
          causal_conv1d(ones({2, 3}), ones({3, 4}));
        },
        {"causal_conv1d", "x", "[2, 3]"});
    ct::check_error(
        [] {
          causal_conv1d(ones({1, 2, 3}), ones({4, 4}));
        },
        {"causal_conv1d", "weight", "[4, 4]"});
    CausalConv1dOptions o;
    o.bias = ones({2});
    ct::check_error(
        [&] {
          causal_conv1d(ones({1, 2, 3}), ones({3, 4}), o);
        },
        {"causal_conv1d", "bias", "[2]"});
    CausalConv1dOptions o2;
    o2.initial_window = ones({1, 4, 3});
    ct::check_error(
        [&] {
          causal_conv1d(ones({1, 2, 3}), ones({3, 4}), o2);
        },
        {"causal_conv1d", "initial_window", "[1, 4, 3]"});
    ct::check_error(
        [] {
          causal_conv1d(ones({1, 2, 3}, kI64), ones({3, 4}));
        },
        {"causal_conv1d", "int64"});
  }
}
