// nn::Module bookkeeping and the basic layers.
#include "../test_util.h"

using namespace coil;

namespace {
struct Net : nn::Module {
  std::shared_ptr<nn::Linear> fc1, fc2;
  std::shared_ptr<nn::RMSNorm> norm;
  Tensor scale, running;
  Net() {
    fc1 = register_module("fc1", std::make_shared<nn::Linear>(4, 6));
    norm = register_module("norm", std::make_shared<nn::RMSNorm>(6));
    fc2 = register_module("fc2", std::make_shared<nn::Linear>(6, 3, false));
    scale = ones({3});
    running = zeros({3});
    register_parameter("scale", &scale);
    register_buffer("running", &running);
  }
  Tensor forward(const Tensor& x) { return fc2->forward(norm->forward(fc1->forward(x))) * scale; }
};
}  // namespace

TEST_SUITE("nn.module") {
  TEST_CASE("named parameters, buffers and state_dict in registration order") {
    Net n;
    std::vector<std::string> names;
    for (auto& [k, t] : n.named_parameters()) names.push_back(k);
    CHECK(names ==
          std::vector<std::string>{"scale", "fc1.weight", "fc1.bias", "norm.weight", "fc2.weight"});
    CHECK(n.named_buffers().size() == 1);
    CHECK(n.state_dict().size() == 6);
    CHECK(n.num_parameters() == 3 + 24 + 6 + 6 + 18);
    for (auto& p : n.parameters()) CHECK(p.requires_grad());
    CHECK(!n.running.requires_grad());
  }

  TEST_CASE("load_state_dict copies values and names bad keys") {
    manual_seed(1);
    Net a, b;
    b.load_state_dict(a.state_dict());
    Tensor x = rand({2, 4});
    CHECK((a.forward(x) - b.forward(x)).abs().max().item<double>() == 0.0);
    CHECK(!b.fc1->weight.is_same(a.fc1->weight));  // copied, not aliased
    auto sd = a.state_dict();
    auto missing = sd;
    missing.erase(missing.begin() + 2);  // scale, running, fc1.weight, ...
    ct::check_error([&] { b.load_state_dict(missing); }, {"missing", "fc1.weight"});
    b.load_state_dict(missing, /*strict=*/false);
    auto extra = sd;
    extra.emplace_back("fc3.weight", zeros({2}));
    ct::check_error([&] { b.load_state_dict(extra); }, {"unexpected", "fc3.weight"});
    auto wrong = sd;
    wrong[2].second = zeros({6, 5});
    ct::check_error([&] { b.load_state_dict(wrong, false); },
                    {"shape mismatch", "fc1.weight", "[6, 5]", "[6, 4]"});
  }

  TEST_CASE("to(dtype), train/eval, zero_grad") {
    Net n;
    n.to(kF64);
    for (auto& [k, t] : n.state_dict()) CHECK(t.dtype() == kF64);
    for (auto& p : n.parameters()) CHECK(p.requires_grad());
    Tensor y = n.forward(rand({2, 4}, kF64));
    CHECK(y.dtype() == kF64);
    y.sum().backward();
    CHECK(n.fc1->weight.grad().defined());
    n.zero_grad();
    CHECK(!n.fc1->weight.grad().defined());
    n.eval();
    CHECK(!n.fc1->is_training());
    n.train();
    CHECK(n.norm->is_training());
  }

  TEST_CASE("layers equal their formulas") {
    manual_seed(2);
    nn::Linear lin(5, 3);
    for (double v : ct::vals(lin.weight)) CHECK(std::fabs(v) <= 1 / std::sqrt(5.0));
    Tensor x = rand({2, 5}, kF32);
    auto w = ct::vals(lin.weight), b = ct::vals(lin.bias), xv = ct::vals(x);
    std::vector<double> ref(6);
    for (int i = 0; i < 2; ++i)
      for (int o = 0; o < 3; ++o) {
        ref[i * 3 + o] = b[o];
        for (int k = 0; k < 5; ++k) ref[i * 3 + o] += xv[i * 5 + k] * w[o * 5 + k];
      }
    ct::check_close(lin.forward(x), ref, 1e-5, 1e-6, "linear");

    // Gated norm: per group and over everything.
    nn::RMSNormGated g(8, 4);
    {
      NoGradGuard ng;
      g.weight.copy_(rand({8}) + 0.5);
    }
    Tensor a = rand({3, 8}, kF32) - 0.5, z = rand({3, 8}, kF32) - 0.5;
    auto av = ct::vals(a), zv = ct::vals(z), gw = ct::vals(g.weight);
    for (int64_t group : {4, 8}) {
      g.group_size = group;
      std::vector<double> r(24);
      for (int i = 0; i < 3; ++i)
        for (int g0 = 0; g0 < 8; g0 += group) {
          double ss = 0;
          std::vector<double> v(group);
          for (int k = 0; k < group; ++k) {
            double zz = zv[i * 8 + g0 + k];
            v[k] = av[i * 8 + g0 + k] * zz / (1 + std::exp(-zz));
            ss += v[k] * v[k];
          }
          for (int k = 0; k < group; ++k)
            r[i * 8 + g0 + k] = v[k] / std::sqrt(ss / group + 1e-5) * gw[g0 + k];
        }
      ct::check_close(g.forward(a, z), r, 1e-5, 1e-6, "gated norm");
    }
    ct::check_error([] { nn::RMSNormGated(8, 3); }, {"group_size", "3", "8"});

    // Conv1d: weight (C, 1, K) as PyTorch stores it.
    nn::CausalConv1d conv(3, 2);
    CHECK(conv.weight.sizes() == Shape{3, 1, 2});
    Tensor xc = rand({1, 4, 3});
    auto cw = ct::vals(conv.weight), cb = ct::vals(conv.bias), xcv = ct::vals(xc);
    std::vector<double> rc(12);
    for (int t = 0; t < 4; ++t)
      for (int c = 0; c < 3; ++c) {
        double s = cb[c] + cw[c * 2 + 1] * xcv[t * 3 + c];
        if (t > 0) s += cw[c * 2] * xcv[(t - 1) * 3 + c];
        rc[t * 3 + c] = s;
      }
    ct::check_close(conv.forward(xc, false), rc, 1e-5, 1e-6, "conv");

    nn::Dropout d(0.5);
    Tensor ones8 = ones({1000});
    d.eval();
    CHECK(d.forward(ones8).sum().item<double>() == 1000.0);
    d.train();
    double kept = (d.forward(ones8) > 0.0).sum().item<double>();
    CHECK(kept > 400);
    CHECK(kept < 600);
  }

  TEST_CASE("ModuleList names children by index") {
    nn::ModuleList l;
    l.push_back(std::make_shared<nn::Linear>(2, 2));
    l.push_back(std::make_shared<nn::Linear>(2, 2, false));
    std::vector<std::string> names;
    for (auto& [k, t] : l.named_parameters()) names.push_back(k);
    CHECK(names == std::vector<std::string>{"0.weight", "0.bias", "1.weight"});
    CHECK(l.size() == 2);
  }
}
