#include "test_util.h"

using namespace coil;

namespace {
// Normalises row-major x over its last `group` elements by plain loops in f64. rms: divide by the
// root mean square; otherwise subtract the mean and divide by the biased std. w, b: per position
// in the group (empty: none).
std::vector<double> ref_norm(const std::vector<double>& x, int64_t group, bool rms,
                             const std::vector<double>& w, const std::vector<double>& b,
                             double eps) {
  std::vector<double> y(x.size());
  for (size_t r = 0; r < x.size() / static_cast<size_t>(group); ++r) {
    const double* xr = x.data() + r * group;
    double mu = 0;
    if (!rms) {
      for (int64_t i = 0; i < group; ++i) mu += xr[i];
      mu /= static_cast<double>(group);
    }
    double ms = 0;
    for (int64_t i = 0; i < group; ++i) ms += (xr[i] - mu) * (xr[i] - mu);
    ms /= static_cast<double>(group);
    const double inv = 1.0 / std::sqrt(ms + eps);
    for (int64_t i = 0; i < group; ++i) {
      double v = (xr[i] - mu) * inv;
      if (!w.empty()) v *= w[i];
      if (!b.empty()) v += b[i];
      y[r * group + i] = v;
    }
  }
  return y;
}
}  // namespace

TEST_SUITE("ops.norm") {
  TEST_CASE("rms_norm matches a float64 reference on odd shapes, views and dtypes") {
    manual_seed(21);
    for (Shape s : {Shape{7}, Shape{3, 37}, Shape{2, 5, 131}, Shape{4, 1}}) {
      const int64_t D = s.back();
      for (bool nc : {false, true}) {
        for (bool with_w : {false, true}) {
          const std::string shape = shape_str(s);
          CAPTURE(shape);
          CAPTURE(nc);
          CAPTURE(with_w);
          Tensor x = ct::rnd(s, kF32, -3, 3, nc);
          Tensor w = with_w ? ct::rnd({D}, kF32, 0.5, 1.5) : Tensor();
          std::vector<double> wv = with_w ? ct::vals(w) : std::vector<double>{};
          std::vector<double> ref = ref_norm(ct::vals(x), D, true, wv, {}, 1e-5);
          Tensor y = rms_norm(x, w);
          CHECK(y.dtype() == kF32);
          CHECK(y.sizes() == s);
          ct::check_close(y, ref, 1e-5, 1e-6, "f32");
          ct::check_close(rms_norm(x.to(kF64), with_w ? w.to(kF64) : Tensor()), ref, 1e-12, 1e-12,
                          "f64");
          ct::check_close(rms_norm(x, w, 0.5), ref_norm(ct::vals(x), D, true, wv, {}, 0.5), 1e-5,
                          1e-6, "eps");
          Tensor xb = x.to(kBF16), wb = with_w ? w.to(kBF16) : Tensor();
          Tensor yb = rms_norm(xb, wb);
          CHECK(yb.dtype() == kBF16);
          ct::check_close(yb, ref_norm(ct::vals(xb), D, true, with_w ? ct::vals(wb) : wv, {}, 1e-5),
                          1e-2, 1e-2, "bf16");
          if (with_w) {
            Tensor ym = rms_norm(xb, w);  // bf16 activations, f32 weight: promoted to f32
            CHECK(ym.dtype() == kF32);
            ct::check_close(ym, ref_norm(ct::vals(xb), D, true, wv, {}, 1e-5), 1e-5, 1e-5, "mixed");
          }
        }
      }
    }
  }

  TEST_CASE("layer_norm matches a float64 reference with and without weight and bias") {
    manual_seed(22);
    struct Case {
      Shape x, norm;
    };
    const Case cases[] = {
        {{7}, {7}},       {{3, 37}, {37}},    {{2, 5, 13}, {5, 13}}, {{2, 5, 13}, {2, 5, 13}},
        {{4, 3, 1}, {1}}, {{3, 1, 9}, {1, 9}}};
    for (const Case& k : cases) {
      int64_t group = 1;
      for (int64_t v : k.norm) group *= v;
      for (bool nc : {false, true})
        for (int wb_mask = 0; wb_mask < 4; ++wb_mask) {
          const bool with_w = wb_mask & 1, with_b = wb_mask & 2;
          const std::string shape = shape_str(k.x) + " over " + shape_str(k.norm);
          CAPTURE(shape);
          CAPTURE(nc);
          CAPTURE(wb_mask);
          Tensor x = ct::rnd(k.x, kF32, -3, 3, nc);
          Tensor w = with_w ? ct::rnd(k.norm, kF32, 0.5, 1.5) : Tensor();
          Tensor b = with_b ? ct::rnd(k.norm, kF32) : Tensor();
          std::vector<double> wv = with_w ? ct::vals(w) : std::vector<double>{};
          std::vector<double> bv = with_b ? ct::vals(b) : std::vector<double>{};
          std::vector<double> ref = ref_norm(ct::vals(x), group, false, wv, bv, 1e-5);
          Tensor y = layer_norm(x, k.norm, w, b);
          CHECK(y.dtype() == kF32);
          CHECK(y.sizes() == k.x);
          ct::check_close(y, ref, 1e-5, 2e-5, "f32");
          ct::check_close(layer_norm(x.to(kF64), k.norm, with_w ? w.to(kF64) : Tensor(),
                                     with_b ? b.to(kF64) : Tensor()),
                          ref, 1e-12, 1e-12, "f64");
          Tensor xb = x.to(kBF16);
          Tensor yb = layer_norm(xb, k.norm, with_w ? w.to(kBF16) : Tensor(),
                                 with_b ? b.to(kBF16) : Tensor(), 1e-3);
          CHECK(yb.dtype() == kBF16);
          std::vector<double> wbv = with_w ? ct::vals(w.to(kBF16)) : std::vector<double>{};
          std::vector<double> bbv = with_b ? ct::vals(b.to(kBF16)) : std::vector<double>{};
          ct::check_close(yb, ref_norm(ct::vals(xb), group, false, wbv, bbv, 1e-3), 2e-2, 2e-2,
                          "bf16");
        }
    }
  }

  TEST_CASE("gradcheck: registry cases, without affine parameters, views") {
    for (const char* name : {"rms_norm", "layer_norm"}) {
      CAPTURE(name);
      GradcheckCase c = op_info(name).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
      CHECK(op_info(name).composite);
      CHECK(op_info(name).boxed);
    }
    Tensor x = ct::rnd({3, 4, 5}, kF64).requires_grad_();
    Tensor w5 = ct::rnd({5}, kF64, 0.5, 1.5).requires_grad_();
    Tensor b5 = ct::rnd({5}, kF64).requires_grad_();
    Tensor w45 = ct::rnd({4, 5}, kF64, 0.5, 1.5).requires_grad_();
    ct::check_gradcheck([](const TensorList& v) { return rms_norm(v[0]); }, {x});
    ct::check_gradcheck(
        [](const TensorList& v) { return rms_norm(v[0].transpose(0, 2), Tensor(), 0.1); }, {x});
    ct::check_gradcheck([](const TensorList& v) { return rms_norm(v[0], v[1]); }, {x, w5});
    ct::check_gradcheck([](const TensorList& v) { return layer_norm(v[0], {5}); }, {x});
    ct::check_gradcheck([](const TensorList& v) { return layer_norm(v[0], {5}, v[1]); }, {x, w5});
    ct::check_gradcheck([](const TensorList& v) { return layer_norm(v[0], {5}, Tensor(), v[1]); },
                        {x, b5});
    ct::check_gradcheck(
        [](const TensorList& v) {
          return layer_norm(v[0], {4, 5}, v[1]);
        },
        {x, w45});
    ct::check_gradcheck([](const TensorList& v) { return layer_norm(v[0].transpose(1, 2), {4}); },
                        {x});
    // boxed calls with and without the optional tensors
    ct::check_close(op_info("layer_norm").boxed({x}, {{"normalized_shape", Shape{5}}})[0],
                    ct::vals(layer_norm(x, {5})), 0, 0);
    ct::check_close(op_info("rms_norm").boxed({x, w5}, {{"eps", 0.1}})[0],
                    ct::vals(rms_norm(x, w5, 0.1)), 0, 0);
  }

  TEST_CASE("rms_norm on the CPU (the fused kernels): gradients against float64 references") {
    manual_seed(31);
    // rows past the 64-row blocks of the weight's gradient; odd widths; views
    for (Shape s : {Shape{130, 17}, Shape{2, 3, 768}, Shape{5, 1}, Shape{67, 64}}) {
      for (bool nc : {false, true}) {
        for (bool with_w : {true, false}) {
          const std::string shape = shape_str(s);
          CAPTURE(shape);
          CAPTURE(nc);
          CAPTURE(with_w);
          const int64_t D = s.back(), R = shape_numel(s) / D;
          Tensor x = ct::rnd(s, kF32, -2, 2, nc).requires_grad_();
          Tensor w = ct::rnd({D}, kF32, 0.5, 1.5).requires_grad_();
          Tensor gy = ct::rnd(s, kF32);
          const double eps = 1e-5;
          Tensor y = rms_norm(x, with_w ? w : Tensor(), eps);
          std::vector<double> xv = ct::vals(x), wv = ct::vals(w), gv = ct::vals(gy);
          ct::check_close(y, ref_norm(xv, D, true, with_w ? wv : std::vector<double>{}, {}, eps),
                          1e-5, 1e-6, "y");
          y.backward(gy);
          std::vector<double> dx(xv.size()), dw(static_cast<size_t>(D), 0.0);
          for (int64_t i = 0; i < R; ++i) {
            const double* xr = xv.data() + i * D;
            const double* gr = gv.data() + i * D;
            double ms = 0, dot = 0;
            for (int64_t j = 0; j < D; ++j) ms += xr[j] * xr[j];
            const double r = 1.0 / std::sqrt(ms / static_cast<double>(D) + eps);
            for (int64_t j = 0; j < D; ++j) {
              const double wj = with_w ? wv[j] : 1.0;
              dot += wj * gr[j] * xr[j];
              dw[j] += gr[j] * xr[j] * r;
            }
            for (int64_t j = 0; j < D; ++j) {
              const double wj = with_w ? wv[j] : 1.0;
              dx[i * D + j] = r * wj * gr[j] - xr[j] * r * r * r * dot / static_cast<double>(D);
            }
          }
          CHECK(x.grad().sizes() == s);
          ct::check_close(x.grad(), dx, 1e-4, 1e-5, "dx");
          if (with_w)
            ct::check_close(w.grad(), dw, 1e-4, 1e-4, "dw");
          else
            CHECK(!w.grad().defined());
        }
      }
    }
    // f64 through the same kernels, by central differences: x alone, the weight alone
    Tensor x = ct::rnd({70, 3}, kF64).requires_grad_();
    Tensor w = ct::rnd({3}, kF64, 0.5, 1.5).requires_grad_();
    Tensor xd = x.detach(), wd = w.detach();
    ct::check_gradcheck([wd](const TensorList& v) { return rms_norm(v[0], wd); }, {x});
    ct::check_gradcheck([xd](const TensorList& v) { return rms_norm(xd, v[0], 0.3); }, {w});
    // modifying the input in place after the op is an error at backward, naming it
    Tensor a = ct::rnd({4, 6}).requires_grad_();
    Tensor b = a * 1.0;
    Tensor c = rms_norm(b).sum();
    b.mul_(2.0);
    ct::check_error([&] { c.backward(); }, {"rms_norm"});
  }

  TEST_CASE("bad inputs are errors naming the op and shapes") {
    Tensor x = zeros({2, 3, 4});
    ct::check_error([&] { rms_norm(x, zeros({3})); }, {"rms_norm", "weight", "[3]", "[2, 3, 4]"});
    ct::check_error([&] { rms_norm(scalar_tensor(1.0, kF32)); }, {"rms_norm", "0-d"});
    ct::check_error([&] { rms_norm(zeros({2, 3}, kI64)); }, {"rms_norm", "int64"});
    ct::check_error([&] { rms_norm(x, Tensor(), -1); }, {"rms_norm", "eps"});
    ct::check_error([&] { layer_norm(x, {3}); }, {"layer_norm", "[3]", "[2, 3, 4]"});
    ct::check_error([&] { layer_norm(x, {1, 2, 3, 4}); }, {"layer_norm", "[1, 2, 3, 4]"});
    ct::check_error([&] { layer_norm(x, {}); }, {"layer_norm", "normalized_shape"});
    ct::check_error(
        [&] {
          layer_norm(x, {3, 4}, zeros({4}));
        },
        {"layer_norm", "weight", "[4]", "[3, 4]"});
    ct::check_error([&] { layer_norm(x, {4}, Tensor(), zeros({3})); },
                    {"layer_norm", "bias", "[3]"});
    ct::check_error([&] { layer_norm(x, {4}, zeros({4}, kI64)); },
                    {"layer_norm", "weight", "int64"});
  }
}
