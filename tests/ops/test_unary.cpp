#include "test_util.h"

using namespace coil;

namespace {
double ref_unary(const std::string& name, double x) {
  if (name == "neg") return -x;
  if (name == "exp") return std::exp(x);
  if (name == "log") return std::log(x);
  if (name == "log1p") return std::log1p(x);
  if (name == "sqrt") return std::sqrt(x);
  if (name == "rsqrt") return 1 / std::sqrt(x);
  if (name == "abs") return std::fabs(x);
  if (name == "tanh") return std::tanh(x);
  if (name == "sigmoid") return 1 / (1 + std::exp(-x));
  if (name == "silu") return x / (1 + std::exp(-x));
  if (name == "softplus") return x > 20 ? x : std::log1p(std::exp(x));
  if (name == "gelu") return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
  if (name == "erf") return std::erf(x);
  if (name == "relu") return x > 0 ? x : 0;
  if (name == "square") return x * x;
  if (name == "reciprocal") return 1 / x;
  return NAN;
}
Tensor run_unary(const std::string& name, const Tensor& x) {
  if (name == "neg") return neg(x);
  if (name == "exp") return exp(x);
  if (name == "log") return log(x);
  if (name == "log1p") return log1p(x);
  if (name == "sqrt") return sqrt(x);
  if (name == "rsqrt") return rsqrt(x);
  if (name == "abs") return abs(x);
  if (name == "tanh") return tanh(x);
  if (name == "sigmoid") return sigmoid(x);
  if (name == "silu") return silu(x);
  if (name == "softplus") return softplus(x);
  if (name == "gelu") return gelu(x);
  if (name == "erf") return erf(x);
  if (name == "relu") return relu(x);
  if (name == "square") return square(x);
  return reciprocal(x);
}
}  // namespace

TEST_SUITE("ops.unary") {
  TEST_CASE("forward matches a float64 reference on odd shapes, views and dtypes") {
    manual_seed(1);
    const char* names[] = {"neg", "exp",  "log",     "log1p",     "sqrt",     "rsqrt",
                           "abs", "tanh", "sigmoid", "silu",      "softplus", "gelu",
                           "erf", "relu", "square",  "reciprocal"};
    for (const char* n : names) {
      std::string name = n;
      bool positive = name == "log" || name == "sqrt" || name == "rsqrt" || name == "reciprocal";
      double lo = positive ? 0.1 : (name == "log1p" ? -0.9 : -30), hi = positive ? 5 : 30;
      for (Shape s : {Shape{}, Shape{1}, Shape{7}, Shape{3, 37}, Shape{2, 5, 131}}) {
        for (bool nc : {false, true}) {
          Tensor x = ct::rnd(s, kF32, lo, hi, nc);
          std::vector<double> xv = ct::vals(x), ref;
          for (double v : xv) ref.push_back(ref_unary(name, static_cast<float>(v)));
          ct::check_close(run_unary(name, x), ref, 2e-6, 1e-6, name + " f32");
          Tensor xd = x.to(kF64);
          ct::check_close(run_unary(name, xd), ref, 1e-12, 1e-12, name + " f64");
          Tensor xb = x.to(kBF16);
          std::vector<double> refb;
          for (double v : ct::vals(xb)) refb.push_back(ref_unary(name, v));
          Tensor yb = run_unary(name, xb);
          CHECK(yb.dtype() == kBF16);
          ct::check_close(yb, refb, 1e-2, 1e-2, name + " bf16");
        }
      }
    }
  }

  TEST_CASE("vectorised exp is accurate to float32 across the range") {
    std::vector<float> xs;
    for (int i = -104000; i <= 89000; i += 7) xs.push_back(static_cast<float>(i) / 1000.0f);
    xs.push_back(-INFINITY);
    xs.push_back(INFINITY);
    xs.push_back(NAN);
    Tensor x = tensor(xs);
    std::vector<double> ref;
    for (float v : xs) ref.push_back(std::exp(static_cast<double>(v)));
    std::vector<double> got = ct::vals(exp(x));
    double worst = 0;
    for (size_t i = 0; i + 3 < xs.size(); ++i) {
      if (ref[i] > 3.4e38) continue;  // overflow: checked below
      if (ref[i] < 1.18e-38) {        // results below FLT_MIN flush to zero
        CHECK(got[i] <= 1.18e-38);
        continue;
      }
      worst = std::max(worst, std::fabs(got[i] - ref[i]) / ref[i]);
    }
    CHECK(worst < 3e-7);  // about 2.5 ulp
    CHECK(got[xs.size() - 3] == 0.0);
    CHECK(std::isinf(got[xs.size() - 2]));
    CHECK(std::isnan(got[xs.size() - 1]));
  }

  TEST_CASE("softplus threshold, pow, clamp, sign, integer inputs") {
    Tensor x = tensor(std::vector<float>{-3, -0.5, 0, 0.5, 19.9f, 20.5f, 50});
    ct::check_close(softplus(x),
                    {std::log1p(std::exp(-3.0)), std::log1p(std::exp(-0.5)), std::log(2.0),
                     std::log1p(std::exp(0.5)), std::log1p(std::exp(19.9)), 20.5, 50},
                    1e-6, 1e-6, "softplus");
    ct::check_close(softplus(x, 2.0, 10.0),
                    {std::log1p(std::exp(-6.0)) / 2, std::log1p(std::exp(-1.0)) / 2,
                     std::log(2.0) / 2, std::log1p(std::exp(1.0)) / 2, 19.9, 20.5, 50},
                    1e-6, 1e-6, "softplus beta");
    ct::check_close(pow(tensor(std::vector<double>{1, 2, 3}), 2.5),
                    {1, std::pow(2, 2.5), std::pow(3, 2.5)}, 1e-12, 0);
    ct::check_close(clamp(x, -1, 1), {-1, -0.5, 0, 0.5, 1, 1, 1}, 0, 0, "clamp");
    ct::check_close(clamp(x, std::nullopt, 0), {-3, -0.5, 0, 0, 0, 0, 0}, 0, 0, "clamp max only");
    ct::check_close(sign(x), {-1, -1, 0, 1, 1, 1, 1}, 0, 0, "sign");
    Tensor i = tensor(std::vector<int64_t>{-2, 0, 3});
    CHECK(abs(i).dtype() == kI64);
    ct::check_close(abs(i), {2, 0, 3}, 0, 0);
    Tensor e = exp(i);
    CHECK(e.dtype() == kF32);
    ct::check_close(e, {std::exp(-2.0), 1, std::exp(3.0)}, 1e-6, 0);
    Tensor nanv = tensor(std::vector<float>{NAN, 1});
    CHECK(std::isnan(ct::vals(relu(nanv))[0]));
    CHECK(std::isnan(ct::vals(clamp(nanv, 0, 0.5))[0]));
    ct::check_close(isfinite(tensor(std::vector<float>{1, INFINITY, NAN})), {1, 0, 0}, 0, 0);
  }

  TEST_CASE("gradcheck of every differentiable unary op") {
    for (const char* name :
         {"neg", "exp", "log", "log1p", "sqrt", "rsqrt", "abs", "tanh", "sigmoid", "silu",
          "softplus", "gelu", "erf", "relu", "pow_scalar", "clamp", "square", "reciprocal"}) {
      CAPTURE(name);
      GradcheckCase c = op_info(name).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
    }
    // the tanh approximation of gelu and a non-contiguous input
    Tensor x = ct::rnd({4, 3}, kF64).t().contiguous();
    x.requires_grad_();
    ct::check_gradcheck([](const TensorList& v) { return gelu(v[0].t(), true); }, {x});
  }
}
