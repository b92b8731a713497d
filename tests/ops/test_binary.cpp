#include "test_util.h"

using namespace coil;

namespace {
double ref_binary(const std::string& n, double a, double b, double alpha) {
  if (n == "add") return a + alpha * b;
  if (n == "sub") return a - alpha * b;
  if (n == "mul") return a * b;
  if (n == "div") return a / b;
  if (n == "pow") return std::pow(a, b);
  if (n == "maximum") return std::isnan(a) || std::isnan(b) ? NAN : std::max(a, b);
  if (n == "minimum") return std::isnan(a) || std::isnan(b) ? NAN : std::min(a, b);
  if (n == "eq") return a == b;
  if (n == "ne") return a != b;
  if (n == "lt") return a < b;
  if (n == "le") return a <= b;
  if (n == "gt") return a > b;
  return a >= b;
}
// Reference over broadcast shapes by explicit indices.
std::vector<double> ref_broadcast(const std::string& n, const Tensor& a, const Tensor& b,
                                  double alpha) {
  Shape out = broadcast_shapes("ref", a.sizes(), b.sizes());
  std::vector<double> av = ct::vals(a), bv = ct::vals(b), r;
  for (int64_t i = 0; i < shape_numel(out); ++i) {
    Shape idx = ct::unravel(i, out);
    r.push_back(
        ref_binary(n, av[ct::bcast_pos(idx, a.sizes())], bv[ct::bcast_pos(idx, b.sizes())], alpha));
  }
  return r;
}
}  // namespace

