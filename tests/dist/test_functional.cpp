// Differentiable collectives at any world size (a world of one, mpirun -np 2 and 4). The loss
// is the sum over ranks of sum(y_r * W_r) with weights every rank can rebuild, so each rank
// computes the exact expected gradient of its own input.
#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;
namespace F = coil::dist::functional;

namespace {

Tensor input(const Shape& s, int r) {
  Tensor x = zeros(s, Options(kF64));
  for (int64_t i = 0; i < x.numel(); ++i) x.data_ptr<double>()[i] = 0.5 * r + 0.25 * (i % 9) - 1;
  return x;
}
Tensor weights(const Shape& s, int r) {
  Tensor w = zeros(s, Options(kF64));
  for (int64_t i = 0; i < w.numel(); ++i) w.data_ptr<double>()[i] = (r + 1) * 0.1 + 0.01 * i;
  return w;
}
double at(const Tensor& t, int64_t i) { return t.contiguous().data_ptr<double>()[i]; }

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("functional all_reduce: sum and avg, gradients summed over ranks") {
    const int n = dist::world_size(), me = dist::rank();
    for (dist::ReduceOp op : {dist::ReduceOp::kSum, dist::ReduceOp::kAvg}) {
      Tensor x = input({2, 3}, me).requires_grad_();
      Tensor y = F::all_reduce(x, op);
      (y * weights({2, 3}, me)).sum().backward();
      for (int64_t i = 0; i < 6; ++i) {
        double s = 0, g = 0;
        for (int r = 0; r < n; ++r) {
          s += at(input({2, 3}, r), i);
          g += at(weights({2, 3}, r), i);
        }
        if (op == dist::ReduceOp::kAvg) {
          s /= n;
          g /= n;
        }
        CHECK(at(y.detach(), i) == doctest::Approx(s).epsilon(1e-14));
        CHECK(at(x.grad(), i) == doctest::Approx(g).epsilon(1e-14));
      }
    }
    Tensor x = input({2}, me).requires_grad_();
    CHECK_THROWS_WITH_AS(F::all_reduce(x, dist::ReduceOp::kMax), doctest::Contains("no gradient"),
                         Error);
  }

  TEST_CASE("functional all_gather on a middle dim with uneven sizes; backward reduce_scatter") {
    const int n = dist::world_size(), me = dist::rank();
    // rank r holds (2, r + 1, 3); the gather is (2, T, 3), T = sum (r + 1)
    int64_t T = 0;
    std::vector<int64_t> off(n);
    for (int r = 0; r < n; ++r) {
      off[r] = T;
      T += r + 1;
    }
    Tensor x = input({2, me + 1, 3}, me).requires_grad_();
    Tensor y = F::all_gather(x, 1);
    REQUIRE(y.sizes() == Shape{2, T, 3});
    (y * weights({2, T, 3}, me)).sum().backward();
    for (int r = 0; r < n; ++r) {
      Tensor xr = input({2, r + 1, 3}, r);
      for (int64_t a = 0; a < 2; ++a)
        for (int64_t b = 0; b <= r; ++b)
          for (int64_t c = 0; c < 3; ++c)
            CHECK(at(y.detach(), (a * T + off[r] + b) * 3 + c) ==
                  at(xr, (a * (r + 1) + b) * 3 + c));
    }
    for (int64_t a = 0; a < 2; ++a)
      for (int64_t b = 0; b <= me; ++b)
        for (int64_t c = 0; c < 3; ++c) {
          double g = 0;
          for (int r = 0; r < n; ++r) g += at(weights({2, T, 3}, r), (a * T + off[me] + b) * 3 + c);
          CHECK(at(x.grad(), (a * (me + 1) + b) * 3 + c) == doctest::Approx(g).epsilon(1e-14));
        }
  }

  TEST_CASE("functional reduce_scatter on the last dim; backward all_gather") {
    const int n = dist::world_size(), me = dist::rank();
    const int64_t len = 2 * n + 1;  // uneven: shard_sizes
    const auto sizes = dist::shard_sizes(len, n);
    int64_t start = 0;
    for (int r = 0; r < me; ++r) start += sizes[r];
    Tensor x = input({3, len}, me).requires_grad_();
    Tensor y = F::reduce_scatter(x, -1);
    REQUIRE(y.sizes() == Shape{3, sizes[me]});
    // each rank's loss weights its own block; x_r's gradient is every rank's weights, placed
    std::vector<Tensor> ws;
    for (int r = 0; r < n; ++r) ws.push_back(weights({3, sizes[r]}, r));
    (y * ws[me]).sum().backward();
    for (int64_t a = 0; a < 3; ++a) {
      for (int64_t b = 0; b < sizes[me]; ++b) {
        double s = 0;
        for (int r = 0; r < n; ++r) s += at(input({3, len}, r), a * len + start + b);
        CHECK(at(y.detach(), a * sizes[me] + b) == doctest::Approx(s).epsilon(1e-14));
      }
      int64_t col = 0;
      for (int r = 0; r < n; ++r)
        for (int64_t b = 0; b < sizes[r]; ++b, ++col)
          CHECK(at(x.grad(), a * len + col) == at(ws[r], a * sizes[r] + b));
    }
  }

  TEST_CASE("functional all_to_all with counts; backward is the reverse all_to_all") {
    const int n = dist::world_size(), me = dist::rank();
    auto cnt = [](int s, int d) { return int64_t((s + 2 * d) % 3 + 1); };
    std::vector<int64_t> sc(n), rc(n);
    int64_t srows = 0, rrows = 0;
    for (int d = 0; d < n; ++d) srows += sc[d] = cnt(me, d);
    for (int s = 0; s < n; ++s) rrows += rc[s] = cnt(s, me);
    Tensor x = input({srows, 2}, me).requires_grad_();
    Tensor y = F::all_to_all(x, sc, rc);
    REQUIRE(y.size(0) == rrows);
    (y * weights({rrows, 2}, me)).sum().backward();
    // row k of x goes to rank d at position p; its gradient is d's weight there
    int64_t row = 0;
    for (int d = 0; d < n; ++d) {
      int64_t pos = 0;
      for (int s = 0; s < me; ++s) pos += cnt(s, d);
      int64_t drows = 0;
      for (int s = 0; s < n; ++s) drows += cnt(s, d);
      for (int64_t k = 0; k < sc[d]; ++k, ++row)
        for (int64_t c = 0; c < 2; ++c)
          CHECK(at(x.grad(), row * 2 + c) == at(weights({drows, 2}, d), (pos + k) * 2 + c));
    }
  }

  TEST_CASE("functional send and recv: the gradient travels back") {
    const int n = dist::world_size(), me = dist::rank();
    if (n < 2) return;
    if (me == 0) {
      Tensor w = input({3}, 0).requires_grad_();
      Tensor token = F::send(w * 2.0, 1);
      CHECK(token.dim() == 0);
      token.backward();
      // rank 1's loss is sum(y^2), y = 2 w: d/dw = 8 w
      for (int64_t i = 0; i < 3; ++i)
        CHECK(at(w.grad(), i) == doctest::Approx(8 * at(w.detach(), i)));
    } else if (me == 1) {
      Tensor y = F::recv({3}, kF64, 0);
      for (int64_t i = 0; i < 3; ++i) CHECK(at(y.detach(), i) == 2 * at(input({3}, 0), i));
      (y * y).sum().backward();
    }
    dist::barrier();
  }
}
