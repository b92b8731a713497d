#include "test_util.h"

using namespace coil;

namespace {
// Naive batched matmul with numpy broadcasting of the batch dims, for a >= 2-d and b >= 2-d.
std::vector<double> ref_matmul(const Tensor& a, const Tensor& b, Shape* out_shape) {
  Shape ba(a.sizes().begin(), a.sizes().end() - 2), bb(b.sizes().begin(), b.sizes().end() - 2);
  Shape batch = broadcast_shapes("ref", ba, bb);
  int64_t n = a.size(-2), k = a.size(-1), m = b.size(-1);
  *out_shape = batch;
  out_shape->push_back(n);
  out_shape->push_back(m);
  std::vector<double> av = ct::vals(a), bv = ct::vals(b), r;
  for (int64_t z = 0; z < shape_numel(batch); ++z) {
    Shape bi = ct::unravel(z, batch);
    int64_t za = ct::bcast_pos(bi, ba), zb = ct::bcast_pos(bi, bb);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        double s = 0;
        for (int64_t p = 0; p < k; ++p) s += av[(za * n + i) * k + p] * bv[(zb * k + p) * m + j];
        r.push_back(s);
      }
  }
  return r;
}
}  // namespace

TEST_SUITE("ops.linalg") {
  TEST_CASE("matmul against a naive reference: shapes, broadcasting, transposed views, dtypes") {
    manual_seed(4);
    std::vector<std::pair<Shape, Shape>> cases = {
        {{1, 1}, {1, 1}},
        {{3, 5}, {5, 7}},
        {{17, 33}, {33, 9}},
        {{2, 3, 4}, {4, 5}},
        {{4, 5}, {2, 5, 3}},
        {{2, 1, 3, 4}, {3, 4, 2}},
        {{65, 130}, {130, 67}},
        {{3, 0}, {0, 4}},
        // one row or one column: the gemv path, contiguous and transposed
        {{1, 9}, {9, 7}},
        {{6, 9}, {9, 1}},
        {{3, 1, 9}, {3, 9, 7}},
        {{1, 300}, {300, 513}}};
    for (auto& [sa, sb] : cases) {
      for (bool nc : {false, true}) {
        for (DType t : {kF32, kF64, kBF16, kI64}) {
          CAPTURE(shape_str(sa));
          CAPTURE(shape_str(sb));
          CAPTURE(t);
          Tensor a = t == kI64 ? randint(-3, 4, sa) : ct::rnd(sa, t, -1, 1, nc);
          Tensor b = t == kI64 ? randint(-3, 4, sb) : ct::rnd(sb, t, -1, 1, nc);
          Shape os;
          std::vector<double> ref = ref_matmul(a, b, &os);
          Tensor r = matmul(a, b);
          CHECK(r.sizes() == os);
          CHECK(r.dtype() == t);
          double tol = t == kBF16 ? 2e-2 : (t == kF32 ? 1e-5 : 1e-12);
          ct::check_close(r, ref, tol, tol * 10);
        }
      }
    }
  }

  TEST_CASE("1-d operands, linear, bmm") {
    Tensor v = tensor(std::vector<float>{1, 2, 3});
    Tensor m = arange(6, kF32).view({3, 2});
    CHECK(matmul(v, v).dim() == 0);
    CHECK(matmul(v, v).item<float>() == 14);
    ct::check_close(matmul(v, m), {16, 22}, 0, 0);
    ct::check_close(matmul(m.t(), v), {16, 22}, 0, 0);
    Tensor x = ct::rnd({2, 3, 4}), w = ct::rnd({5, 4}), b = ct::rnd({5});
    Shape os;
    std::vector<double> ref = ref_matmul(x, w.t().contiguous(), &os), bv = ct::vals(b);
    for (size_t i = 0; i < ref.size(); ++i) ref[i] += bv[i % 5];
    ct::check_close(linear(x, w, b), ref, 1e-5, 1e-5);
    // Decoding: one token through a Linear, the weight read transposed (gemv).
    Tensor x1 = ct::rnd({1, 1, 40}), w1 = ct::rnd({70, 40});
    ct::check_close(linear(x1, w1), ref_matmul(x1.view({1, 40}), w1.t().contiguous(), &os), 1e-5,
                    1e-5);
    ct::check_close(matmul(w1, x1.view({40, 1})),
                    ref_matmul(w1, x1.view({40, 1}).contiguous(), &os), 1e-5, 1e-5);
    ct::check_close(matmul(w1.t().contiguous().t(), x1.view({40, 1})),
                    ref_matmul(w1, x1.view({40, 1}).contiguous(), &os), 1e-5, 1e-5);
    Tensor a3 = ct::rnd({3, 2, 4}), b3 = ct::rnd({3, 4, 5});
    ct::check_close(bmm(a3, b3), ref_matmul(a3, b3, &os), 1e-5, 1e-5);
  }

  TEST_CASE("gradients") {
    for (const char* n : {"bmm", "matmul", "linear"}) {
      GradcheckCase c = op_info(n).gradcheck();
      ct::check_gradcheck(c.fn, c.inputs);
    }
    Tensor a = ct::rnd({4}, kF64).requires_grad_(), b = ct::rnd({2, 4, 3}, kF64).requires_grad_();
    ct::check_gradcheck([](const TensorList& v) { return matmul(v[0], v[1]); }, {a, b});
    Tensor c = ct::rnd({3, 4}, kF64).requires_grad_(), d = ct::rnd({4}, kF64).requires_grad_();
    ct::check_gradcheck([](const TensorList& v) { return matmul(v[0], v[1]); }, {c, d});
  }

  TEST_CASE("linear's gradients come in the operands' layout, against float64 references") {
    manual_seed(21);
    for (bool nc : {false, true}) {
      CAPTURE(nc);
      Tensor x = ct::rnd({2, 3, 5}, kF32, -2, 2, nc).requires_grad_();
      Tensor w = ct::rnd({7, 5}, kF32, -2, 2, nc).requires_grad_();
      Tensor b = ct::rnd({7}).requires_grad_();
      Tensor gy = ct::rnd({2, 3, 7});
      linear(x, w, b).backward(gy);
      std::vector<double> xv = ct::vals(x), wv = ct::vals(w), gv = ct::vals(gy), dw(35, 0),
                          dx(30, 0), db(7, 0);
      for (int64_t r = 0; r < 6; ++r)
        for (int64_t o = 0; o < 7; ++o) {
          db[o] += gv[r * 7 + o];
          for (int64_t i = 0; i < 5; ++i) {
            dw[o * 5 + i] += gv[r * 7 + o] * xv[r * 5 + i];
            dx[r * 5 + i] += gv[r * 7 + o] * wv[o * 5 + i];
          }
        }
      CHECK(w.grad().is_contiguous());
      CHECK(w.grad().sizes() == Shape{7, 5});
      CHECK(x.grad().sizes() == Shape{2, 3, 5});
      ct::check_close(w.grad(), dw, 1e-5, 1e-5, "dW");
      ct::check_close(x.grad(), dx, 1e-5, 1e-5, "dx");
      ct::check_close(b.grad(), db, 1e-5, 1e-5, "db");
    }
    // only one operand requiring grad; f64 gradcheck through a transposed weight view
    Tensor x = ct::rnd({4, 3}, kF64).requires_grad_(), w = ct::rnd({2, 3}, kF64);
    ct::check_gradcheck([w](const TensorList& v) { return linear(v[0], w); }, {x});
    Tensor x2 = ct::rnd({2, 2, 3}, kF64), w2 = ct::rnd({3, 2}, kF64).requires_grad_();
    ct::check_gradcheck([x2](const TensorList& v) { return linear(x2, v[0].t()); }, {w2});
  }

  TEST_CASE("shape errors") {
    ct::check_error([] { matmul(ones({2, 3}), ones({4, 2})); }, {"matmul", "[2, 3]", "[4, 2]"});
    ct::check_error([] { matmul(ones({2, 2, 3}), ones({3, 3, 2})); }, {"matmul", "broadcast"});
    ct::check_error([] { matmul(ones({}), ones({2})); }, {"matmul", "at least 1 dim"});
    ct::check_error([] { linear(ones({2, 3}), ones({4, 5})); }, {"linear", "[2, 3]", "[4, 5]"});
    ct::check_error([] { linear(ones({2, 3}), ones({4, 3}), ones({3})); }, {"linear", "bias", "4"});
    ct::check_error([] { bmm(ones({2, 3}), ones({3, 2})); }, {"bmm", "3-d"});
  }
}