TEST_SUITE("ops.binary") {
  TEST_CASE("forward with broadcasting, views and odd sizes matches a float64 reference") {
    manual_seed(2);
    std::vector<std::pair<Shape, Shape>> shapes = {{{}, {}},
                                                   {{7}, {7}},
                                                   {{7}, {}},
                                                   {{}, {5, 3}},
                                                   {{3, 1, 5}, {4, 1}},
                                                   {{2, 17, 33}, {33}},
                                                   {{2, 17, 33}, {17, 1}},
                                                   {{1, 129}, {65, 1}}};
    for (const char* name : {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "eq", "ne",
                             "lt", "le", "gt", "ge"}) {
      std::string n = name;
      for (auto& [sa, sb] : shapes) {
        for (bool nc : {false, true}) {
          double lo = n == "pow" ? 0.5 : -3;
          Tensor a = ct::rnd(sa, kF32, lo, 3, nc), b = ct::rnd(sb, kF32, lo, 3, nc);
          if (n[0] == 'e' || n == "ne" || n[1] == 'e' || n == "lt" || n == "gt") {
            // comparisons: make some elements equal
            b = b.numel() == 1 || a.sizes() != b.sizes() ? b : where(rand(b.sizes()) > 0.5, a, b);
          }
          Tensor r = op_info(n).boxed({a, b}, {{"alpha", 2.0}})[0];
          std::vector<double> ref = ref_broadcast(n, a, b, 2.0);
          bool cmp = n == "eq" || n == "ne" || n == "lt" || n == "le" || n == "gt" || n == "ge";
          CHECK(r.dtype() == (cmp ? kBool : kF32));
          ct::check_close(r, ref, 3e-6, 3e-6, n);
          Tensor rd = op_info(n).boxed({a.to(kF64), b.to(kF64)}, {{"alpha", 2.0}})[0];
          ct::check_close(rd, ref_broadcast(n, a.to(kF64), b.to(kF64), 2.0), 1e-14, 1e-14,
                          n + " f64");
        }
      }
    }
  }

  TEST_CASE("type promotion follows PyTorch") {
    Tensor f = ones({2}), d = ones({2}, kF64), i = ones({2}, kI32), l = ones({2}, kI64),
           b = ones({2}, kBool), h = ones({2}, kBF16), hf = ones({2}, kF16);
    CHECK((f + d).dtype() == kF64);
    CHECK((i + l).dtype() == kI64);
    CHECK((i + f).dtype() == kF32);
    CHECK((b + i).dtype() == kI32);
    CHECK((h + hf).dtype() == kF32);
    CHECK((h + h).dtype() == kBF16);
    CHECK((h + f).dtype() == kF32);
    CHECK((f * 2.5).dtype() == kF32);  // a wrapped double does not widen f32
    CHECK((h * 2.5).dtype() == kBF16);
    CHECK((l * 2).dtype() == kI64);
    CHECK((l * 2.5).dtype() == kF32);  // int tensor with a float scalar: default float
    CHECK((i / i).dtype() == kF32);    // true division
    Tensor zd = ones({}, kF64);
    CHECK((f + zd).dtype() == kF32);              // a 0-d tensor of the same category does not win
    CHECK((l + ones({}, kF64)).dtype() == kF64);  // a 0-d tensor of a higher category does
    CHECK((ones({}, kF64) + ones({}, kF32)).dtype() == kF64);
    ct::check_close(tensor(std::vector<int64_t>{7, -7}) / 2, {3.5, -3.5}, 0, 0);
  }

  TEST_CASE("scalars on either side and integer arithmetic") {
    Tensor x = tensor(std::vector<float>{1, 2, 3});
    ct::check_close(2.0 - x, {1, 0, -1}, 0, 0);
    ct::check_close(6.0 / x, {6, 3, 2}, 1e-7, 0);
    ct::check_close(x - 1, {0, 1, 2}, 0, 0);
    ct::check_close(sub(x, x, 2), {-1, -2, -3}, 0, 0);
    Tensor i = tensor(std::vector<int32_t>{3, -4});
    ct::check_close(i * i + i, {12, 12}, 0, 0);
    ct::check_close(maximum(tensor(std::vector<float>{1, NAN}), tensor(std::vector<float>{2, 0})),
                    {2, NAN}, 0, 0);
  }

  TEST_CASE("where broadcasts all three and promotes") {
    Tensor c = tensor(std::vector<bool>{true, false, true}, {3, 1});
    Tensor a = ct::rnd({3, 4}), b = ct::rnd({4}, kF64);
    Tensor r = where(c, a, b);
    CHECK(r.dtype() == kF64);
    std::vector<double> av = ct::vals(a), bv = ct::vals(b), ref;
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j) ref.push_back(i != 1 ? av[i * 4 + j] : bv[j]);
    ct::check_close(r, ref, 1e-7, 0);
  }

  TEST_CASE("in-place ops bump the version and keep dtype") {
    Tensor x = ones({3});
    uint32_t v = x.version();
    x.add_(ones({3}), 2);
    CHECK(x.version() == v + 1);
    ct::check_close(x, {3, 3, 3}, 0, 0);
    x *= 2.0;
    ct::check_close(x, {6, 6, 6}, 0, 0);
    Tensor h = ones({3}, kBF16);
    h.add_(ones({3}, kF32));
    CHECK(h.dtype() == kBF16);
    ct::check_close(h, {2, 2, 2}, 0, 0);
    Tensor view = x.slice(0, 0, 3, 2);
    view.mul_(ones({2}) * 0.5);
    ct::check_close(x, {3, 6, 3}, 0, 0);
    Tensor ii = ones({3}, kI64);
    ct::check_error([&] { ii.add_(ones({3}, kF32)); }, {"add", "float32", "int64"});
    ct::check_error([&] { x.add_(ones({2, 3})); }, {"add", "[2, 3]", "[3]"});
  }

  TEST_CASE("gradcheck, including broadcasting both ways and in-place on a non-leaf") {
    for (const char* n : {"add", "sub", "mul", "div", "pow", "maximum", "minimum", "where"}) {
      CAPTURE(n);
      GradcheckCase c = op_info(n).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
    }
    Tensor a = ct::rnd({3, 4}, kF64).requires_grad_(), b = ct::rnd({4}, kF64).requires_grad_();
    ct::check_gradcheck(
        [](const TensorList& v) {
          Tensor t = v[0] * 1.0;
          t.mul_(v[1]);
          t.add_(v[1], 0.5);
          return t;
        },
        {a, b});
    // ties in maximum split the gradient
    Tensor x = tensor(std::vector<double>{1, 2}).requires_grad_(),
           y = tensor(std::vector<double>{1, 3}).requires_grad_();
    maximum(x, y).sum().backward();
    ct::check_close(x.grad(), {0.5, 0}, 0, 0);
    ct::check_close(y.grad(), {0.5, 1}, 0, 0);
  }

  TEST_CASE("errors name the op and the values") {
    ct::check_error([] { add(ones({2, 3}), ones({4})); }, {"add", "[2, 3]", "[4]"});
    ct::check_error([] { where(ones({2}), ones({2}), ones({2})); }, {"where", "bool", "float32"});
    Tensor leaf = ones({2}).requires_grad_();
    ct::check_error([&] { leaf.add_(ones({2})); }, {"add", "leaf"});
  }
}
