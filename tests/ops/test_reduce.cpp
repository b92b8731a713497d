#include <algorithm>

#include "test_util.h"

using namespace coil;

namespace {
// Naive reduction over `dims` of x by explicit indices; kind: sum, mean, var, max, min, lse.
std::vector<double> ref_reduce(const Tensor& x, Shape dims, const std::string& kind,
                               int64_t correction = 1) {
  const Shape& s = x.sizes();
  if (dims.empty())
    for (int64_t i = 0; i < x.dim(); ++i) dims.push_back(i);
  for (auto& d : dims) d = d < 0 ? d + x.dim() : d;
  Shape out_shape;
  std::vector<bool> red(x.dim(), false);
  for (auto d : dims) red[d] = true;
  for (int64_t i = 0; i < x.dim(); ++i)
    if (!red[i]) out_shape.push_back(s[i]);
  std::vector<std::vector<double>> groups(static_cast<size_t>(shape_numel(out_shape)));
  std::vector<double> xv = ct::vals(x);
  for (int64_t i = 0; i < x.numel(); ++i) {
    Shape idx = ct::unravel(i, s), oi;
    for (int64_t d = 0; d < x.dim(); ++d)
      if (!red[d]) oi.push_back(idx[d]);
    groups[ct::ravel(oi, out_shape)].push_back(xv[i]);
  }
  std::vector<double> r;
  for (auto& g : groups) {
    double acc = 0;
    if (kind == "sum" || kind == "mean") {
      for (double v : g) acc += v;
      if (kind == "mean") acc /= g.size();
    } else if (kind == "var") {
      double m = 0;
      for (double v : g) m += v;
      m /= g.size();
      for (double v : g) acc += (v - m) * (v - m);
      acc /= (static_cast<double>(g.size()) - correction);
    } else if (kind == "max" || kind == "min") {
      acc = g[0];
      for (double v : g) {
        if (std::isnan(v) || std::isnan(acc)) {
          acc = NAN;
          break;
        }
        acc = kind == "max" ? std::max(acc, v) : std::min(acc, v);
      }
    } else {
      double m = *std::max_element(g.begin(), g.end()), s2 = 0;
      for (double v : g) s2 += std::exp(v - m);
      acc = m + std::log(s2);
    }
    r.push_back(acc);
  }
  return r;
}
}  // namespace

