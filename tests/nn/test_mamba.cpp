// The Mamba-1 / Mamba-2 language models against an independent float64 reference, finite
// differences, and step-by-step decoding against the full forward.
#include "../test_util.h"
#include "mamba_reference.h"

#include <set>

using namespace coil;
using nn::MambaConfig;
using nn::MambaLM;

namespace {

MambaConfig tiny(bool mamba2, int64_t groups = 2, bool per_group = false);
MambaConfig ablation() {
  MambaConfig c = tiny(false);
  c.selective = false;
  return c;
}
MambaConfig tiny(bool mamba2, int64_t groups, bool per_group) {
  MambaConfig c;
  c.model_type = mamba2 ? "mamba2" : "mamba";
  c.vocab_size = 19;  // not a multiple of 8: used as given
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.state_size = 4;
  c.time_step_rank = 3;
  c.num_heads = 4;
  c.head_dim = 8;
  c.n_groups = groups;
  c.chunk_size = 4;
  c.norm_per_group = per_group;
  return c;
}

Tensor ids_for(int64_t batch, int64_t L, int64_t vocab) { return randint(0, vocab, {batch, L}); }

std::vector<int64_t> row(const Tensor& ids, int64_t b) {
  return to_vector<int64_t>(ids.select(0, b));
}

}  // namespace

