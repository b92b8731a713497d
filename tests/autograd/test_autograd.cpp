#include "test_util.h"

using namespace coil;

TEST_SUITE("autograd") {
  TEST_CASE("backward accumulates into leaves; no_grad, detach, requires_grad_") {
    Tensor x = tensor(std::vector<double>{1, 2, 3}).requires_grad_();
    Tensor y = (x * x).sum();
    y.backward();
    ct::check_close(x.grad(), {2, 4, 6}, 0, 0);
    (x * 3.0).sum().backward();
    ct::check_close(x.grad(), {5, 7, 9}, 0, 0);  // accumulates
    {
      NoGradGuard g;
      Tensor z = x * 2.0;
      CHECK(!z.requires_grad());
    }
    CHECK(!x.detach().requires_grad());
    CHECK(x.detach().impl().storage == x.impl().storage);
    CHECK((x * 2.0).requires_grad());
    CHECK(!(x * 2.0).is_leaf());
    ct::check_error([] { ones({2}, kI64).requires_grad_(); },
                    {"requires_grad_", "floating", "int64"});
    ct::check_error([&] { (x * 2.0).backward(); }, {"backward", "scalar", "[3]"});
    ct::check_error([] { ones({1}).backward(); }, {"backward", "does not require grad"});
  }

  TEST_CASE("a shared subexpression sums its gradients (diamond graph)") {
    Tensor x = tensor(std::vector<double>{0.5, -1}).requires_grad_();
    Tensor a = exp(x);
    Tensor y = (a * a + a * 3.0).sum();
    y.backward();
    std::vector<double> xv = {0.5, -1};
    ct::check_close(
        x.grad(), {2 * std::exp(1.0) + 3 * std::exp(0.5), 2 * std::exp(-2.0) + 3 * std::exp(-1.0)},
        1e-12, 0);
  }

  TEST_CASE("retain_graph, and a second backward without it is an error naming the node") {
    Tensor x = tensor(std::vector<double>{2}).requires_grad_();
    Tensor y = (exp(x) * x).sum();
    y.backward({}, true);
    y.backward();
    ct::check_close(x.grad(), {2 * 3 * std::exp(2.0)}, 1e-12, 0);
    ct::check_error([&] { y.backward(); }, {"backward", "second time", "retain_graph"});
  }

  TEST_CASE("modifying a saved tensor in place is caught at backward, naming the op") {
    Tensor x = tensor(std::vector<double>{1, 2}).requires_grad_();
    Tensor h = x * 1.0;
    Tensor y = exp(h);  // exp saves its output
    {
      NoGradGuard g;
      y.mul_(2.0);
    }
    ct::check_error([&] { y.sum().backward(); }, {"exp", "modified in place", "version"});
    Tensor w = tensor(std::vector<double>{1, 2}).requires_grad_();
    Tensor p = w * 2.0;
    Tensor q = p * p;  // mul saves p
    p.add_(ones({2}, kF64));
    ct::check_error([&] { q.sum().backward(); }, {"mul", "modified in place"});
  }

  TEST_CASE("hooks see and may replace gradients; retain_grad keeps a non-leaf's") {
    Tensor x = tensor(std::vector<double>{1, 2}).requires_grad_();
    Tensor h = x * 3.0;
    std::vector<double> seen;
    h.register_hook([&](const Tensor& g) {
      seen = ct::vals(g);
      return g * 10.0;
    });
    h.retain_grad();
    h.sum().backward();
    CHECK(seen == std::vector<double>{1, 1});
    ct::check_close(x.grad(), {30, 30}, 0, 0);
    Tensor leaf = tensor(std::vector<double>{1}).requires_grad_();
    leaf.register_hook([](const Tensor& g) { return g * 0.0; });
    (leaf * 5.0).sum().backward();
    ct::check_close(leaf.grad(), {0}, 0, 0);
  }

  TEST_CASE("checkpoint recomputes with the same gradients and saves less") {
    manual_seed(5);
    Tensor w = ct::rnd({64, 64}, kF64).requires_grad_();
    Tensor x = ct::rnd({256, 64}, kF64).requires_grad_();
    auto block = [&](const TensorList& in) {
      Tensor h = in[0];
      for (int i = 0; i < 4; ++i) h = tanh(matmul(h, in[1]));
      return TensorList{h};
    };
    block({x, w})[0].sum().backward();
    std::vector<double> gw = ct::vals(w.grad()), gx = ct::vals(x.grad());
    w.set_grad(Tensor());
    x.set_grad(Tensor());
    int64_t base = memory_stats().bytes_in_use;
    reset_peak_memory();
    Tensor plain = block({x, w})[0].sum();
    int64_t plain_held = memory_stats().bytes_in_use - base;
    plain = Tensor();
    Tensor ck = checkpoint(block, {x, w})[0].sum();
    int64_t ck_held = memory_stats().bytes_in_use - base;
    CHECK(ck_held < plain_held / 3);
    ck.backward();
    ct::check_close(w.grad(), gw, 1e-12, 1e-12);
    ct::check_close(x.grad(), gx, 1e-12, 1e-12);
  }

  TEST_CASE("the graph and its saved tensors are freed after backward") {
    Tensor w1 = ct::rnd({128, 256}).requires_grad_(), w2 = ct::rnd({10, 128}).requires_grad_();
    Tensor x = ct::rnd({512, 256});
    auto step = [&] {
      Tensor loss = linear(tanh(linear(x, w1)), w2).square().mean();
      loss.backward();
    };
    step();  // allocates .grad
    int64_t before = memory_stats().bytes_in_use;
    step();
    CHECK(memory_stats().bytes_in_use == before);
    int64_t peak_free = memory_stats().bytes_in_use;
    {
      Tensor loss = linear(tanh(linear(x, w1)), w2).square().mean();
      CHECK(memory_stats().bytes_in_use > peak_free);  // activations held by the graph
      loss.backward();
      CHECK(memory_stats().bytes_in_use <= before + 64);  // only the loss scalar remains
    }
    CHECK(memory_stats().bytes_in_use == before);
  }

  TEST_CASE("gradcheck catches a wrong gradient") {
    Tensor x = ct::rnd({3}, kF64).requires_grad_();
    auto ok = gradcheck([](const TensorList& v) { return v[0] * v[0]; }, {x});
    CHECK(ok.ok);
    // a function whose recorded backward is wrong: detach hides one factor from autograd
    auto bad = gradcheck([](const TensorList& v) { return v[0] * v[0].detach(); }, {x});
    CHECK(!bad.ok);
    CHECK(bad.message.find("analytic") != std::string::npos);
  }

  TEST_CASE("anomaly mode names the first op that makes a NaN, forward and backward") {
    autograd::DetectAnomalyGuard guard;
    Tensor x = tensor(std::vector<double>{-1, 4}).requires_grad_();
    ct::check_error([&] { sqrt(x); }, {"anomaly", "sqrt", "NaN", "[2]"});
    Tensor z = tensor(std::vector<double>{0, 1}).requires_grad_();
    Tensor y = sqrt(z);  // fine forward, infinite gradient at 0
    ct::check_error([&] { y.sum().backward(); },
                    {"anomaly", "backward of sqrt", "output 0 (shape [2])", "input shapes: [2]"});
    // The first bad op is named, not a later one: log(0) = -inf in a chain of ops.
    Tensor w = tensor(std::vector<double>{0, 2, 3}).requires_grad_();
    ct::check_error([&] { exp(log(w * 1.0) + 1.0); }, {"anomaly: log", "input shapes: [3]"});
  }
}
