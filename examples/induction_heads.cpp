// induction_heads: the Mamba paper's induction heads task (section 4.1.2, Table 2). Train at
// length 256 (vocabulary 16, 2 layers, d_model 64), then test at lengths 256 .. max-len: the
// paper's Mamba keeps 100% up to about a million tokens. The defaults are a shortened setting.
//   induction_heads [--steps S] [--batch B] [--train-len L] [--max-len M] [--lr X] [--warmup W]
//   [--weight-decay D] [--min-lr R] [--clip C] [--curriculum L1:S1:B1,L2:S2:B2,...|none]
// --curriculum trains S1 steps of batch B1 at length L1, then the next stage, ..., and only then
// the --steps steps of batch --batch at --train-len; one cosine schedule spans all the steps.
// Evaluation during training is always at --train-len.
//
// Why a curriculum: only the final position is scored, one signal per sequence, and at length 256
// the loss sits at ln 15 for thousands of steps (batch 8 or 16, lr 1e-3 or 3e-3). At length 32
// the mechanism appears within about 150 steps (batch 128, same time per step), and then carries
// over to longer sequences. The default (32, 64, 128, then 1500 steps at 256; about 4 minutes on
// one core) reaches 100% at 256 and keeps it up to 16384; weight decay 0.1 instead of 0 loses
// accuracy from 4096 on.
#include <chrono>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "synthetic_tasks.h"

using namespace coil;

namespace {

struct Stage {
  int64_t len, steps, batch;
};

// "L:S:B,L:S:B,..." -> stages.
std::vector<Stage> parse_curriculum(const std::string& spec) {
  std::vector<Stage> out;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    Stage st{};
    char c1 = 0, c2 = 0;
    std::stringstream is(item);
    is >> st.len >> c1 >> st.steps >> c2 >> st.batch;
    COIL_CHECK(is && c1 == ':' && c2 == ':' && st.len >= 4 && st.steps > 0 && st.batch > 0,
               "induction_heads: bad --curriculum stage '", item, "' (want LEN:STEPS:BATCH)");
    out.push_back(st);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) try {
  int64_t steps = 1500, batch = 16, train_len = 256, max_len = 1 << 16, vocab = 16, layers = 2,
          d_model = 64, eval_every = 250, eval_samples = 64, warmup = -1, eval_batches = 8;
  double lr = 3e-3, weight_decay = 0, min_lr = 0.1, clip = 1.0;
  std::vector<Stage> curriculum = parse_curriculum("32:300:128,64:200:64,128:200:32");
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
    else if (k == "--warmup")
      warmup = std::stoll(val());
    else if (k == "--weight-decay")
      weight_decay = std::stod(val());
    else if (k == "--min-lr")
      min_lr = std::stod(val());
    else if (k == "--clip")
      clip = std::stod(val());
    else if (k == "--eval-batches")
      eval_batches = std::stoll(val());
    else if (k == "--curriculum") {
      std::string v = val();
      curriculum = v == "none" ? std::vector<Stage>{} : parse_curriculum(v);
    } else
      fail("induction_heads: unknown option '", k, "'");
  }
  // The final stage is the one at --train-len.
  curriculum.push_back({train_len, steps, batch});
  int64_t total = 0;
  for (const Stage& st : curriculum) total += st.steps;
  if (warmup < 0) warmup = std::min<int64_t>(200, total / 10);
  std::printf(
      "induction heads: vocab %lld, train length %lld, %lld layers, d_model %lld, %lld steps "
      "of batch %lld, lr %g, warmup %lld, weight decay %g, min lr ratio %g, clip %g\n",
      (long long)vocab, (long long)train_len, (long long)layers, (long long)d_model,
      (long long)steps, (long long)batch, lr, (long long)warmup, weight_decay, min_lr, clip);
  if (curriculum.size() > 1) {
    std::printf("curriculum (length:steps:batch):");
    for (const Stage& st : curriculum)
      std::printf(" %lld:%lld:%lld", (long long)st.len, (long long)st.steps, (long long)st.batch);
    std::printf(", %lld steps in all\n", (long long)total);
  }
  manual_seed(0);
  nn::MambaLM model(tasks::task_model(vocab, true, layers, d_model));
  tasks::TrainSettings s;
  s.steps = total;
  s.eval_every = eval_every;
  s.eval_batches = eval_batches;
  s.lr = lr;
  s.warmup = warmup;
  s.weight_decay = weight_decay;
  s.min_lr_ratio = min_lr;
  s.clip = clip;
  s.mean_loss = true;
  auto train_batch = [&](int64_t i) {  // i counts from 1 over all stages
    int64_t end = 0;
    for (size_t k = 0; k < curriculum.size(); ++k) {
      const Stage& st = curriculum[k];
      end += st.steps;
      // Each stage draws from its own seed: batch sizes differ, so sample ids would repeat.
      if (i <= end || k + 1 == curriculum.size())
        return tasks::induction_heads(st.batch, st.len, vocab,
                                      k + 1 == curriculum.size() ? 1 : 10 + k, i);
    }
    return tasks::Batch{};
  };
  auto t0 = std::chrono::steady_clock::now();
  tasks::train(model, s, train_batch,
               [&](int64_t i) { return tasks::induction_heads(8, train_len, vocab, 2, i); });
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
