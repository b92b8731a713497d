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

  TEST_CASE("shape errors") {
    ct::check_error([] { matmul(ones({2, 3}), ones({4, 2})); }, {"matmul", "[2, 3]", "[4, 2]"});
    ct::check_error([] { matmul(ones({2, 2, 3}), ones({3, 3, 2})); }, {"matmul", "broadcast"});
    ct::check_error([] { matmul(ones({}), ones({2})); }, {"matmul", "at least 1 dim"});
    ct::check_error([] { linear(ones({2, 3}), ones({4, 5})); }, {"linear", "[2, 3]", "[4, 5]"});
    ct::check_error([] { linear(ones({2, 3}), ones({4, 3}), ones({3})); }, {"linear", "bias", "4"});
    ct::check_error([] { bmm(ones({2, 3}), ones({3, 2})); }, {"bmm", "3-d"});
  }
}
