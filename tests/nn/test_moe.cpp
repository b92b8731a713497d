// The MoE layer against a dense reference (a loop over tokens and their k experts, in float64),
// forward and gradients; capacity dropping on a hand-made case; the router's options; grouped_mm
// against a loop.
#include <set>

#include "../test_util.h"

using namespace coil;

namespace {

// y_t = sum_j w_tj * expert_{e_tj}(x_t) (+ shared), every token on its own, from the routing
// the layer's router picks (recomputed here with plain ops) and each expert's weights sliced.
Tensor dense_reference(const nn::MoE& m, const Tensor& x) {
  const int64_t D = x.size(-1), E = m.options.router.num_experts, k = m.options.router.top_k;
  Tensor xf = x.reshape({-1, D});
  const int64_t T = xf.size(0);
  Tensor logits = linear(xf, m.router->layer->weight);
  Tensor probs = m.options.router.sigmoid ? sigmoid(logits) : softmax(logits, -1);
  const std::vector<int64_t> ids = to_vector<int64_t>(topk(probs.detach(), k, -1).second);
  const int64_t F = m.experts->input_linear.size(1) / 2;
  TensorList rows;
  for (int64_t t = 0; t < T; ++t) {
    Tensor xt = xf.select(0, t);
    TensorList ws;
    for (int64_t j = 0; j < k; ++j) ws.push_back(probs.select(0, t).select(0, ids[t * k + j]));
    Tensor wsum = stack(ws).sum();
    Tensor acc = zeros({D}, Options(x.dtype()));
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = ids[t * k + j];
      COIL_CHECK(e >= 0 && e < E, "bad expert");
      Tensor win = m.experts->input_linear.select(0, e),
             wout = m.experts->output_linear.select(0, e);
      Tensor h = matmul(win, xt);
      Tensor a = silu(h.narrow(0, 0, F)) * h.narrow(0, F, F);
      Tensor w = ws[j];
      if (m.options.router.sigmoid || m.options.router.normalize_topk) w = w / wsum;
      acc = acc + matmul(wout, a) * w;
    }
    if (m.shared_mlp) acc = acc + m.shared_mlp->forward(xt.unsqueeze(0)).squeeze(0);
    rows.push_back(acc);
  }
  return stack(rows).reshape(x.sizes());
}

}  // namespace