TEST_SUITE("nn.mamba") {
  TEST_CASE("parameter names and shapes are Hugging Face's") {
    manual_seed(0);
    MambaLM m1(tiny(false));
    auto sd = m1.state_dict();
    std::vector<std::string> names;
    for (auto& [n, t] : sd) names.push_back(n);
    std::vector<std::string> want = {"backbone.embeddings.weight",
                                     "backbone.layers.0.norm.weight",
                                     "backbone.layers.0.mixer.in_proj.weight",
                                     "backbone.layers.0.mixer.conv1d.weight",
                                     "backbone.layers.0.mixer.conv1d.bias",
                                     "backbone.layers.0.mixer.x_proj.weight",
                                     "backbone.layers.0.mixer.dt_proj.weight",
                                     "backbone.layers.0.mixer.dt_proj.bias",
                                     "backbone.layers.0.mixer.out_proj.weight",
                                     "backbone.layers.0.mixer.A_log",
                                     "backbone.layers.0.mixer.D"};
    for (auto& w : want) CHECK(std::find(names.begin(), names.end(), w) != names.end());
    CHECK(names.size() == 1 + 2 * 10 + 2);
    CHECK(names.back() == "lm_head.weight");
    CHECK(names[names.size() - 2] == "backbone.norm_f.weight");
    auto shape = [&](const std::string& n) {
      for (auto& [k, t] : sd)
        if (k == n) return t.sizes();
      return Shape{};
    };
    CHECK(shape("backbone.layers.1.mixer.in_proj.weight") == Shape{64, 16});
    CHECK(shape("backbone.layers.1.mixer.conv1d.weight") == Shape{32, 1, 4});
    CHECK(shape("backbone.layers.1.mixer.x_proj.weight") == Shape{3 + 8, 32});
    CHECK(shape("backbone.layers.1.mixer.A_log") == Shape{32, 4});

    MambaLM m2(tiny(true));
    auto sd2 = m2.state_dict();
    auto shape2 = [&](const std::string& n) {
      for (auto& [k, t] : sd2)
        if (k == n) return t.sizes();
      return Shape{};
    };
    // in_proj: z (32), x (32), B (2*4), C (2*4), dt (4)
    CHECK(shape2("backbone.layers.0.mixer.in_proj.weight") == Shape{84, 16});
    CHECK(shape2("backbone.layers.0.mixer.conv1d.weight") == Shape{48, 1, 4});
    CHECK(shape2("backbone.layers.0.mixer.dt_bias") == Shape{4});
    CHECK(shape2("backbone.layers.0.mixer.A_log") == Shape{4});
    CHECK(shape2("backbone.layers.0.mixer.D") == Shape{4});
    CHECK(shape2("backbone.layers.0.mixer.norm.weight") == Shape{32});
  }

  TEST_CASE("the mamba-130m configs have the published parameter counts") {
    MambaConfig c = MambaConfig::mamba_130m();
    CHECK(c.vocab_size == 50280);
    MambaLM m(c);
    CHECK(m.num_parameters() == 129135360);
    // Tied: one tensor under two names.
    CHECK(m.lm_head->weight.is_same(m.backbone->embeddings->weight));
    CHECK(m.named_parameters().size() + 1 == m.state_dict().size());
  }

  TEST_CASE("initialisation follows mamba_ssm") {
    manual_seed(1);
    MambaConfig c = tiny(false);
    c.hidden_size = 64;
    c.num_hidden_layers = 4;
    MambaLM m(c);
    auto& mix = static_cast<nn::Mamba&>(*m.backbone->layers->at<nn::MambaBlock>(0)->mixer);
    // A_log = log(1..N) per channel, D = 1.
    auto alog = ct::vals(mix.A_log);
    for (int64_t ch = 0; ch < 128; ++ch)
      for (int64_t n = 0; n < 4; ++n) CHECK(alog[ch * 4 + n] == doctest::Approx(std::log(n + 1.0)));
    for (double d : ct::vals(mix.D)) CHECK(d == 1.0);
    // softplus(dt bias) lies in [1e-3, 0.1].
    for (double b : ct::vals(mix.dt_proj->bias)) {
      double dt = std::log1p(std::exp(b));
      CHECK(dt >= 1e-3 * (1 - 1e-6));
      CHECK(dt <= 0.1 * (1 + 1e-6));
    }
    // dt_proj.weight ~ U(-R^-0.5, R^-0.5); out_proj ~ U(-1/sqrt(E), 1/sqrt(E)) / sqrt(n_layer).
    double rb = 1 / std::sqrt(3.0);
    for (double v : ct::vals(mix.dt_proj->weight)) CHECK(std::fabs(v) <= rb);
    double ob = 1 / std::sqrt(128.0) / 2.0, omax = 0;
    for (double v : ct::vals(mix.out_proj->weight)) omax = std::max(omax, std::fabs(v));
    CHECK(omax <= ob);
    CHECK(omax > 0.9 * ob);
    // Embedding N(0, 0.02).
    auto e = ct::vals(m.backbone->embeddings->weight);
    double ss = 0;
    for (double v : e) ss += v * v;
    CHECK(std::sqrt(ss / e.size()) == doctest::Approx(0.02).epsilon(0.1));

    MambaConfig c2 = tiny(true);
    MambaLM m2(c2);
    auto& mix2 = static_cast<nn::Mamba2&>(*m2.backbone->layers->at<nn::MambaBlock>(0)->mixer);
    for (double a : ct::vals(mix2.A_log)) {
      CHECK(a >= 0.0);
      CHECK(a <= std::log(16.0));
    }
  }

  TEST_CASE("logits equal the float64 reference for both mixers") {
    for (bool mamba2 : {false, true})
      for (bool per_group : {false, true}) {
        if (!mamba2 && per_group) continue;
        CAPTURE(mamba2);
        CAPTURE(per_group);
        manual_seed(2);
        MambaLM m(tiny(mamba2, 2, per_group));
        m.to(kF64);
        ct::RefModel ref(m);
        Tensor ids = ids_for(2, 11, 19);
        Tensor logits = m.forward(ids);
        CHECK(logits.dtype() == kF64);
        CHECK(logits.sizes() == Shape{2, 11, 19});
        for (int64_t b = 0; b < 2; ++b)
          ct::check_close(logits.select(0, b), ref.logits(row(ids, b)), 1e-9, 1e-11, "logits");
        // And in f32 against the same reference.
        m.to(kF32);
        Tensor l32 = m.forward(ids);
        CHECK(l32.dtype() == kF32);
        ct::check_close(l32.select(0, 1), ref.logits(row(ids, 1)), 1e-4, 1e-5, "f32 logits");
      }
  }

  TEST_CASE("parameter gradients match finite differences in float64") {
    for (bool mamba2 : {false, true}) {
      CAPTURE(mamba2);
      manual_seed(3);
      MambaConfig c = tiny(mamba2);
      c.num_hidden_layers = 1;
      c.tie_word_embeddings = !mamba2;
      MambaLM m(c);
      m.to(kF64);
      Tensor ids = ids_for(2, 7, 19), target = ids_for(2, 7, 19);
      auto loss_of = [&] {
        return cross_entropy(m.forward(ids).view({14, 19}), target.view({14}));
      };
      m.zero_grad();
      loss_of().backward();
      for (auto& [name, p] : m.named_parameters()) {
        CAPTURE(name);
        REQUIRE(p.grad().defined());
        auto g = ct::vals(p.grad());
        Tensor flat = p.detach().view({-1});
        for (int64_t k = 0; k < 3; ++k) {
          int64_t i = (k * 7919 + 3) % p.numel();
          double v = flat[i].item<double>(), h = 1e-6;
          flat[i].fill_(v + h);
          double lp = loss_of().item<double>();
          flat[i].fill_(v - h);
          double lm = loss_of().item<double>();
          flat[i].fill_(v);
          double fd = (lp - lm) / (2 * h);
          CHECK(g[i] == doctest::Approx(fd).epsilon(1e-5).scale(1e-3));
        }
      }
    }
  }

  TEST_CASE("step-by-step decoding gives the full forward's logits") {
    for (bool mamba2 : {false, true}) {
      CAPTURE(mamba2);
      manual_seed(4);
      MambaLM m(tiny(mamba2));
      NoGradGuard no_grad;
      Tensor ids = ids_for(2, 13, 19);
      Tensor full = m.forward(ids);
      // Prefill 5 tokens, then one token at a time.
      nn::MambaCache cache;
      Tensor pre = m.forward(ids.narrow(1, 0, 5), &cache);
      CHECK(cache.position == 5);
      double worst = (pre - full.narrow(1, 0, 5)).abs().max().item<double>();
      for (int64_t t = 5; t < 13; ++t) {
        Tensor step = m.forward(ids.narrow(1, t, 1), &cache);
        worst = std::max(worst, (step - full.narrow(1, t, 1)).abs().max().item<double>());
      }
      CHECK(worst < 1e-4);
      // Decoding from an empty cache, one token at a time from the start.
      nn::MambaCache c2;
      for (int64_t t = 0; t < 13; ++t) {
        Tensor step = m.forward(ids.narrow(1, t, 1), &c2);
        worst = std::max(worst, (step - full.narrow(1, t, 1)).abs().max().item<double>());
      }
      CHECK(worst < 1e-4);
    }
  }

  TEST_CASE("a decoding step reuses memory: no new system allocations after the first steps") {
    for (bool mamba2 : {false, true}) {
      CAPTURE(mamba2);
      manual_seed(5);
      MambaLM m(tiny(mamba2));
      NoGradGuard no_grad;
      nn::MambaCache cache;
      Tensor tok = ids_for(1, 1, 19);
      m.forward(ids_for(1, 6, 19), &cache);
      for (int i = 0; i < 3; ++i) tok = m.forward(tok, &cache).argmax(-1);
      int64_t before = memory_stats().num_system_allocs;
      int64_t in_use = memory_stats().bytes_in_use;
      for (int i = 0; i < 50; ++i) tok = m.forward(tok, &cache).argmax(-1);
#ifndef COIL_NO_CACHING_ALLOCATOR  // sanitizer builds send every block to the system allocator
      CHECK(memory_stats().num_system_allocs == before);
#else
      (void)before;
#endif
      CHECK(memory_stats().bytes_in_use == in_use);
    }
  }

  TEST_CASE("generate: greedy continues the argmax chain; sampling options behave") {
    manual_seed(6);
    MambaLM m(tiny(false));
    Tensor prompt = ids_for(1, 4, 19);
    nn::SamplingOptions greedy;
    greedy.greedy = true;
    Tensor out = m.generate(prompt, 6, greedy);
    CHECK(out.sizes() == Shape{1, 10});
    CHECK(to_vector<int64_t>(out.narrow(1, 0, 4)) == to_vector<int64_t>(prompt));
    // Each generated token is the argmax of the full forward over what came before.
    NoGradGuard no_grad;
    for (int64_t t = 4; t < 10; ++t) {
      Tensor logits = m.forward(out.narrow(1, 0, t));
      CHECK(logits.select(1, t - 1).argmax(-1).item<int64_t>() == out[0][t].item<int64_t>());
    }
    // top_k = 1 and a tiny top_p are greedy too.
    nn::SamplingOptions k1;
    k1.top_k = 1;
    CHECK(to_vector<int64_t>(m.generate(prompt, 6, k1)) == to_vector<int64_t>(out));
    nn::SamplingOptions p0;
    p0.top_p = 1e-9;
    CHECK(to_vector<int64_t>(m.generate(prompt, 6, p0)) == to_vector<int64_t>(out));
    // Sampling frequencies follow softmax(logits / T) restricted to the top k.
    Tensor logits = tensor(std::vector<float>{2.0f, 1.0f, 0.5f, -1.0f, 3.0f}, {1, 5});
    nn::SamplingOptions s;
    s.temperature = 2.0;
    s.top_k = 3;
    std::vector<int> count(5, 0);
    const int n = 20000;
    for (int i = 0; i < n; ++i) count[nn::MambaLM::sample(logits, s).item<int64_t>()]++;
    double z = std::exp(1.0) + std::exp(0.5) + std::exp(1.5);
    CHECK(count[2] == 0);
    CHECK(count[3] == 0);
    CHECK(count[4] / double(n) == doctest::Approx(std::exp(1.5) / z).epsilon(0.05));
    CHECK(count[0] / double(n) == doctest::Approx(std::exp(1.0) / z).epsilon(0.05));
    // top_p 0.6 over probabilities (0.5, 0.3, 0.2) keeps the first two.
    Tensor l3 = tensor(std::vector<double>{std::log(0.3), std::log(0.5), std::log(0.2)}, {1, 3});
    nn::SamplingOptions tp;
    tp.top_p = 0.6;
    std::vector<int> c3(3, 0);
    for (int i = 0; i < n; ++i) c3[nn::MambaLM::sample(l3, tp).item<int64_t>()]++;
    CHECK(c3[2] == 0);
    CHECK(c3[1] / double(n) == doctest::Approx(0.5 / 0.8).epsilon(0.05));
  }

  TEST_CASE("weight decay groups leave out biases, norms, A_log, D and dt_bias") {
    for (bool mamba2 : {false, true}) {
      MambaLM m(tiny(mamba2));
      auto g = m.weight_decay_groups();
      std::set<const TensorImpl*> no;
      for (auto& t : g.no_decay) no.insert(t.impl_ptr().get());
      for (auto& [name, p] : m.named_parameters()) {
        CAPTURE(name);
        bool expect_no = name.find("bias") != std::string::npos ||
                         name.find("norm") != std::string::npos ||
                         name.find("A_log") != std::string::npos || name.ends_with(".D");
        CHECK(no.count(p.impl_ptr().get()) == (expect_no ? 1u : 0u));
      }
      CHECK(g.decay.size() + g.no_decay.size() == m.parameters().size());
    }
  }

  TEST_CASE("bad configs and inputs raise clear errors") {
    MambaConfig c = tiny(true);
    c.num_heads = 5;
    ct::check_error([&] { MambaLM m(c); }, {"num_heads", "5", "head_dim"});
    c = tiny(true);
    c.n_groups = 3;
    ct::check_error([&] { MambaLM m(c); }, {"n_groups", "3"});
    c = tiny(false);
    c.model_type = "gpt";
    ct::check_error([&] { MambaLM m(c); }, {"model_type", "gpt"});
    MambaLM m(tiny(false));
    ct::check_error([&] { m.forward(rand({2, 3})); }, {"ids", "integer"});
    ct::check_error([&] { m.generate(ids_for(1, 2, 19), -1); }, {"max_new_tokens", "-1"});
    nn::SamplingOptions s;
    s.temperature = 0;
    ct::check_error([&] { nn::MambaLM::sample(rand({1, 4}), s); }, {"temperature"});
  }
}

