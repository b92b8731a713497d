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
//
// Every rank saves its own checkpoint (its experts are its own) into the run folder --out RUN
// every --save-every steps and at the end: RUN/checkpoint.rank<r>.safetensors, with
// train_options.json and metrics.csv. Ctrl-C (SIGINT) or SIGTERM saves and exits (code 128 +
// signal); --resume RUN continues with the same world size and --ep.
#include <coil/coil.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>

#include "text_util.h"

using namespace coil;

namespace {

struct Args {
  std::string data = "/usr/share/games/fortunes";
  int64_t steps = 200, batch = 8, seq_len = 128, layers = 2, d_model = 128, experts = 8, ep = 1;
  int64_t save_every = 50;
  double lr = 3e-3;
  int threads = 0;
  std::string out = "runs/moe", resume;
};

// The options that define a run, kept in its folder for --resume.
std::string options_json(const Args& a) {
  json::Value j = json::Value::object();
  j.set("data", a.data);
  for (auto [k, v] : {std::pair<const char*, int64_t>{"steps", a.steps},
                      {"batch", a.batch},
                      {"seq_len", a.seq_len},
                      {"layers", a.layers},
                      {"d_model", a.d_model},
                      {"experts", a.experts},
                      {"ep", a.ep},
                      {"world_size", dist::world_size()}})
    j.set(k, v);
  j.set("lr", a.lr);
  return j.dump(2) + "\n";
}

void read_options(Args& a) {
  const json::Value j = json::parse_file(a.resume + "/train_options.json");
  a.data = j.get<std::string>("data", a.data);
  a.steps = j.get<int64_t>("steps", a.steps);
  a.batch = j.get<int64_t>("batch", a.batch);
  a.seq_len = j.get<int64_t>("seq_len", a.seq_len);
  a.layers = j.get<int64_t>("layers", a.layers);
  a.d_model = j.get<int64_t>("d_model", a.d_model);
  a.experts = j.get<int64_t>("experts", a.experts);
  a.ep = j.get<int64_t>("ep", a.ep);
  a.lr = j.get<double>("lr", a.lr);
  const int64_t world = j.get<int64_t>("world_size", 1);
  COIL_CHECK(world == dist::world_size(), "train_moe: ", a.resume, " was trained on ", world,
             " ranks; resume it on as many (this job has ", dist::world_size(), ")");
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help") {
      std::printf(
          "usage: train_moe [--data PATH] [--steps N] [--batch N] [--seq-len N] [--layers N]\n"
          "                 [--d-model N] [--experts N] [--ep N] [--lr X] [--threads N]\n"
          "                 [--out RUN] [--save-every N] [--resume RUN]\n");
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
    else if (k == "--out")
      a.out = v;
    else if (k == "--resume")
      a.resume = v;
    else if (k == "--save-every")
      a.save_every = std::stoll(v);
    else
      fail("train_moe: unknown option '", k, "' (see --help)");
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) try {
  Args a = parse(argc, argv);
  if (a.threads > 0) set_num_threads(a.threads);
  dist::init();
  if (!a.resume.empty()) {
    read_options(a);
    a.out = a.resume;
  }
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
  const std::string csv = a.out + "/metrics.csv";
  std::vector<demo::MetricRow> metrics;
  int64_t start = 0;
  if (!a.resume.empty()) {
    start = nn::load_train_state(nn::train_state_path(a.out), *lm, opt);
    Tensor lo = full({1}, static_cast<double>(start), Options(kF64)), hi = lo.clone();
    if (world > 1) {  // every rank's file must be from the same step
      dist::all_reduce(lo, dist::ReduceOp::kMin);
      dist::all_reduce(hi, dist::ReduceOp::kMax);
    }
    COIL_CHECK(lo.item<double>() == hi.item<double>(), "train_moe: the ranks' checkpoints in ",
               a.out, " are from different steps (", lo.item<double>(), " to ", hi.item<double>(),
               "): a save was interrupted between ranks");
    sched.set_step(start);
    metrics = demo::read_metrics(csv);
    while (!metrics.empty() && metrics.back().step > start) metrics.pop_back();
    if (rank == 0) std::printf("resumed %s at step %lld\n", a.out.c_str(), (long long)start);
  } else if (rank == 0) {
    std::filesystem::create_directories(a.out);
    io::write_text_file_atomic(a.out + "/train_options.json", options_json(a));
  }
  dist::barrier();
  auto save = [&](int64_t step) {
    nn::save_train_state(nn::train_state_path(a.out), *lm, opt, step);
    dist::barrier();  // every rank's file is written before rank 0 records the step
    if (rank == 0) demo::write_metrics(csv, metrics);
  };
  nn::install_stop_handler();
  auto t0 = std::chrono::steady_clock::now();
  double smoothed = 0;
  for (int64_t s = start; s < a.steps; ++s) {
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
    smoothed = s == start ? v.item<double>() : 0.9 * smoothed + 0.1 * v.item<double>();
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double tok_s = (s + 1 - start) * a.batch * L / secs;
    metrics.push_back({s + 1, v.item<double>() / 0.6931471805599453, NAN, opt.lr(), tok_s});
    if (rank == 0 && ((s + 1) % 20 == 0 || s + 1 == a.steps))
      std::printf("step %5lld  loss %.3f bits/byte  %.0f tokens/s\n", static_cast<long long>(s + 1),
                  smoothed / 0.6931471805599453, tok_s);
    if (const int sig = nn::stop_requested_by_any_rank()) {
      save(s + 1);
      if (rank == 0)
        std::printf("%s at step %lld: saved %s; continue with --resume %s\n", nn::signal_name(sig),
                    static_cast<long long>(s + 1), a.out.c_str(), a.out.c_str());
      return 128 + sig;
    }
    if ((s + 1) % a.save_every == 0 && s + 1 < a.steps) save(s + 1);
  }
  save(a.steps);
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
