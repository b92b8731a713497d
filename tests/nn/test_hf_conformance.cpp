// Agreement with Hugging Face transformers: small random Mamba / Mamba-2 / GraniteMoeHybrid models
// that transformers built and saved (tests/fixtures/<name>/, made by
// tests/fixtures/make_fixtures.py with the versions in tests/fixtures/VERSIONS.txt) load with
// MambaLM (HybridLM)::from_pretrained and give transformers' logits, loss, parameter gradients,
// cached decoding logits and greedy tokens (the hybrid: no decoding).
#include <filesystem>
#include <fstream>
#include <sstream>

#include "../test_util.h"

using namespace coil;
using nn::MambaLM;

namespace {

namespace fs = std::filesystem;

// f32 tolerances for values (logits, loss, hidden states, decoding logits).
constexpr double kRtol = 1e-4, kAtol = 1e-5;
// Gradients: max |g - g_ref| <= kGradRtol * max |g_ref| + kGradTiny, per tensor.
constexpr double kGradRtol = 1e-3, kGradTiny = 1e-9;
// Greedy tokens must agree where the reference's top-2 logit margin exceeds this.
constexpr double kMargin = 1e-3;

const char* const kFixtures[] = {"mamba1_tied",   "mamba1_untied", "mamba2_n16_g1",
                                 "mamba2_n64_g1", "mamba2_n16_g2", "mamba2_n64_g2_untied"};

// GraniteMoeHybrid (mamba layers only), loaded with nn::HybridLM; no generation entries.
const char* const kHybridFixtures[] = {"granite_moe_g2", "granite_dense_untied"};

std::string fixture_dir(const std::string& name) {
  return (fs::path(COIL_TEST_SOURCE_DIR) / "fixtures" / name).string();
}

io::SafetensorsFile expected(const std::string& name) {
  return io::load_safetensors((fs::path(fixture_dir(name)) / "expected.safetensors").string());
}

// Elementwise |got - ref| <= atol + rtol |ref|. Returns the largest absolute error; fails a check
// naming the worst element when the bound is broken.
double check_values(const Tensor& got, const Tensor& ref, double rtol, double atol,
                    const std::string& what) {
  REQUIRE_MESSAGE(got.numel() == ref.numel(),
                  what << ": " << got.shape_str() << " vs reference " << ref.shape_str());
  std::vector<double> g = ct::vals(got), r = ct::vals(ref);
  double max_abs = 0, worst_ratio = 0;
  size_t worst = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double d = std::fabs(g[i] - r[i]);
    max_abs = std::max(max_abs, d);
    const double ratio = d / (atol + rtol * std::fabs(r[i]));
    if (!(ratio <= worst_ratio)) {  // also catches NaN
      worst_ratio = ratio;
      worst = i;
    }
  }
  CHECK_MESSAGE(worst_ratio <= 1.0, what << ": element " << worst << " got " << g[worst]
                                         << " expected " << r[worst] << " (max abs error "
                                         << max_abs << ")");
  return max_abs;
}

// Per tensor: max |got - ref| against the largest |ref|. Returns the relative error.
double check_grad(const Tensor& got, const Tensor& ref, const std::string& what) {
  REQUIRE_MESSAGE(got.sizes() == ref.sizes(),
                  what << ": " << got.shape_str() << " vs reference " << ref.shape_str());
  std::vector<double> g = ct::vals(got), r = ct::vals(ref);
  double max_abs = 0, ref_max = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double d = std::fabs(g[i] - r[i]);
    max_abs = std::isnan(d) ? INFINITY : std::max(max_abs, d);
    ref_max = std::max(ref_max, std::fabs(r[i]));
  }
  CHECK_MESSAGE(max_abs <= kGradRtol * ref_max + kGradTiny,
                what << ": max |g - g_ref| " << max_abs << ", max |g_ref| " << ref_max);
  return ref_max > 0 ? max_abs / ref_max : max_abs;
}

// The difference between the largest and the second largest of a row.
double top2_margin(const std::vector<double>& row) {
  double a = -INFINITY, b = -INFINITY;
  for (double v : row) {
    if (v > a) {
      b = a;
      a = v;
    } else if (v > b) {
      b = v;
    }
  }
  return a - b;
}

Tensor next_token_loss(const Tensor& logits, const Tensor& ids) {
  const int64_t L = ids.size(1), V = logits.size(-1);
  return cross_entropy(logits.narrow(1, 0, L - 1).reshape({-1, V}),
                       ids.narrow(1, 1, L - 1).reshape({-1}));
}