TEST_SUITE("nn.mamba") {
  TEST_CASE("the non-selective ablation: reference, gradients, decoding, names") {
    manual_seed(12);
    MambaLM m(ablation());
    std::vector<std::string> names;
    for (auto& [n, t] : m.named_parameters()) names.push_back(n);
    auto has = [&](const std::string& n) {
      return std::find(names.begin(), names.end(), n) != names.end();
    };
    CHECK(has("backbone.layers.0.mixer.dt_bias"));
    CHECK(has("backbone.layers.0.mixer.B"));
    CHECK(has("backbone.layers.0.mixer.C"));
    CHECK(!has("backbone.layers.0.mixer.x_proj.weight"));
    CHECK(!has("backbone.layers.0.mixer.dt_proj.weight"));
    m.to(kF64);
    ct::RefModel ref(m);
    Tensor ids = ids_for(2, 9, 19);
    Tensor logits = m.forward(ids);
    for (int64_t b = 0; b < 2; ++b)
      ct::check_close(logits.select(0, b), ref.logits(row(ids, b)), 1e-9, 1e-11, "logits");
    // Finite differences on the ablation's own parameters.
    Tensor target = ids_for(2, 9, 19);
    auto loss_of = [&] { return cross_entropy(m.forward(ids).view({18, 19}), target.view({18})); };
    m.zero_grad();
    loss_of().backward();
    auto& mix = static_cast<nn::Mamba&>(*m.backbone->layers->at<nn::MambaBlock>(1)->mixer);
    for (Tensor* p : {&mix.dt_bias, &mix.B, &mix.C}) {
      auto g = ct::vals(p->grad());
      Tensor flat = p->detach().view({-1});
      for (int64_t i : {int64_t(0), p->numel() / 2, p->numel() - 1}) {
        double v = flat[i].item<double>(), h = 1e-6;
        flat[i].fill_(v + h);
        double lp = loss_of().item<double>();
        flat[i].fill_(v - h);
        double lm = loss_of().item<double>();
        flat[i].fill_(v);
        CHECK(g[i] == doctest::Approx((lp - lm) / (2 * h)).epsilon(1e-5).scale(1e-3));
      }
    }
    // Cached decoding.
    NoGradGuard ng;
    nn::MambaCache cache;
    double worst = 0;
    for (int64_t t = 0; t < 9; ++t)
      worst = std::max(worst, (m.forward(ids.narrow(1, t, 1), &cache) - logits.narrow(1, t, 1))
                                  .abs()
                                  .max()
                                  .item<double>());
    CHECK(worst < 1e-9);
    // The config round-trips the switch; Mamba-2 has no ablation.
    CHECK(!MambaConfig::from_json(m.config().to_json()).selective);
    MambaConfig bad = tiny(true);
    bad.selective = false;
    ct::check_error([&] { MambaLM x(bad); }, {"selective", "mamba2"});
  }
}
