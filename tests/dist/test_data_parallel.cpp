// Data parallelism at any world size (a world of one, mpirun -np 2 and 4): the same global batch
// trains to the same losses as one process, and each bucket's all_reduce starts during backward.
#include <algorithm>
#include <fstream>

#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;

namespace {

nn::MambaConfig tiny() {
  nn::MambaConfig c;
  c.vocab_size = 256;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.state_size = 8;
  return c;
}

// layout "tp": every layer's in_proj colwise and out_proj rowwise over the world; "tp+sp" adds
// sequence parallelism on the block norms and the final norm.
// cp: context parallelism over that many ranks (the rest of the world data-parallel).
std::vector<double> train(bool data_parallel, const std::string& path, int steps,
                          const std::string& layout = "", const std::string& mixer = "mamba",
                          int64_t cp = 1,
                          dist::StatePassing passing = dist::StatePassing::kAllGather) {
  manual_seed(5);
  nn::MambaConfig cfg = tiny();
  cfg.model_type = mixer;
  if (mixer == "mamba2") {
    cfg.num_heads = 4;
    cfg.head_dim = 8;
    cfg.n_groups = 1;
    cfg.chunk_size = 8;
  }
  auto model = std::make_shared<nn::MambaLM>(cfg);
  if (!layout.empty()) {
    std::vector<std::pair<std::string, nn::ParallelStyle>> plan;
    for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
      const std::string b = "backbone.layers." + std::to_string(l);
      plan.emplace_back(b + ".mixer.in_proj", nn::ParallelStyle::kColwise);
      plan.emplace_back(b + ".mixer.out_proj", nn::ParallelStyle::kRowwise);
      if (layout == "tp+sp") plan.emplace_back(b + ".norm", nn::ParallelStyle::kSequence);
    }
    if (layout == "tp+sp") plan.emplace_back("backbone.norm_f", nn::ParallelStyle::kSequence);
    nn::parallelize_module(*model, dist::DeviceMesh::world("tp"), plan);
  }
  nn::TrainOptions o;
  o.batch = 8;  // 8, 4 or 2 rows per rank
  o.seq_len = 16;
  o.total_steps = steps;
  o.warmup_steps = 3;
  o.lr = 1e-2;
  o.data_parallel = data_parallel;
  o.context_parallel = cp;
  o.state_passing = passing;
  nn::LMTrainer t(model, nn::ByteCorpus::open(path), o);
  std::vector<double> losses;
  for (int s = 0; s < steps; ++s) losses.push_back(t.train_step());
  return losses;
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("data parallel training gives one process's losses on the same global batch") {
    ct::TempDir dir;
    const std::string path = ct::write_corpus(dir, 4000);
    const std::vector<double> one = train(false, path, 20);
    const std::vector<double> dp = train(true, path, 20);
    for (int s = 0; s < 20; ++s) {
      CAPTURE(s);
      CHECK(std::abs(dp[s] - one[s]) <= 1e-5);
    }
    CHECK(one[19] < one[0] - 0.5);  // it learned something
  }

  TEST_CASE(
      "tensor-parallel Linear layout (colwise in_proj, rowwise out_proj) trains as one process, "
      "with and without sequence-parallel norms") {
    ct::TempDir dir;
    const std::string path = ct::write_corpus(dir, 4000);
    for (const char* mixer : {"mamba", "mamba2"}) {
      CAPTURE(mixer);
      const std::vector<double> one = train(false, path, 20, "", mixer);
      for (const char* layout : {"tp", "tp+sp"}) {
        CAPTURE(layout);
        const std::vector<double> tp = train(false, path, 20, layout, mixer);
        for (int s = 0; s < 20; ++s) {
          CAPTURE(s);
          CHECK(std::abs(tp[s] - one[s]) <= 1e-5);
        }
      }
    }
  }

  TEST_CASE("context-parallel training gives one process's losses (cp = world; dp x cp 2x2)") {
    ct::TempDir dir;
    const std::string path = ct::write_corpus(dir, 4000);
    const int64_t world = dist::world_size();
    for (const char* mixer : {"mamba", "mamba2"}) {
      CAPTURE(mixer);
      const std::vector<double> one = train(false, path, 20, "", mixer);
      std::vector<std::pair<std::string, std::vector<double>>> runs;
      runs.emplace_back("cp", train(false, path, 20, "", mixer, world));
      runs.emplace_back("cp serial",
                        train(false, path, 20, "", mixer, world, dist::StatePassing::kSerial));
      if (world == 4) runs.emplace_back("dp 2 x cp 2", train(true, path, 20, "", mixer, 2));
      for (const auto& [name, losses] : runs) {
        CAPTURE(name);
        for (int s = 0; s < 20; ++s) {
          CAPTURE(s);
          CHECK(std::abs(losses[s] - one[s]) <= 1e-5 * std::abs(one[s]));
        }
      }
    }
  }