// The gradient of every parameter of m against expected's grad.<name>, and the same count of
// them (a tied head is one parameter in both).
void check_gradients(const nn::Module& m, const io::SafetensorsFile& e, const std::string& name) {
  auto params = m.named_parameters();
  size_t ref_count = 0;
  for (const auto& n : e.names()) ref_count += n.rfind("grad.", 0) == 0;
  CHECK(params.size() == ref_count);
  double worst = 0;
  std::string worst_name;
  for (auto& [pname, p] : params) {
    CAPTURE(pname);
    const Tensor* ref = e.find("grad." + pname);
    REQUIRE_MESSAGE(ref != nullptr, "no reference gradient for " << pname);
    REQUIRE(p.grad().defined());
    const double rel = check_grad(p.grad(), *ref, pname);
    if (rel >= worst) {
      worst = rel;
      worst_name = pname;
    }
  }
  MESSAGE(name << ": worst gradient max|g - g_ref| / max|g_ref| " << worst << " (" << worst_name
               << ")");
}

// Logits and the next-token loss against the reference; hidden_err is the blocks' worst error.
void check_logits(const Tensor& logits, const io::SafetensorsFile& e, const std::string& name,
                  double hidden_err) {
  const Tensor& ids = e.at("input_ids");
  CHECK(logits.sizes() == e.at("logits").sizes());
  const double logit_err = check_values(logits, e.at("logits"), kRtol, kAtol, "logits");
  const double loss = next_token_loss(logits, ids).item<double>();
  const double ref_loss = e.at("loss").reshape({-1})[0].item<double>();
  CHECK(std::fabs(loss - ref_loss) <= kAtol + kRtol * std::fabs(ref_loss));
  MESSAGE(name << ": max |logits - ref| " << logit_err << ", max |hidden - ref| " << hidden_err
               << ", |loss - ref| " << std::fabs(loss - ref_loss) << " (loss " << ref_loss << ")");
}

std::string meta(const io::SafetensorsFile& f, const std::string& key) {
  for (auto& [k, v] : f.metadata)
    if (k == key) return v;
  return "";
}

}  // namespace

