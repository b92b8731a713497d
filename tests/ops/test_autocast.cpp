// Autocast (core/autocast.h): which ops run in the lower precision and which in float32, that
// gradients reach float32 parameters, and that Mamba LMs train under it close to float32.
#include "test_util.h"

using namespace coil;

namespace {

nn::MambaConfig small(bool mamba2) {
  nn::MambaConfig c;
  c.model_type = mamba2 ? "mamba2" : "mamba";
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.state_size = 16;
  c.num_heads = 4;
  c.head_dim = 16;
  c.n_groups = 1;
  c.chunk_size = 16;
  return c;
}

std::vector<double> flat_grads(const nn::Module& m) {
  std::vector<double> g;
  for (const Tensor& p : m.parameters()) {
    REQUIRE(p.grad().defined());
    REQUIRE(p.grad().dtype() == kF32);
    for (double v : ct::vals(p.grad())) g.push_back(v);
  }
  return g;
}

double cosine(const std::vector<double>& a, const std::vector<double>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

}  // namespace

TEST_SUITE("ops.autocast") {
  TEST_CASE("products in bf16, scans, norms and losses in float32, gradients in float32") {
    manual_seed(3);
    Tensor x = ct::rnd({6, 8}), w = ct::rnd({5, 8}).requires_grad_(), b = ct::rnd({5});
    Tensor target = tensor(std::vector<int64_t>{0, 1, 2, 3, 4, 0});
    const Tensor y32 = linear(x, w, b);
    Tensor loss32 = cross_entropy(y32, target);
    loss32.backward();
    const Tensor g32 = w.grad();
    w.set_grad(Tensor());
    {
      AutocastGuard autocast(kBF16);
      CHECK(autocast_state().enabled);
      const Tensor y = linear(x, w, b);
      CHECK(y.dtype() == kBF16);
      CHECK(ct::rel_error(y.to(kF32), y32) < 1e-2);
      CHECK(matmul(x, w.t()).dtype() == kBF16);
      CHECK(bmm(x.unsqueeze(0), w.t().unsqueeze(0)).dtype() == kBF16);
      CHECK(rms_norm(y).dtype() == kF32);
      CHECK(softmax(y, -1).dtype() == kF32);
      CHECK(log_softmax(y, -1).dtype() == kF32);
      CHECK(logsumexp(y, {-1}).dtype() == kF32);
      CHECK((y + y32).dtype() == kF32);                          // type promotion, as PyTorch
      CHECK(x.to(kF64).matmul(w.t().to(kF64)).dtype() == kF64);  // only float32 is lowered
      Tensor loss = cross_entropy(y, target);
      CHECK(loss.dtype() == kF32);
      CHECK(std::abs(loss.item<double>() - loss32.item<double>()) < 2e-2);
      {
        AutocastGuard off(kBF16, false);
        CHECK(linear(x, w, b).dtype() == kF32);
      }
      CHECK(linear(x, w, b).dtype() == kBF16);
      loss.backward();  // inside the guard: the backward runs without autocast
    }
    CHECK(!autocast_state().enabled);
    CHECK(linear(x, w, b).dtype() == kF32);
    REQUIRE(w.grad().defined());
    CHECK(w.grad().dtype() == kF32);  // the master weight's gradient
    CHECK(ct::rel_error(w.grad(), g32) < 3e-2);
    // The scans take float32 from bf16 inputs.
    {
      AutocastGuard autocast(kBF16);
      Tensor u = ct::rnd({1, 6, 4}).to(kBF16), d = ct::rnd({1, 6, 4}, kF32, 0.1, 1);
      Tensor A = -ct::rnd({4, 3}, kF32, 0.5, 1), Bm = ct::rnd({1, 6, 3}), Cm = ct::rnd({1, 6, 3});
      CHECK(selective_scan(u, d, A, Bm, Cm).first.dtype() == kF32);
      Tensor wc = ct::rnd({4, 3});
      CHECK(causal_conv1d(ct::rnd({1, 6, 4}), wc).first.dtype() == kBF16);
    }
    ct::check_error([] { AutocastGuard bad(kF32); }, {"AutocastGuard", "float32"});
  }

  TEST_CASE("Mamba and Mamba-2 LMs under autocast: loss and gradients near float32, training") {
    for (bool m2 : {false, true}) {
      CAPTURE(m2);
      manual_seed(5);
      auto model = std::make_shared<nn::MambaLM>(small(m2));
      Tensor ids = randint(0, 64, {2, 33});
      auto loss_of = [&] {
        Tensor logits = model->forward(ids.narrow(1, 0, 32));
        return cross_entropy(logits.reshape({-1, 64}), ids.narrow(1, 1, 32).reshape({-1}));
      };
      model->zero_grad();
      Tensor l32 = loss_of();
      l32.backward();
      const std::vector<double> g32 = flat_grads(*model);
      model->zero_grad();
      Tensor l16;
      {
        AutocastGuard autocast(kBF16);
        l16 = loss_of();
      }
      l16.backward();
      CHECK(l16.dtype() == kF32);
      CHECK(std::abs(l16.item<double>() - l32.item<double>()) < 1e-2 * l32.item<double>());
      const std::vector<double> g16 = flat_grads(*model);
      for (double v : g16) REQUIRE(std::isfinite(v));
      CHECK(cosine(g16, g32) > 0.99);
      // A few AdamW steps under autocast lower the loss; the parameters stay float32.
      optim::AdamW opt(model->parameters(), {.lr = 1e-2});
      double first = 0, last = 0;
      for (int s = 0; s < 8; ++s) {
        opt.zero_grad();
        Tensor l;
        {
          AutocastGuard autocast(kBF16);
          l = loss_of();
        }
        l.backward();
        opt.step();
        (s == 0 ? first : last) = l.item<double>();
      }
      CHECK(last < first);
      for (const Tensor& p : model->parameters()) CHECK(p.dtype() == kF32);
    }
  }
}
