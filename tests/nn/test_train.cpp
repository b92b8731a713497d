// Hugging Face directories (config.json + safetensors), the byte corpus, and training
// checkpoints that resume bit-identically.
#include <fstream>
#include <limits>

#include "../test_util.h"

using namespace coil;
using nn::MambaConfig;
using nn::MambaLM;

namespace {

MambaConfig small(bool mamba2) {
  MambaConfig c;
  c.model_type = mamba2 ? "mamba2" : "mamba";
  c.vocab_size = 256;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.state_size = 8;
  c.num_heads = 4;
  c.head_dim = 8;
  c.n_groups = 2;
  c.chunk_size = 8;
  return c;
}

nn::TrainOptions tiny_options() {
  nn::TrainOptions o;
  o.batch = 2;
  o.seq_len = 16;
  o.total_steps = 20;
  o.warmup_steps = 3;
  o.lr = 1e-2;
  return o;
}

}  // namespace

TEST_SUITE("nn.train") {
  TEST_CASE("config.json round trip and Hugging Face fields") {
    for (bool m2 : {false, true}) {
      MambaConfig c = small(m2);
      c.time_step_rank = 5;
      MambaConfig back = MambaConfig::from_json(c.to_json());
      CHECK(back.to_json() == c.to_json());
      CHECK(back.model_type == c.model_type);
      CHECK(back.dt_rank() == 5);
    }
    // A config.json as transformers writes it for state-spaces/mamba-130m-hf.
    MambaConfig hf = MambaConfig::from_json(R"({
      "architectures": ["MambaForCausalLM"], "bos_token_id": 0, "conv_kernel": 4, "eos_token_id": 0,
      "expand": 2, "hidden_act": "silu", "hidden_size": 768, "initializer_range": 0.1,
      "intermediate_size": 1536, "layer_norm_epsilon": 1e-05, "model_type": "mamba",
      "n_layer": 24, "num_hidden_layers": 24, "pad_token_id": 0, "rescale_prenorm_residual": false,
      "residual_in_fp32": true, "state_size": 16, "time_step_floor": 0.0001,
      "time_step_init_scheme": "random", "time_step_max": 0.1, "time_step_min": 0.001,
      "time_step_rank": 48, "time_step_scale": 1.0, "torch_dtype": "float32",
      "transformers_version": "4.39.0.dev0", "use_bias": false, "use_cache": true,
      "use_conv_bias": true, "vocab_size": 50280})");
    CHECK(hf.hidden_size == 768);
    CHECK(hf.dt_rank() == 48);
    CHECK(hf.vocab_size == 50280);
    CHECK(hf.tie_word_embeddings);
    // Mamba2Config with Python's Infinity in time_step_limit; "auto" rank.
    MambaConfig hf2 = MambaConfig::from_json(R"({"model_type": "mamba2", "hidden_size": 64,
      "num_heads": 4, "head_dim": 32, "n_groups": 2, "state_size": 16, "num_hidden_layers": 2,
      "vocab_size": 100, "time_step_rank": "auto", "time_step_limit": [0.0, Infinity],
      "chunk_size": 32})");
    CHECK(hf2.is_mamba2());
    CHECK(!hf2.tie_word_embeddings);  // Mamba2Config's default
    CHECK(hf2.dt_rank() == 4);
    ct::check_error(
        [] {
          MambaConfig::from_json(R"({"model_type": "mamba2", "hidden_size": 64,
      "num_heads": 3, "head_dim": 32})");
        },
        {"num_heads", "3"});
    ct::check_error([] { MambaConfig::from_json("{\"hidden_size\": "); }, {"json"});
    ct::check_error([] { MambaConfig::from_json(R"({"time_step_rank": "big"})"); },
                    {"time_step_rank", "big"});
    ct::check_error([] { MambaConfig::from_json(R"({"hidden_act": "gelu"})"); },
                    {"hidden_act", "gelu"});
  }

  TEST_CASE("save_pretrained / from_pretrained give the same model") {
    for (bool m2 : {false, true}) {
      CAPTURE(m2);
      ct::TempDir dir;
      manual_seed(11);
      MambaLM m(small(m2));
      m.save_pretrained(dir.path.string());
      CHECK(std::filesystem::exists(dir.file("config.json")));
      CHECK(std::filesystem::exists(dir.file("model.safetensors")));
      auto f = io::load_safetensors(dir.file("model.safetensors"));
      // Tied head stored once, as transformers does.
      CHECK(f.contains("lm_head.weight") == !m.config().tie_word_embeddings);
      auto back = MambaLM::from_pretrained(dir.path.string());
      Tensor ids = randint(0, 256, {2, 9});
      NoGradGuard ng;
      CHECK((m.forward(ids) - back->forward(ids)).abs().max().item<double>() == 0.0);
      CHECK(back->num_parameters() == m.num_parameters());
      if (back->config().tie_word_embeddings)
        CHECK(back->lm_head->weight.is_same(back->backbone->embeddings->weight));
      // Loading converts dtype.
      auto b64 = MambaLM::from_pretrained(dir.path.string(), kF64);
      CHECK(b64->forward(ids).dtype() == kF64);
    }
    // Missing weights and bad directories are errors naming the problem.
    ct::TempDir dir;
    MambaLM m(small(false));
    m.save_pretrained(dir.path.string());
    auto f = io::load_safetensors(dir.file("model.safetensors"));
    io::NamedTensors partial(f.tensors.begin() + 1, f.tensors.end());
    io::save_safetensors(dir.file("model.safetensors"), partial);
    ct::check_error([&] { MambaLM::from_pretrained(dir.path.string()); },
                    {"from_pretrained", "missing", "backbone.embeddings.weight"});
    ct::check_error([&] { MambaLM::from_pretrained(dir.file("nope")); }, {"not a directory"});
  }

  TEST_CASE("ByteCorpus: mapped bytes, split, deterministic windows") {
    ct::TempDir dir;
    std::string path = ct::write_corpus(dir);
    auto c = nn::ByteCorpus::open(path, 0.1);
    CHECK(c.size() == static_cast<int64_t>(std::filesystem::file_size(path)));
    CHECK(c.train_size() + c.val_size() == c.size());
    CHECK(c.val_size() == doctest::Approx(0.1 * c.size()).epsilon(0.01));
    Tensor b1 = c.batch(false, 3, 10, 7, 5), b2 = c.batch(false, 3, 10, 7, 5);
    CHECK(b1.sizes() == Shape{3, 11});
    CHECK(to_vector<int64_t>(b1) == to_vector<int64_t>(b2));
    CHECK(to_vector<int64_t>(c.batch(false, 3, 10, 7, 6)) != to_vector<int64_t>(b1));
    // Each window is a contiguous run of the file's bytes.
    std::string text(reinterpret_cast<const char*>(c.data()), c.size());
    for (int64_t r = 0; r < 3; ++r) {
      std::string w;
      for (int64_t v : to_vector<int64_t>(b1.select(0, r))) w += static_cast<char>(v);
      CHECK(text.substr(0, c.train_size()).find(w) != std::string::npos);
    }
    Tensor v = c.batch(true, 2, 10, 7, 0);
    std::string vw;
    for (int64_t x : to_vector<int64_t>(v.select(0, 0))) vw += static_cast<char>(x);
    CHECK(text.find(vw, c.train_size()) != std::string::npos);
    ct::check_error([&] { nn::ByteCorpus::open(dir.file("missing.txt")); }, {"missing.txt"});
    ct::check_error([&] { c.batch(true, 1, 100000, 0, 0); }, {"validation", "too few"});
    // Found by fuzz/fuzz_byte_corpus: a huge index (a checkpoint's step) overflowed index * batch.
    const int64_t huge = std::numeric_limits<int64_t>::max();
    CHECK(to_vector<int64_t>(c.batch(false, 3, 10, 7, huge)) ==
          to_vector<int64_t>(c.batch(false, 3, 10, 7, huge)));
    ct::check_error([&] { c.batch(false, 1, 10, 0, -1); }, {"index -1"});
  }

  TEST_CASE("config.json: absurd sizes are errors, not overflows or hangs (found by fuzz_config)") {
    MambaConfig m = small(true);
    m.num_heads = int64_t(1) << 62;
    m.head_dim = 4;
    ct::check_error([&] { MambaConfig::from_json(m.to_json()); }, {"num_heads", "head_dim"});
    // (edited as JSON: to_json itself would overflow computing intermediate_size)
    json::Value big = json::parse(small(false).to_json());
    big.set("expand", int64_t(1) << 62);
    big.set("intermediate_size", int64_t(1) << 62);
    ct::check_error([&] { MambaConfig::from_json(big.dump()); }, {"expand", "out of range"});
    ct::check_error(
        [] {
          nn::HybridConfig::from_json(R"({"hidden_size": 32, "mamba_n_heads": 0,)"
                                      R"( "mamba_d_head": "auto"})");
        },
        {"mamba_d_head", "mamba_n_heads 0"});
    ct::check_error([] { nn::HybridConfig::from_json(R"({"mamba_d_head": 0})"); },
                    {"mamba_d_head must be positive"});
    // A 33-byte config.json whose layers (written back one by one) hung to_json.
    ct::check_error([] { nn::HybridConfig::from_json(R"({"num_hidden_layers": 100000000})"); },
                    {"num_hidden_layers 100000000", "more than"});
  }

  TEST_CASE("training lowers the loss; resuming a checkpoint is bit-identical") {
    for (bool m2 : {false, true}) {
      CAPTURE(m2);
      ct::TempDir dir;
      auto corpus = nn::ByteCorpus::open(ct::write_corpus(dir));
      // 20 steps straight.
      manual_seed(3);
      auto a = std::make_shared<MambaLM>(small(m2));
      nn::LMTrainer ta(a, corpus, tiny_options());
      std::vector<double> straight;
      for (int i = 0; i < 20; ++i) straight.push_back(ta.train_step());
      CHECK(straight.back() < straight.front() - 1.0);
      // 10 steps, checkpoint, a fresh process-like start (other seed, other init), 10 more.
      manual_seed(3);
      auto b = std::make_shared<MambaLM>(small(m2));
      std::vector<double> resumed;
      {
        nn::LMTrainer tb(b, corpus, tiny_options());
        for (int i = 0; i < 10; ++i) resumed.push_back(tb.train_step());
        tb.save_checkpoint(dir.file("ckpt.safetensors"));
      }
      manual_seed(999);
      auto c = std::make_shared<MambaLM>(small(m2));
      nn::TrainOptions other = tiny_options();
      other.data_seed = 5;  // restored from the checkpoint
      nn::LMTrainer tc(c, corpus, other);
      tc.load_checkpoint(dir.file("ckpt.safetensors"));
      CHECK(tc.step() == 10);
      for (int i = 0; i < 10; ++i) resumed.push_back(tc.train_step());
      for (int i = 0; i < 20; ++i) {
        CAPTURE(i);
        CHECK(resumed[i] == straight[i]);  // bit-identical
      }
      CHECK(std::filesystem::exists(dir.file("ckpt.safetensors")));
      for (auto& e : std::filesystem::directory_iterator(dir.path))
        CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
    }
  }

  TEST_CASE("a step with NaN gradients is skipped, counted and saved; training goes on") {
    ct::TempDir dir;
    auto corpus = nn::ByteCorpus::open(ct::write_corpus(dir));
    manual_seed(3);
    auto m = std::make_shared<MambaLM>(small(true));
    nn::LMTrainer t(m, corpus, tiny_options());
    // A bad batch's effect: one parameter's gradient turns NaN during step 3's backward.
    bool poison = false;
    m->parameters()[0].register_hook([&](const Tensor& g) { return poison ? g * NAN : g; });
    auto snapshot = [&] {
      std::vector<std::vector<double>> v;
      for (const Tensor& p : m->parameters()) v.push_back(ct::vals(p));
      return v;
    };
    for (int i = 0; i < 3; ++i) t.train_step();
    const auto before = snapshot();
    poison = true;
    const double loss = t.train_step();  // the loss itself is finite: only a gradient is bad
    poison = false;
    CHECK(std::isfinite(loss));
    CHECK(t.skipped_steps() == 1);
    CHECK(std::isnan(t.last_grad_norm()));
    CHECK(t.step() == 4);
    CHECK(snapshot() == before);  // no parameter moved
    for (int i = 0; i < 3; ++i) CHECK(std::isfinite(t.train_step()));
    CHECK(snapshot() != before);
    for (const Tensor& p : m->parameters())
      for (double v : ct::vals(p)) REQUIRE(std::isfinite(v));
    t.save_checkpoint(dir.file("ckpt.safetensors"));
    nn::LMTrainer t2(std::make_shared<MambaLM>(small(true)), corpus, tiny_options());
    t2.load_checkpoint(dir.file("ckpt.safetensors"));
    CHECK(t2.skipped_steps() == 1);
    // Without the guard the NaN reaches every parameter AdamW touches.
    nn::TrainOptions off = tiny_options();
    off.skip_nonfinite = false;
    nn::LMTrainer t3(m, corpus, off);
    poison = true;
    t3.train_step();
    CHECK(std::isnan(ct::vals(m->parameters()[0])[0]));
  }

  TEST_CASE("bad checkpoints are errors") {
    ct::TempDir dir;
    auto corpus = nn::ByteCorpus::open(ct::write_corpus(dir));
    auto m = std::make_shared<MambaLM>(small(false));
    nn::LMTrainer t(m, corpus, tiny_options());
    t.train_step();
    t.save_checkpoint(dir.file("ok.safetensors"));
    // Another model's checkpoint.
    auto other = std::make_shared<MambaLM>(small(true));
    nn::LMTrainer t2(other, corpus, tiny_options());
    ct::check_error([&] { t2.load_checkpoint(dir.file("ok.safetensors")); },
                    {"load_checkpoint", "ok.safetensors"});
    // A plain safetensors file, and a future format version.
    io::save_safetensors(dir.file("plain.safetensors"), {{"x", zeros({2})}});
    ct::check_error([&] { t.load_checkpoint(dir.file("plain.safetensors")); },
                    {"plain.safetensors", "format"});
    io::save_safetensors(dir.file("v9.safetensors"), {{"x", zeros({2})}},
                         {{"format", "coil.lm_checkpoint"}, {"format_version", "9"}});
    ct::check_error([&] { t.load_checkpoint(dir.file("v9.safetensors")); }, {"format_version 9"});
    // Truncated file.
    auto bytes = io::read_file(dir.file("ok.safetensors"));
    std::ofstream(dir.file("cut.safetensors"), std::ios::binary)
        << bytes.substr(0, bytes.size() / 2);
    ct::check_error([&] { t.load_checkpoint(dir.file("cut.safetensors")); }, {"cut.safetensors"});
    // Steps past 2^53 or with a sign (stoull reads "-1" as 2^64 - 1) are errors, and
    // a failed load changes nothing.
    io::SafetensorsFile ok = io::load_safetensors(dir.file("ok.safetensors"));
    for (const char* step : {"18446744073709551615", "9223372036854775807", "-1", " 1"}) {
      io::Metadata meta = ok.metadata;
      for (auto& [k, v] : meta)
        if (k == "step") v = step;
      io::save_safetensors(dir.file("step.safetensors"), ok.tensors, meta);
      ct::check_error([&] { t.load_checkpoint(dir.file("step.safetensors")); }, {"step"});
      CHECK(t.step() == 1);
    }
  }
}