TEST_SUITE("nn.hf") {
  TEST_CASE("fixtures are there, made by the versions of VERSIONS.txt") {
    std::ifstream in(fs::path(COIL_TEST_SOURCE_DIR) / "fixtures" / "VERSIONS.txt");
    REQUIRE_MESSAGE(in.good(), "tests/fixtures/VERSIONS.txt is missing");
    std::string transformers_version, line;
    while (std::getline(in, line)) {
      std::istringstream s(line);
      std::string key, value;
      if (s >> key >> value && key == "transformers") transformers_version = value;
    }
    CHECK(!transformers_version.empty());
    for (const std::string name : kFixtures) {
      CAPTURE(name);
      io::SafetensorsFile e = expected(name);
      CHECK(meta(e, "transformers") == transformers_version);
      CHECK(meta(e, "fixture") == name);
      for (const char* key : {"input_ids", "logits", "loss", "gen.prompt", "gen.tokens",
                              "gen.logits", "hidden.final"})
        CHECK_MESSAGE(e.contains(key), "expected.safetensors lacks " << key);
    }
    for (const std::string name : kHybridFixtures) {
      CAPTURE(name);
      io::SafetensorsFile e = expected(name);
      CHECK(meta(e, "transformers") == transformers_version);
      CHECK(meta(e, "fixture") == name);
      for (const char* key : {"input_ids", "logits", "loss", "hidden.0", "hidden.final"})
        CHECK_MESSAGE(e.contains(key), "expected.safetensors lacks " << key);
    }
  }

  TEST_CASE("config.json as transformers writes it") {
    // Mamba2: Infinity written as {"__float__": "Infinity"}; no norm_per_group field, and
    // transformers' gated norm normalises per group.
    nn::MambaConfig c = nn::MambaConfig::load(fixture_dir("mamba2_n16_g2") + "/config.json");
    CHECK(c.is_mamba2());
    CHECK(c.n_groups == 2);
    CHECK(c.chunk_size == 8);
    CHECK(c.vocab_size == 61);
    CHECK(c.time_step_limit_min == 0.0);
    CHECK(std::isinf(c.time_step_limit_max));
    CHECK(c.norm_per_group);
    CHECK(c.tie_word_embeddings);
    CHECK(!nn::MambaConfig::load(fixture_dir("mamba2_n64_g2_untied") + "/config.json")
               .tie_word_embeddings);
    // coil's own config.json states the grouping, and that wins.
    c.norm_per_group = false;
    CHECK(!nn::MambaConfig::from_json(c.to_json()).norm_per_group);
    // Fields left out take the defaults of transformers' config classes.
    nn::MambaConfig d = nn::MambaConfig::from_json(R"({"model_type": "mamba2"})");
    CHECK(d.hidden_size == 4096);
    CHECK(d.num_hidden_layers == 64);
    CHECK(d.vocab_size == 32768);
    CHECK(d.n_groups == 8);
    CHECK(d.norm_per_group);
    CHECK(nn::MambaConfig::from_json("{}").num_hidden_layers == 32);
    ct::check_error(
        [] {
          nn::MambaConfig::from_json(
              R"({"model_type": "mamba2", "time_step_limit": [0.0, {"__float__": "big"}]})");
        },
        {"time_step_limit", "big"});
    nn::MambaConfig m1 = nn::MambaConfig::load(fixture_dir("mamba1_tied") + "/config.json");
    CHECK(!m1.is_mamba2());
    CHECK(m1.dt_rank() == 2);
    CHECK(m1.num_hidden_layers == 3);
  }

  TEST_CASE("logits, loss and hidden states match transformers") {
    for (const std::string name : kFixtures) {
      CAPTURE(name);
      auto m = MambaLM::from_pretrained(fixture_dir(name));
      io::SafetensorsFile e = expected(name);
      const Tensor& ids = e.at("input_ids");
      NoGradGuard no_grad;
      // Block by block first, so that a disagreement names the first layer where it starts.
      Tensor h = m->backbone->embeddings->forward(ids);
      double hidden_err = 0;
      for (size_t i = 0; i < m->backbone->layers->size(); ++i) {
        h = m->backbone->layers->at<nn::MambaBlock>(i)->forward(h);
        hidden_err =
            std::max(hidden_err, check_values(h, e.at("hidden." + std::to_string(i)), kRtol, kAtol,
                                              "hidden." + std::to_string(i)));
      }
      hidden_err =
          std::max(hidden_err, check_values(m->backbone->norm_f->forward(h), e.at("hidden.final"),
                                            kRtol, kAtol, "hidden.final"));
      check_logits(m->forward(ids), e, name, hidden_err);
    }
  }

  TEST_CASE("parameter gradients of the loss match transformers") {
    for (const std::string name : kFixtures) {
      CAPTURE(name);
      auto m = MambaLM::from_pretrained(fixture_dir(name));
      io::SafetensorsFile e = expected(name);
      const Tensor& ids = e.at("input_ids");
      m->zero_grad();
      next_token_loss(m->forward(ids), ids).backward();
      check_gradients(*m, e, name);
    }
  }

  TEST_CASE("cached decoding and greedy generate match transformers' generate") {
    for (const std::string name : kFixtures) {
      CAPTURE(name);
      auto m = MambaLM::from_pretrained(fixture_dir(name));
      io::SafetensorsFile e = expected(name);
      const Tensor& prompt = e.at("gen.prompt");     // (1, P)
      const Tensor& tokens = e.at("gen.tokens");     // (1, T)
      const Tensor& ref_steps = e.at("gen.logits");  // (1, T, V)
      const int64_t P = prompt.size(1), T = tokens.size(1);
      REQUIRE(ref_steps.size(1) == T);
      NoGradGuard no_grad;
      // Prefill the prompt, then feed the reference's tokens one at a time.
      nn::MambaCache cache;
      Tensor step = m->forward(prompt, &cache).select(1, P - 1);
      double step_err = 0;
      for (int64_t i = 0; i < T; ++i) {
        CAPTURE(i);
        if (i > 0) step = m->forward(tokens.narrow(1, i - 1, 1), &cache).select(1, 0);
        step_err = std::max(step_err, check_values(step, ref_steps.select(1, i), kRtol, kAtol,
                                                   "decoding step " + std::to_string(i)));
      }
      CHECK(cache.position == P + T - 1);
      // coil's own greedy generation: the same tokens up to the first step where the
      // reference's choice is a near tie (after it the contexts may differ).
      nn::SamplingOptions greedy;
      greedy.greedy = true;
      std::vector<int64_t> got = to_vector<int64_t>(m->generate(prompt, T, greedy));
      std::vector<int64_t> want = to_vector<int64_t>(tokens);
      REQUIRE(static_cast<int64_t>(got.size()) == P + T);
      int64_t compared = 0;
      for (int64_t i = 0; i < T; ++i) {
        if (top2_margin(ct::vals(ref_steps.select(1, i))) <= kMargin) break;
        CAPTURE(i);
        CHECK(got[P + i] == want[i]);
        ++compared;
      }
      MESSAGE(name << ": max |step logits - ref| " << step_err << ", greedy tokens compared "
                   << compared << "/" << T);
    }
  }

  TEST_CASE("a sharded folder loads to the same model") {
    const std::string single = fixture_dir("mamba2_n16_g2");
    const std::string sharded = fixture_dir("mamba2_n16_g2_sharded");
    REQUIRE(fs::exists(fs::path(sharded) / "model.safetensors.index.json"));
    CHECK(!fs::exists(fs::path(sharded) / "model.safetensors"));
    int shards = 0;
    for (auto& f : fs::directory_iterator(sharded))
      shards += f.path().extension() == ".safetensors";
    CHECK(shards > 1);
    auto a = MambaLM::from_pretrained(single);
    auto b = MambaLM::from_pretrained(sharded);
    auto sa = a->state_dict(), sb = b->state_dict();
    REQUIRE(sa.size() == sb.size());
    for (size_t i = 0; i < sa.size(); ++i) {
      CAPTURE(sa[i].first);
      CHECK(sa[i].first == sb[i].first);
      CHECK(ct::vals(sa[i].second) == ct::vals(sb[i].second));
    }
    io::SafetensorsFile e = expected("mamba2_n16_g2");
    NoGradGuard no_grad;
    Tensor la = a->forward(e.at("input_ids")), lb = b->forward(e.at("input_ids"));
    CHECK((la - lb).abs().max().item<double>() == 0.0);
    check_values(lb, e.at("logits"), kRtol, kAtol, "sharded logits");
  }

  TEST_CASE("GraniteMoeHybrid: config.json as transformers 5 writes it") {
    // layer_types "linear_attention" (a mamba layer in transformers 5), time_step_limit with
    // {"__float__": "Infinity"}, and every field of the hybrid.
    nn::HybridConfig c = nn::HybridConfig::load(fixture_dir("granite_moe_g2") + "/config.json");
    CHECK(c.layer_types == std::vector<std::string>{"mamba", "mamba"});
    CHECK(c.vocab_size == 59);
    CHECK(c.num_local_experts == 4);
    CHECK(c.num_experts_per_tok == 2);
    CHECK(c.intermediate_size == 12);
    CHECK(c.shared_intermediate_size == 8);
    CHECK(c.mamba_n_groups == 2);
    CHECK(c.mamba_d_head == 16);
    CHECK(c.embedding_multiplier == 3.0);
    CHECK(c.residual_multiplier == 0.5);
    CHECK(c.logits_scaling == 2.5);
    CHECK(c.time_step_limit_min == 0.0);
    CHECK(std::isinf(c.time_step_limit_max));
    CHECK(c.mamba_config().norm_per_group);  // transformers 5's gated norm is per group
    CHECK(c.pad_token_id == 0);  // the embedding's padding_idx: row 0 gets no gradient
    // coil's own config.json reads back to the same config.
    nn::HybridConfig r = nn::HybridConfig::from_json(c.to_json());
    CHECK(r.to_json() == c.to_json());
    CHECK(std::isinf(r.time_step_limit_max));
    nn::HybridConfig d =
        nn::HybridConfig::load(fixture_dir("granite_dense_untied") + "/config.json");
    CHECK(d.num_local_experts == 0);
    CHECK(nn::HybridConfig::from_json(R"({"pad_token_id": null})").pad_token_id == -1);
    CHECK(!d.tie_word_embeddings);
    ct::check_error(
        [] {
          nn::HybridConfig::from_json(R"({"model_type": "granitemoehybrid",
            "num_hidden_layers": 2, "layer_types": ["mamba", "attention"]})");
        },
        {"HybridConfig", "layer 1", "attention"});
    ct::check_error(
        [] {
          nn::HybridConfig::from_json(
              R"({"model_type": "granitemoehybrid", "time_step_limit": [0.0, "wide"]})");
        },
        {"HybridConfig", "time_step_limit", "string"});
  }

  TEST_CASE("GraniteMoeHybrid: logits, loss, hidden states and gradients match transformers") {
    for (const std::string name : kHybridFixtures) {
      CAPTURE(name);
      auto m = nn::HybridLM::from_pretrained(fixture_dir(name));
      io::SafetensorsFile e = expected(name);
      const Tensor& ids = e.at("input_ids");
      {
        NoGradGuard no_grad;
        Tensor h = m->model->embed_tokens->forward(ids) * m->config().embedding_multiplier;
        double hidden_err = 0;
        for (size_t i = 0; i < m->model->layers->size(); ++i) {
          const std::string key = "hidden." + std::to_string(i);
          h = m->model->layers->at<nn::HybridBlock>(i)->forward(h);
          hidden_err = std::max(hidden_err, check_values(h, e.at(key), kRtol, kAtol, key));
        }
        hidden_err =
            std::max(hidden_err, check_values(m->model->norm->forward(h), e.at("hidden.final"),
                                              kRtol, kAtol, "hidden.final"));
        check_logits(m->forward(ids), e, name, hidden_err);
      }
      m->zero_grad();
      next_token_loss(m->forward(ids), ids).backward();
      check_gradients(*m, e, name);
    }
  }
}