TEST_SUITE("ops.reduce") {
  TEST_CASE("sum, mean, var, amax, logsumexp over any dims, keepdim, views") {
    manual_seed(3);
    std::vector<std::pair<Shape, Shape>> cases = {
        {{}, {}},         {{7}, {0}},           {{3, 5}, {}},     {{3, 5}, {-1}},
        {{3, 5}, {0}},    {{2, 3, 33}, {0, 2}}, {{4, 1, 9}, {1}}, {{5, 6, 7}, {2, 0, 1}},
        {{2, 70000}, {1}}};
    for (auto& [s, d] : cases) {
      for (bool nc : {false, true}) {
        Tensor x = ct::rnd(s, kF32, -2, 2, nc);
        CAPTURE(shape_str(s));
        CAPTURE(shape_str(d));
        ct::check_close(sum(x, d), ref_reduce(x, d, "sum"), 1e-5, 1e-5, "sum");
        ct::check_close(mean(x, d), ref_reduce(x, d, "mean"), 1e-5, 1e-6, "mean");
        const int64_t group =
            x.numel() / std::max<int64_t>(1, static_cast<int64_t>(ref_reduce(x, d, "sum").size()));
        if (group > 1) ct::check_close(var(x, d), ref_reduce(x, d, "var"), 1e-4, 1e-6, "var");
        ct::check_close(amax(x, d), ref_reduce(x, d, "max"), 0, 0, "amax");
        if (!d.empty())
          ct::check_close(logsumexp(x, d), ref_reduce(x, d, "lse"), 1e-5, 1e-5, "logsumexp");
        Tensor k = sum(x, d, true);
        CHECK(k.dim() == x.dim());
        ct::check_close(sum(x.to(kF64), d), ref_reduce(x.to(kF64), d, "sum"), 1e-12, 1e-12,
                        "sum f64");
      }
    }
    Tensor q = tensor(std::vector<double>{1, 2, 3, 4});
    CHECK(var(q, {0}, 0).item<double>() == doctest::Approx(1.25));
    CHECK(var(q).item<double>() == doctest::Approx(5.0 / 3));
  }

  TEST_CASE("integer and bool sums give int64; bf16 reduces in f32") {
    Tensor b = tensor(std::vector<bool>{true, true, false});
    CHECK(sum(b).dtype() == kI64);
    CHECK(sum(b).item<int64_t>() == 2);
    Tensor i = tensor(std::vector<int32_t>{1, 2, 3});
    CHECK(sum(i).item<int64_t>() == 6);
    Tensor h = ones({4096}, kBF16);
    CHECK(sum(h).dtype() == kBF16);
    CHECK(sum(h).item<float>() == 4096.0f);  // f32 accumulation: bf16 alone would stall at 256
  }

  TEST_CASE("max/min with indices, NaN propagation, argmax") {
    Tensor x = tensor(std::vector<float>{1, 5, 5, 2, NAN, 3, -1, -1, 0}, {3, 3});
    auto [v, i] = max(x, 1);
    std::vector<double> vv = ct::vals(v), iv = ct::vals(i);
    CHECK(vv[0] == 5);
    CHECK(iv[0] == 1);  // first of ties
    CHECK(std::isnan(vv[1]));
    CHECK(iv[1] == 1);  // the NaN's position
    CHECK(vv[2] == 0);
    auto [mv, mi] = min(x, 0, true);
    CHECK(mv.sizes() == Shape{1, 3});
    ct::check_close(mi, {2, 1, 2}, 0, 0);
    CHECK(std::isnan(max(x).item<float>()));
    Tensor y = tensor(std::vector<float>{3, 9, 2, 9}, {2, 2});
    CHECK(argmax(y).item<int64_t>() == 1);
    ct::check_close(argmax(y, 0), {0, 0}, 0, 0);
    ct::check_close(argmin(y, -1, true), {0, 0}, 0, 0);
    CHECK(argmin(y, -1, true).sizes() == Shape{2, 1});
  }

  TEST_CASE("gradients: registry cases, ties share, sum_to inverts broadcasting") {
    for (const char* n : {"sum", "mean", "var", "logsumexp", "amax", "max", "min"}) {
      CAPTURE(n);
      GradcheckCase c = op_info(n).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
    }
    Tensor x = tensor(std::vector<double>{1, 3, 3}).requires_grad_();
    x.max().backward();
    ct::check_close(x.grad(), {0, 0.5, 0.5}, 0, 0);
    Tensor g = ct::rnd({2, 3, 4}, kF64);
    Tensor s = sum_to(g, {3, 1});
    std::vector<double> gv = ct::vals(g), ref(3, 0.0);
    for (int64_t i = 0; i < 24; ++i) ref[ct::unravel(i, {2, 3, 4})[1]] += gv[i];
    ct::check_close(s, ref, 1e-12, 1e-12);
  }

  TEST_CASE("bad reductions are errors") {
    ct::check_error([] { sum(ones({2, 3}), {2}); }, {"sum", "dim 2", "2 dims"});
    ct::check_error([] { sum(ones({2, 3}), {1, -1}); }, {"sum", "repeats"});
    ct::check_error([] { mean(ones({2}, kI64)); }, {"mean", "int64"});
    ct::check_error([] { max(ones({0})); }, {"max", "empty"});
    ct::check_error([] { max(ones({2, 0}), 1); }, {"max", "empty", "[2, 0]"});
  }
}
