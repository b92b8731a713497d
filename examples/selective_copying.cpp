// selective_copying: the Mamba paper's selective copying task (section 4.1.1, Table 1) for the
// Mamba-1 mixer and the non-selective (S4-like) ablation of ../shared/MATH.md section 7.
// The paper: vocabulary 16, 16 tokens to memorise among 4096 noise tokens, 2 layers, d_model 64,
// 400k steps: Mamba (S6) 99.8% accuracy, S4 18.3%. The defaults here are a shortened setting.
//   selective_copying [--noise-len N] [--memorize K] [--steps S] [--batch B] [--model
//   both|mamba|s4]
#include <chrono>
#include <cstdio>
#include <string>

#include "synthetic_tasks.h"

using namespace coil;

int main(int argc, char** argv) try {
  int64_t noise_len = 256, memorize = 16, vocab = 16, steps = 2000, batch = 32, layers = 2,
          d_model = 64, eval_every = 250;
  double lr = 2e-3;
  std::string which = "both";
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      COIL_CHECK(i + 1 < argc, "selective_copying: ", k, " needs a value");
      return argv[++i];
    };
    if (k == "--noise-len")
      noise_len = std::stoll(val());
    else if (k == "--memorize")
      memorize = std::stoll(val());
    else if (k == "--vocab")
      vocab = std::stoll(val());
    else if (k == "--steps")
      steps = std::stoll(val());
    else if (k == "--batch")
      batch = std::stoll(val());
    else if (k == "--layers")
      layers = std::stoll(val());
    else if (k == "--d-model")
      d_model = std::stoll(val());
    else if (k == "--eval-every")
      eval_every = std::stoll(val());
    else if (k == "--lr")
      lr = std::stod(val());
    else if (k == "--model")
      which = val();
    else
      fail("selective_copying: unknown option '", k, "'");
  }
  COIL_CHECK(which == "both" || which == "mamba" || which == "s4",
             "selective_copying: --model must be both, mamba or s4, got ", which);
  std::printf(
      "selective copying: vocab %lld, %lld tokens among %lld noise, %lld layers, d_model %lld, "
      "%lld steps of batch %lld, lr %g\n",
      (long long)vocab, (long long)memorize, (long long)noise_len, (long long)layers,
      (long long)d_model, (long long)steps, (long long)batch, lr);
  tasks::TrainSettings s;
  s.steps = steps;
  s.eval_every = eval_every;
  s.lr = lr;
  s.warmup = std::min<int64_t>(100, steps / 10);
  auto train_batch = [&](int64_t i) {
    return tasks::selective_copying(batch, noise_len, memorize, vocab, 1, i);
  };
  auto eval_batch = [&](int64_t i) {  // fresh sequences: another seed
    return tasks::selective_copying(batch, noise_len, memorize, vocab, 2, i);
  };
  std::vector<std::pair<std::string, double>> results;
  for (bool selective : {true, false}) {
    if ((selective && which == "s4") || (!selective && which == "mamba")) continue;
    const char* name = selective ? "Mamba (S6)" : "non-selective (S4-like)";
    std::printf("\n== %s ==\n", name);
    manual_seed(0);
    nn::MambaLM model(tasks::task_model(vocab, selective, layers, d_model));
    auto t0 = std::chrono::steady_clock::now();
    auto curve = tasks::train(model, s, train_batch, eval_batch);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s: final accuracy %.4f (%.0f s)\n", name, curve.back().second, secs);
    results.emplace_back(name, curve.back().second);
  }
  std::printf("\n");
  for (auto& [n, a] : results) std::printf("result model=\"%s\" accuracy=%.4f\n", n.c_str(), a);
  return 0;
} catch (const coil::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