TEST_SUITE("nn.moe") {
  TEST_CASE("grouped_mm equals a loop over groups, empty groups and strided weights included") {
    manual_seed(1);
    Tensor x = randn({9, 4}, kF64), w = randn({4, 3, 4}, kF64);  // (E, m, k): used transposed
    const std::vector<int64_t> off = {0, 3, 3, 8, 9};
    Tensor y = grouped_mm(x, w.transpose(1, 2), tensor(off, {5}));
    std::vector<double> want(9 * 3, 0.0);
    const std::vector<double> xv = ct::vals(x), wv = ct::vals(w);
    for (int64_t e = 0; e < 4; ++e)
      for (int64_t r = off[e]; r < off[e + 1]; ++r)
        for (int64_t j = 0; j < 3; ++j)
          for (int64_t i = 0; i < 4; ++i)
            want[r * 3 + j] += xv[r * 4 + i] * wv[(e * 3 + j) * 4 + i];
    ct::check_close(y, want, 1e-12, 1e-12);
    ct::check_error(
        [&] {
          grouped_mm(x, w.transpose(1, 2), tensor(std::vector<int64_t>{0, 3, 2, 8, 9}, {5}));
        },
        {"grouped_mm: offsets must not decrease"});
    ct::check_error(
        [&] {
          grouped_mm(x, w.transpose(1, 2), tensor(std::vector<int64_t>{0, 9}, {2}));
        },
        {"grouped_mm: offsets must be a CPU int64 tensor of 5 values"});
  }

  TEST_CASE(
      "MoE equals the per-token reference, forward and gradients (softmax, sigmoid, shared)") {
    struct Case {
      const char* name;
      bool sigmoid, normalize;
      int64_t shared;
    };
    for (const Case& c :
         {Case{"softmax", false, false, 0}, Case{"softmax normalized", false, true, 0},
          Case{"sigmoid + shared", true, false, 6}}) {
      CAPTURE(c.name);
      manual_seed(3);
      nn::MoEOptions o;
      o.router.num_experts = 4;
      o.router.top_k = 2;
      o.router.sigmoid = c.sigmoid;
      o.router.normalize_topk = c.normalize;
      o.ffn_hidden = 5;
      o.shared_ffn_hidden = c.shared;
      nn::MoE m(6, o, kF64);
      {
        NoGradGuard g;  // larger router weights: clear top-k margins
        m.router->layer->weight.copy_(randn({4, 6}, kF64));
        m.experts->input_linear.copy_(randn({4, 10, 6}, kF64) * 0.5);
        m.experts->output_linear.copy_(randn({4, 6, 5}, kF64) * 0.5);
      }
      const Tensor x0 = randn({2, 7, 6}, kF64), w = randn({2, 7, 6}, kF64);
      Tensor x = x0.clone().requires_grad_(true);
      Tensor y = m.forward(x);
      (y * w).sum().backward();
      std::vector<Tensor> grads;
      for (const Tensor& p : m.parameters()) grads.push_back(p.grad().clone());
      const Tensor gx = x.grad().clone();
      m.zero_grad();
      Tensor xr = x0.clone().requires_grad_(true);
      Tensor yr = dense_reference(m, xr);
      (yr * w).sum().backward();
      CHECK(ct::rel_error(y, yr) < 1e-12);
      CHECK(ct::rel_error(gx, xr.grad()) < 1e-12);
      const auto params = m.named_parameters();
      for (size_t i = 0; i < params.size(); ++i) {
        CAPTURE(params[i].first);
        CHECK(ct::rel_error(grads[i], params[i].second.grad()) < 1e-12);
      }
      CHECK(m.router->tokens_per_expert().sum().item<int64_t>() == 14 * 2);
      CHECK(m.dropped_tokens() == 0);
    }
  }

  TEST_CASE("MoE gradcheck (float64 finite differences)") {
    manual_seed(4);
    nn::MoEOptions o;
    o.router.num_experts = 3;
    o.router.top_k = 2;
    o.ffn_hidden = 3;
    nn::MoE m(4, o, kF64);
    {
      NoGradGuard g;
      m.router->layer->weight.copy_(randn({3, 4}, kF64) * 2);
    }
    Tensor x = randn({5, 4}, kF64).requires_grad_(true);
    ct::check_gradcheck([&](const TensorList& v) { return m.forward(v[0]); }, {x});
  }

  TEST_CASE("capacity: each expert keeps its first tokens, the rest are dropped and counted") {
    nn::MoEOptions o;
    o.router.num_experts = 2;
    o.router.top_k = 1;
    o.ffn_hidden = 2;
    o.capacity_factor = 1.0;  // C = ceil(4 * 1 / 2 * 1.0) = 2
    nn::MoE m(2, o, kF64);
    {
      NoGradGuard g;
      m.router->layer->weight.copy_(tensor(std::vector<double>{10, 0, 0, 10}, {2, 2}, kF64));
    }
    // tokens 0, 1, 2 pick expert 0, token 3 expert 1: token 2 is past expert 0's capacity
    Tensor x = tensor(std::vector<double>{1, 0, 2, 0, 3, 0, 0, 1}, {4, 2}, kF64);
    Tensor y = m.forward(x);
    CHECK(m.dropped_tokens() == 1);
    CHECK(y.select(0, 2).abs().sum().item<double>() == 0);
    for (int64_t t : {0, 1, 3}) CHECK(y.select(0, t).abs().sum().item<double>() > 0);
    nn::MoEOptions dropless = o;
    dropless.capacity_factor = 0;
    nn::MoE d(2, dropless, kF64);
    d.load_state_dict(m.state_dict());
    Tensor yd = d.forward(x);
    CHECK(d.dropped_tokens() == 0);
    CHECK(ct::rel_error(yd.narrow(0, 0, 2), y.narrow(0, 0, 2)) < 1e-15);
    CHECK(yd.select(0, 2).abs().sum().item<double>() > 0);
  }

  TEST_CASE("router: group-limited routing, balancing losses, loss-free bias") {
    manual_seed(6);
    nn::RouterOptions o;
    o.num_experts = 8;
    o.top_k = 2;
    o.num_groups = 4;
    o.topk_groups = 1;  // both experts from the one best group
    o.aux_loss_coef = 0.01;
    o.z_loss_coef = 0.001;
    o.bias_update_rate = 0.1;
    nn::TopKRouter r(5, o, kF64);
    Tensor x = randn({30, 5}, kF64);
    auto out = r.forward(x);
    const std::vector<int64_t> ids = to_vector<int64_t>(out.experts);
    Tensor logits = linear(x, r.layer->weight);
    Tensor probs = softmax(logits, -1);
    const std::vector<double> pv = ct::vals(probs);
    for (int64_t t = 0; t < 30; ++t) {
      CHECK(ids[t * 2] / 2 == ids[t * 2 + 1] / 2);  // one group
      // that group holds the token's best expert
      int64_t best = 0;
      for (int64_t e = 1; e < 8; ++e)
        if (pv[t * 8 + e] > pv[t * 8 + best]) best = e;
      CHECK(ids[t * 2] / 2 == best / 2);
    }
    // aux = alpha * E * sum_i f_i P_i + z * mean(logsumexp^2)
    std::vector<double> f(8, 0.0), P(8, 0.0);
    for (int64_t e : ids) f[e] += 1.0 / 60;
    for (int64_t t = 0; t < 30; ++t)
      for (int64_t e = 0; e < 8; ++e) P[e] += pv[t * 8 + e] / 30;
    double want = 0;
    for (int64_t e = 0; e < 8; ++e) want += 0.01 * 8 * f[e] * P[e];
    want += 0.001 * logsumexp(logits, {1}).square().mean().item<double>();
    CHECK(std::abs(out.aux_loss.item<double>() - want) < 1e-12);
    {  // Hugging Face's normalisation: the Switch term k times larger
      nn::RouterOptions hf = o;
      hf.aux_loss_per_token = true;
      hf.z_loss_coef = 0;
      nn::TopKRouter rh(5, hf, kF64);
      rh.load_state_dict(r.state_dict());
      double switch_term = 0;
      for (int64_t e = 0; e < 8; ++e) switch_term += 0.01 * 8 * f[e] * P[e];
      CHECK(std::abs(rh.forward(x).aux_loss.item<double>() - 2 * switch_term) < 1e-12);
    }
    // loss-free balancing: over-used experts' bias goes down by the rate, under-used up
    const std::vector<int64_t> counts = to_vector<int64_t>(r.tokens_per_expert());
    r.update_bias();
    const std::vector<double> b = ct::vals(r.expert_bias);
    for (int64_t e = 0; e < 8; ++e) {
      CAPTURE(e);
      const double expect = counts[e] > 7.5 ? -0.1 : (counts[e] < 7.5 ? 0.1 : 0.0);
      CHECK(std::abs(b[e] - expect) < 1e-7);
    }
    ct::check_error(
        [] {
          nn::TopKRouter(4, nn::RouterOptions{4, 5});
        },
        {"TopKRouter: need 0 < top_k <= num_experts"});
  }
}