  TEST_CASE("sequence parallel: a norm runs on the sequence's pieces") {
    dist::DeviceMesh mesh = dist::DeviceMesh::world("tp");
    manual_seed(8);
    auto norm = std::make_shared<nn::RMSNorm>(8, 1e-5);
    {
      NoGradGuard g;
      norm->weight.copy_(randn({8}));
    }
    const Tensor w0 = norm->weight.detach().clone();
    nn::ModuleList root;
    root.push_back(norm);
    nn::parallelize_module(root, mesh, {{"0", nn::ParallelStyle::kSequence}});
    CHECK(dist::dtensor_spec(norm->weight).placements == dist::Placements{dist::Replicate()});
    const Tensor x = randn({2, 7, 8});  // 7 positions: uneven pieces
    // reference on one process
    Tensor wr = w0.clone().requires_grad_(true);
    Tensor ref = rms_norm(x, wr, 1e-5);
    (ref * ref).sum().backward();
    // a Replicate input is cut into its sequence pieces (no communication)
    Tensor y = norm->forward(dist::distribute_tensor(x, mesh, {dist::Replicate()}));
    CHECK(dist::dtensor_spec(y).placements == dist::Placements{dist::Shard(1)});
    CHECK((dist::full_tensor(y) - ref.detach()).abs().max().item<double>() <= 1e-6);
    (y * y).sum().backward();
    Tensor g = dist::full_tensor(dist::redistribute(norm->weight.grad(), {dist::Replicate()}));
    CHECK((g - wr.grad()).abs().max().item<double>() <= 1e-4);
    // a plain input is this rank's piece of the sequence
    const dist::LocalShard piece = dist::local_shard(x.sizes(), mesh, {dist::Shard(1)});
    Tensor y2 = norm->forward(x.narrow(1, piece.offsets[1], piece.sizes[1]));
    CHECK((dist::full_tensor(y2) - ref.detach()).abs().max().item<double>() <= 1e-6);
    // styles on the wrong layers
    auto lin = std::make_shared<nn::Linear>(8, 8);
    nn::ModuleList other;
    other.push_back(lin);
    other.push_back(std::make_shared<nn::RMSNorm>(8));
    ct::check_error(
        [&] {
          nn::parallelize_module(other, mesh, {{"0", nn::ParallelStyle::kSequence}});
        },
        {"parallelize_module: '0' is not an RMSNorm module"});
    ct::check_error(
        [&] {
          nn::parallelize_module(other, mesh, {{"1", nn::ParallelStyle::kColwise}});
        },
        {"parallelize_module: '1' is not a Linear module"});
    ct::check_error(
        [&] {
          nn::parallelize_module(other, mesh, {{"9", nn::ParallelStyle::kRowwise}});
        },
        {"parallelize_module: '9' is not a Linear module"});
  }

  TEST_CASE("data parallel: buckets start their all_reduce before backward ends") {
    manual_seed(6);
    nn::MambaLM model(tiny());
    nn::DataParallelOptions o;
    o.bucket_mb = 0.004;  // ~1000 floats: several buckets
    nn::DataParallel dp(model, o);
    CHECK(dp.num_buckets() >= 3);
    Tensor ids = randint(0, 256, {2, 12});
    Tensor logits = model.forward(ids.narrow(1, 0, 11));
    Tensor loss = cross_entropy(logits.reshape({22, 256}), ids.narrow(1, 1, 11).reshape({22}));
    loss.backward();
    dp.mark("backward done");
    dp.finish_gradient_sync();
    const auto ev = dp.events();
    const auto done = std::find(ev.begin(), ev.end(), "backward done");
    REQUIRE(done != ev.end());
    CHECK(ev.front() == "launch 0");  // the first bucket left during backward
    CHECK(std::count_if(ev.begin(), done,
                        [](const std::string& e) { return e.rfind("launch", 0) == 0; }) >= 2);
    // every rank ends with the same averaged gradient: its all-reduced copy is unchanged
    for (const Tensor& p : model.parameters()) {
      Tensor g = p.grad().clone();
      dist::all_reduce(g, dist::ReduceOp::kAvg);
      CHECK((g - p.grad()).abs().max().item<double>() == 0);
    }
    CHECK(dp.exposed_comm_ms() >= 0);
  }
}
