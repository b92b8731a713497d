// induction_heads: the Mamba paper's induction heads task (section 4.1.2, Table 2). Train at
// length 256 (vocabulary 16, 2 layers, d_model 64), then test at lengths 256 .. max-len: the
// paper's Mamba keeps 100% up to about a million tokens. The defaults are a shortened setting.
//   induction_heads [--steps S] [--batch B] [--train-len L] [--max-len M] [--lr X]
#include <chrono>
#include <cstdio>
#include <string>

#include "synthetic_tasks.h"

using namespace coil;

int main(int argc, char** argv) try {
  int64_t steps = 4000, batch = 8, train_len = 256, max_len = 1 << 16, vocab = 16, layers = 2,
          d_model = 64, eval_every = 500, eval_samples = 64;
  double lr = 1e-3;
  std::string mixer = "mamba";
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      COIL_CHECK(i + 1 < argc, "induction_heads: ", k, " needs a value");
      return argv[++i];
    };
    if (k == "--steps")
      steps = std::stoll(val());
    else if (k == "--batch")
      batch = std::stoll(val());
    else if (k == "--train-len")
      train_len = std::stoll(val());
    else if (k == "--max-len")
      max_len = std::stoll(val());
    else if (k == "--lr")
      lr = std::stod(val());
    else if (k == "--eval-every")
      eval_every = std::stoll(val());
    else if (k == "--eval-samples")
      eval_samples = std::stoll(val());
    else if (k == "--d-model")
      d_model = std::stoll(val());
    else if (k == "--layers")
      layers = std::stoll(val());
    else
      fail("induction_heads: unknown option '", k, "'");
  }
  std::printf(
      "induction heads: vocab %lld, train length %lld, %lld layers, d_model %lld, %lld steps "
      "of batch %lld, lr %g\n",
      (long long)vocab, (long long)train_len, (long long)layers, (long long)d_model,
      (long long)steps, (long long)batch, lr);
  manual_seed(0);
  nn::MambaLM model(tasks::task_model(vocab, true, layers, d_model));
  tasks::TrainSettings s;
  s.steps = steps;
  s.eval_every = eval_every;
  s.eval_batches = 8;
  s.lr = lr;
  s.warmup = std::min<int64_t>(200, steps / 10);
  auto t0 = std::chrono::steady_clock::now();
  tasks::train(
      model, s, [&](int64_t i) { return tasks::induction_heads(batch, train_len, vocab, 1, i); },
      [&](int64_t i) { return tasks::induction_heads(batch, train_len, vocab, 2, i); });
  std::printf("trained in %.0f s\n\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  // Test on fresh sequences, longer and longer; batches shrink so memory stays bounded.
  NoGradGuard ng;
  model.eval();
  for (int64_t L = train_len; L <= max_len; L *= 2) {
    const int64_t b = std::max<int64_t>(1, std::min<int64_t>(eval_samples, (int64_t(1) << 18) / L));
    int64_t done = 0;
    double hits = 0;
    auto te = std::chrono::steady_clock::now();
    for (int64_t i = 0; done < eval_samples; ++i, done += b) {
      tasks::Batch bt = tasks::induction_heads(b, L, vocab, 3, i + L);
      // Only the last position is scored: keep its logits.
      Tensor logits = model.forward(bt.inputs).narrow(1, L - 1, 1);
      hits += b * tasks::accuracy(logits, bt.targets.narrow(1, L - 1, 1));
    }
    std::printf("result length=%lld accuracy=%.4f samples=%lld seconds=%.1f\n", (long long)L,
                hits / done, (long long)done,
                std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count());
    std::fflush(stdout);
  }
  return 0;
} catch (const coil::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