TEST_SUITE("nn.moe") {
  TEST_CASE("hybrid Mamba-2 + MoE LM: GraniteMoeHybrid names, trains, rejects attention") {
    nn::HybridConfig c = ct::tiny_hybrid();
    c.embedding_multiplier = 2.0;
    c.residual_multiplier = 0.5;
    c.logits_scaling = 4.0;
    manual_seed(2);
    nn::HybridLM lm(c);
    std::set<std::string> names;
    for (auto& [n, t] : lm.state_dict()) names.insert(n);
    for (const char* n :
         {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
          "model.layers.0.mamba.in_proj.weight", "model.layers.0.mamba.conv1d.weight",
          "model.layers.0.mamba.dt_bias", "model.layers.0.mamba.A_log", "model.layers.0.mamba.D",
          "model.layers.0.mamba.norm.weight", "model.layers.0.mamba.out_proj.weight",
          "model.layers.0.post_attention_layernorm.weight",
          "model.layers.0.block_sparse_moe.router.layer.weight",
          "model.layers.0.block_sparse_moe.input_linear.weight",
          "model.layers.0.block_sparse_moe.output_linear.weight",
          "model.layers.1.shared_mlp.input_linear.weight",
          "model.layers.1.shared_mlp.output_linear.weight", "model.norm.weight", "lm_head.weight"})
      CHECK_MESSAGE(names.count(n), "missing " << n);
    // a few steps on a fixed batch lower the loss
    optim::AdamWOptions ao;
    ao.lr = 1e-2;
    optim::AdamW opt(lm.parameters(), ao);
    Tensor ids = randint(0, 64, {4, 17});
    double first = 0, last = 0;
    for (int s = 0; s < 15; ++s) {
      Tensor logits = lm.forward(ids.narrow(1, 0, 16));
      Tensor loss = cross_entropy(logits.reshape({64, 64}), ids.narrow(1, 1, 16).reshape({64}));
      opt.zero_grad();
      loss.backward();
      opt.step();
      (s == 0 ? first : last) = loss.item<double>();
    }
    CHECK(last < first - 0.3);
    nn::HybridConfig bad = c;
    bad.layer_types = {"mamba", "attention"};
    ct::check_error([&] { nn::HybridLM m(bad); },
                    {"HybridConfig: layer 1 is 'attention': coil builds mamba layers only"});
  }
}

