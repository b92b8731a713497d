// Expert parallelism: the experts spread over the world (and, at 4 ranks, over the ep dim of a
// 2x2 dp x ep mesh) give, for every rank's own tokens, the single-process layer's outputs and
// gradients on all ranks' tokens together (float64, normwise 1e-10), experts that receive no
// token from some rank included. Runs at 1, 2 and 4 ranks.
#include "../test_util.h"

using namespace coil;
namespace dist = coil::dist;

namespace {

std::shared_ptr<nn::MoE> make_moe(int64_t experts, int64_t shared) {
  manual_seed(17);  // the same weights on every rank
  nn::MoEOptions o;
  o.router.num_experts = experts;
  o.router.top_k = 2;
  o.ffn_hidden = 5;
  o.shared_ffn_hidden = shared;
  auto m = std::make_shared<nn::MoE>(6, o, kF64);
  NoGradGuard g;
  m->router->layer->weight.copy_(randn({experts, 6}, kF64));
  return m;
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE("expert parallelism equals the single-process MoE on all ranks' tokens") {
    const int world = dist::world_size(), rank = dist::rank();
    struct Layout {
      std::string name;
      dist::GroupPtr ep, dp;  // dp: the replicas of an expert shard (null: none)
    };
    std::vector<Layout> layouts = {{"ep = world", dist::world(), nullptr}};
    std::unique_ptr<dist::DeviceMesh> mesh;
    if (world == 4) {
      mesh = std::make_unique<dist::DeviceMesh>(Shape{2, 2}, std::vector<std::string>{"dp", "ep"});
      layouts.push_back({"dp 2 x ep 2", mesh->group("ep"), mesh->group("dp")});
    }
    for (const Layout& lay : layouts) {
      for (int64_t experts : {4, 8}) {
        for (int64_t shared : {0, 4}) {
          CAPTURE(lay.name);
          CAPTURE(experts);
          CAPTURE(shared);
          // 3 tokens per rank: with 8 experts some get none from a rank
          manual_seed(99);
          const Tensor all_x = randn({world, 3, 6}, kF64), all_w = randn({world, 3, 6}, kF64);
          // the reference: one process, every rank's tokens
          auto ref = make_moe(experts, shared);
          Tensor xr = all_x.clone().requires_grad_(true);
          (ref->forward(xr) * all_w).sum().backward();
          Tensor y_ref = ref->forward(all_x).detach();
          // expert parallel: this rank's tokens
          auto m = make_moe(experts, shared);
          m->set_expert_parallel(dist::ExpertParallel{lay.ep});
          Tensor x = all_x.select(0, rank).clone().requires_grad_(true);
          Tensor y = m->forward(x);
          (y * all_w.select(0, rank)).sum().backward();
          CHECK(ct::rel_error(y, y_ref.select(0, rank)) < 1e-10);
          CHECK(ct::rel_error(x.grad(), xr.grad().select(0, rank)) < 1e-10);
          // replicated parameters: the ranks' gradients sum to the reference's
          CHECK(ct::rel_error(ct::summed_grad(m->router->layer->weight.grad(),
                                              m->router->layer->weight, dist::world()),
                              ref->router->layer->weight.grad()) < 1e-10);
          if (shared)
            CHECK(ct::rel_error(ct::summed_grad(m->shared_mlp->input_linear->weight.grad(),
                                                m->shared_mlp->input_linear->weight, dist::world()),
                                ref->shared_mlp->input_linear->weight.grad()) < 1e-10);
          // expert weights: this rank's Shard(0) piece, summed over the dp replicas
          for (auto [mine, theirs] :
               {std::pair{&m->experts->input_linear, &ref->experts->input_linear},
                std::pair{&m->experts->output_linear, &ref->experts->output_linear}}) {
            REQUIRE(dist::is_dtensor(*mine));
            Tensor g = mine->grad();
            REQUIRE(dist::is_dtensor(g));
            const int64_t el = experts / lay.ep->size();
            Tensor want = theirs->grad().narrow(0, lay.ep->rank() * el, el);
            CHECK(ct::rel_error(ct::summed_grad(dist::to_local(g), dist::to_local(g), lay.dp),
                                want) < 1e-10);
          }
        }
      }
    }
  }
}

namespace {

// 20 AdamW steps of a tiny hybrid LM on 8 x 16 random bytes per step, gradients clipped to norm
// 0.5; layout 0: one process, 1: experts over the world (each rank its rows), 2: a dp 2 x ep 2
// mesh. Returns the losses, then the gradient norms before clipping.
std::vector<double> train_hybrid(int layout, int steps) {
  const nn::HybridConfig c = ct::tiny_hybrid();
  manual_seed(3);
  auto lm = std::make_shared<nn::HybridLM>(c);
  const int world = dist::world_size(), rank = dist::rank();
  std::unique_ptr<dist::DeviceMesh> mesh;
  std::unique_ptr<nn::DataParallel> dp;
  const int64_t batch = 8, rows = layout == 0 ? batch : batch / world;
  if (layout == 1) {
    lm->set_expert_parallel(dist::ExpertParallel{dist::world()});
    dp = std::make_unique<nn::DataParallel>(*lm);
  } else if (layout == 2) {
    mesh = std::make_unique<dist::DeviceMesh>(Shape{2, 2}, std::vector<std::string>{"dp", "ep"});
    lm->set_expert_parallel(dist::ExpertParallel{mesh->group("ep")});
    nn::DataParallelOptions o;
    o.shard_replicas = mesh->group("dp");
    dp = std::make_unique<nn::DataParallel>(*lm, o);
  }
  optim::AdamWOptions ao;
  ao.lr = 1e-2;
  optim::AdamW opt(lm->parameters(), ao);
  std::vector<double> losses, norms;
  for (int s = 0; s < steps; ++s) {
    manual_seed(1000 + s % 2);  // two batches in turn: something to learn
    Tensor ids = randint(0, 64, {batch, 17});
    if (layout != 0) ids = ids.narrow(0, rank * rows, rows);
    Tensor logits = lm->forward(ids.narrow(1, 0, 16));
    Tensor loss =
        cross_entropy(logits.reshape({rows * 16, 64}), ids.narrow(1, 1, 16).reshape({rows * 16}));
    opt.zero_grad();
    loss.backward();
    double v = loss.item<double>();
    if (dp) {
      dp->finish_gradient_sync();
      Tensor t = full({1}, v, Options(kF64));
      dist::all_reduce(t, dist::ReduceOp::kAvg);
      v = t.item<double>();
    }
    // the norm sums every parameter's gradient, expert pieces over their ranks included: a low
    // bound keeps the clipping active on every step
    const double norm = optim::clip_grad_norm_(lm->parameters(), 0.5);
    opt.step();
    losses.push_back(v);
    norms.push_back(norm);
  }
  losses.insert(losses.end(), norms.begin(), norms.end());
  return losses;
}

}  // namespace

TEST_SUITE("dist") {
  TEST_CASE(
      "hybrid Mamba + MoE LM: 20 steps with experts spread over ranks give one process's losses") {
    const std::vector<double> one = train_hybrid(0, 20);
    std::vector<std::pair<std::string, std::vector<double>>> runs;
    if (dist::world_size() > 1) runs.emplace_back("ep = world", train_hybrid(1, 20));
    if (dist::world_size() == 4) runs.emplace_back("dp 2 x ep 2", train_hybrid(2, 20));
    for (const auto& [name, losses] : runs) {
      CAPTURE(name);
      for (int s = 0; s < 40; ++s) {  // 20 losses, 20 norms
        CAPTURE(s);
        CHECK(std::abs(losses[s] - one[s]) <= 1e-5 * std::abs(one[s]));
      }
    }
    CHECK(one[19] < one[1] - 0.2);
    for (int s = 20; s < 40; ++s) CHECK(one[s] > 0.5);  // clipping was active
  }
}

TEST_SUITE("dist") {
  TEST_CASE("loss-free balancing: the bias moves by the counts of every data rank's tokens") {
    nn::RouterOptions o;
    o.num_experts = 8;
    o.top_k = 2;
    o.bias_update_rate = 0.05;
    manual_seed(21);
    nn::TopKRouter r(6, o, kF64);
    manual_seed(22);
    const Tensor all_x = randn({dist::world_size(), 5, 6}, kF64);
    // one router on every rank's tokens: the counts the update must use
    nn::TopKRouter whole(6, o, kF64);
    whole.load_state_dict(r.state_dict());
    whole.forward(all_x.reshape({-1, 6}));
    whole.update_bias();
    r.forward(all_x.select(0, dist::rank()));
    r.update_bias(dist::world());
    CHECK((r.expert_bias - whole.expert_bias).abs().max().item<double>() == 0);
    CHECK(r.expert_bias.abs().sum().item<double>() > 0);
  }
}
