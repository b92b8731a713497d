// train_moe: train the hybrid Mamba-2 + MoE language model (nn/hybrid.h, IBM Granite 4.0-H's
// layout) on bytes of text, the experts spread over the ranks of an mpirun job:
//
//   ./build/examples/train_moe --steps 200
//   mpirun -np 2 ./build/examples/train_moe --ep 2          # experts split over 2 ranks
//   mpirun -np 4 ./build/examples/train_moe --ep 2          # 2 (data) x 2 (expert)
//
// Every rank takes batch / world_size rows of each batch (the ranks of an expert group each
// route their own tokens); dense gradients are averaged over the world, each expert's gradient
// gathers every token routed to it (nn::DataParallel with shard_replicas), so the run computes
// what one process computes on the whole batch. Rank 0 prints.
#include <coil/coil.h>

#include <chrono>
#include <cstdio>
#include <string>

using namespace coil;

namespace {

struct Args {
  std::string data = "/usr/share/games/fortunes";
  int64_t steps = 200, batch = 8, seq_len = 128, layers = 2, d_model = 128, experts = 8, ep = 1;
  double lr = 3e-3;
  int threads = 0;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help") {
      std::printf(
          "usage: train_moe [--data PATH] [--steps N] [--batch N] [--seq-len N] [--layers N]\n"
          "                 [--d-model N] [--experts N] [--ep N] [--lr X] [--threads N]\n");
      std::exit(0);
    }
    COIL_CHECK(i + 1 < argc, "train_moe: ", k, " needs a value");
    const std::string v = argv[++i];
    if (k == "--data")
      a.data = v;
    else if (k == "--steps")
      a.steps = std::stoll(v);
    else if (k == "--batch")
      a.batch = std::stoll(v);
    else if (k == "--seq-len")
      a.seq_len = std::stoll(v);
    else if (k == "--layers")
      a.layers = std::stoll(v);
    else if (k == "--d-model")
      a.d_model = std::stoll(v);
    else if (k == "--experts")
      a.experts = std::stoll(v);
    else if (k == "--ep")
      a.ep = std::stoll(v);
    else if (k == "--lr")
      a.lr = std::stod(v);
    else if (k == "--threads")
      a.threads = std::stoi(v);
    else
      fail("train_moe: unknown option '", k, "' (see --help)");
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  if (a.threads > 0) set_num_threads(a.threads);
  dist::init();
  const int64_t world = dist::world_size(), rank = dist::rank();
  COIL_CHECK(a.ep >= 1 && world % a.ep == 0, "train_moe: --ep ", a.ep,
             " must divide the world size ", world);
  COIL_CHECK(a.batch % world == 0, "train_moe: --batch ", a.batch, " must split over ", world,
             " ranks");
  manual_seed(0);
  nn::ByteCorpus data = nn::ByteCorpus::open(a.data);
  nn::HybridConfig c;
  c.vocab_size = 256;
  c.hidden_size = a.d_model;
  c.num_hidden_layers = a.layers;
  c.num_local_experts = a.experts;
  c.num_experts_per_tok = 2;
  c.intermediate_size = a.d_model;
  c.shared_intermediate_size = a.d_model;
  c.mamba_d_head = 32;
  c.mamba_n_heads = 2 * a.d_model / 32;
  c.mamba_d_state = 64;
  c.mamba_chunk_size = 64;
  c.router_aux_loss_coef = 0.01;
  auto lm = std::make_shared<nn::HybridLM>(c);

  std::unique_ptr<dist::DeviceMesh> mesh;
  std::unique_ptr<nn::DataParallel> dp;
  if (world > 1) {
    nn::DataParallelOptions o;
    if (a.ep > 1) {
      mesh = std::make_unique<dist::DeviceMesh>(Shape{world / a.ep, a.ep},
                                                std::vector<std::string>{"dp", "ep"});
      lm->set_expert_parallel(dist::ExpertParallel{mesh->group("ep")});
      if (world / a.ep > 1) o.shard_replicas = mesh->group("dp");
    }
    dp = std::make_unique<nn::DataParallel>(*lm, o);
  }
  optim::AdamWOptions ao;
  ao.lr = a.lr;
  ao.beta2 = 0.95;
  optim::AdamW opt(lm->parameters(), ao);
  optim::LRScheduler sched(opt, optim::LRSchedule::cosine(a.steps / 10, a.steps, 0.1));
  if (rank == 0)
    std::printf(
        "hybrid Mamba-2 + MoE: %lld layers, d_model %lld, %lld experts (top 2), %.2fM "
        "parameters; %lld ranks, experts over %lld\n",
        static_cast<long long>(a.layers), static_cast<long long>(a.d_model),
        static_cast<long long>(a.experts), lm->num_parameters() / 1e6,
        static_cast<long long>(world), static_cast<long long>(a.ep));

  const int64_t rows = a.batch / world, L = a.seq_len;
  auto t0 = std::chrono::steady_clock::now();
  double smoothed = 0;
  for (int64_t s = 0; s < a.steps; ++s) {
    Tensor w = data.batch(false, a.batch, L, 7, s).narrow(0, rank * rows, rows);
    Tensor logits = lm->forward(w.narrow(1, 0, L));
    Tensor ce =
        cross_entropy(logits.reshape({rows * L, 256}), w.narrow(1, 1, L).reshape({rows * L}));
    Tensor loss = ce + lm->aux_loss();
    opt.zero_grad();
    loss.backward();
    if (dp) dp->finish_gradient_sync();
    optim::clip_grad_norm_(lm->parameters(), 1.0);
    opt.step();
    sched.step();
    Tensor v = full({1}, ce.item<double>(), Options(kF64));
    if (world > 1) dist::all_reduce(v, dist::ReduceOp::kAvg);
    smoothed = s == 0 ? v.item<double>() : 0.9 * smoothed + 0.1 * v.item<double>();
    if (rank == 0 && ((s + 1) % 20 == 0 || s + 1 == a.steps)) {
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::printf("step %5lld  loss %.3f bits/byte  %.0f tokens/s\n", static_cast<long long>(s + 1),
                  smoothed / 0.6931471805599453, (s + 1) * a.batch * L / secs);
    }
  }
  if (rank == 0) {
    const std::vector<int64_t> counts = to_vector<int64_t>(
        std::static_pointer_cast<nn::HybridBlock>(lm->model->layers->named_children()[0].second)
            ->block_sparse_moe->router->tokens_per_expert());
    std::printf("layer 0 tokens per expert (last step, rank 0):");
    for (int64_t n : counts) std::printf(" %lld", static_cast<long long>(n));
    std::printf("\n");
  }
  return 0;
} catch (const coil::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