TEST_SUITE("nn.moe") {
  TEST_CASE("hybrid LM: save_pretrained / from_pretrained round trip, config.json fields") {
    nn::HybridConfig c = ct::tiny_hybrid();
    c.vocab_size = 32;
    c.shared_intermediate_size = 0;
    c.embedding_multiplier = 12.0;
    c.logits_scaling = 6.0;
    manual_seed(8);
    nn::HybridLM lm(c);
    ct::TempDir dir;
    lm.save_pretrained(dir.path.string());
    auto back = nn::HybridLM::from_pretrained(dir.path.string());
    CHECK(back->config().embedding_multiplier == 12.0);
    CHECK(back->config().layer_types == std::vector<std::string>{"mamba", "mamba"});
    Tensor ids = randint(0, 32, {2, 9});
    CHECK((lm.forward(ids) - back->forward(ids)).abs().max().item<double>() == 0);
    // transformers' "auto" head size, and a config with an attention layer
    nn::HybridConfig a = nn::HybridConfig::from_json(
        R"({"model_type": "granitemoehybrid", "hidden_size": 16, "mamba_n_heads": 4,
            "mamba_d_head": "auto", "mamba_expand": 2, "num_hidden_layers": 1})");
    CHECK(a.mamba_d_head == 8);
    ct::check_error(
        [] {
          nn::HybridConfig::from_json(
              R"({"model_type": "granitemoehybrid", "num_hidden_layers": 2,
                  "layer_types": ["mamba", "attention"]})");
        },
        {"HybridConfig: layer 1 is 'attention'"});
    ct::check_error([] { nn::HybridConfig::from_json(R"({"model_type": "mamba2"})"); },
                    {"has model_type 'mamba2', expected 'granitemoehybrid'"});
  }
}
