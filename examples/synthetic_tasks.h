// The Mamba paper's synthetic tasks (Gu & Dao 2023, section 4.1), as batch generators plus a small
// training loop, shared by examples/selective_copying, examples/induction_heads and their tests.
//
// Selective copying: `n_memorize` data tokens at random positions of a run of noise tokens,
// then `n_memorize` marker tokens; at the markers the model must output the data tokens in order.
// Induction heads: random tokens with one "trigger" token somewhere, followed by a target token;
// the sequence ends with the trigger again and the model must output the target.
// Tokens: 0 = noise/trigger special, vocab-1 = marker, data tokens 1..vocab-2. Targets are -100
// (ignored by cross_entropy) except at the scored positions.
#pragma once
#include <coil/coil.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>
#include <vector>

namespace tasks {

using coil::Tensor;

// A stream of Philox numbers for one sample: (seed, sample id) fixes every value.
class SampleRng {
 public:
  SampleRng(uint64_t seed, uint64_t sample)
      : seed_(seed ^ 0x9E3779B97F4A7C15ull), base_(sample << 20) {}
  uint64_t next() {
    auto r = coil::philox4x32(seed_, base_ + counter_++);
    return (static_cast<uint64_t>(r[0]) << 32) | r[1];
  }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }

 private:
  uint64_t seed_, base_, counter_ = 0;
};

struct Batch {
  Tensor inputs;   // (batch, L) int64
  Tensor targets;  // (batch, L) int64, -100 where not scored
};

inline Batch selective_copying(int64_t batch, int64_t noise_len, int64_t n_memorize, int64_t vocab,
                               uint64_t seed, int64_t index) {
  COIL_CHECK(vocab >= 4 && noise_len >= n_memorize && n_memorize > 0,
             "selective_copying: need vocab >= 4 and noise_len >= n_memorize > 0, got vocab ",
             vocab, ", noise_len ", noise_len, ", n_memorize ", n_memorize);
  const int64_t L = noise_len + n_memorize, marker = vocab - 1;
  std::vector<int64_t> in(batch * L, 0), tg(batch * L, -100), pos(noise_len);
  for (int64_t b = 0; b < batch; ++b) {
    SampleRng rng(seed, static_cast<uint64_t>(index * batch + b));
    std::iota(pos.begin(), pos.end(), 0);
    for (int64_t i = 0; i < n_memorize; ++i) std::swap(pos[i], pos[i + rng.below(noise_len - i)]);
    std::sort(pos.begin(), pos.begin() + n_memorize);
    int64_t* row = in.data() + b * L;
    for (int64_t i = 0; i < n_memorize; ++i) {
      int64_t tok = 1 + rng.below(vocab - 2);
      row[pos[i]] = tok;
      row[noise_len + i] = marker;
      tg[b * L + noise_len + i] = tok;
    }
  }
  return {coil::tensor(in, {batch, L}), coil::tensor(tg, {batch, L})};
}

inline Batch induction_heads(int64_t batch, int64_t L, int64_t vocab, uint64_t seed,
                             int64_t index) {
  COIL_CHECK(vocab >= 3 && L >= 4, "induction_heads: need vocab >= 3 and L >= 4, got vocab ", vocab,
             ", L ", L);
  const int64_t trigger = 0;
  std::vector<int64_t> in(batch * L), tg(batch * L, -100);
  for (int64_t b = 0; b < batch; ++b) {
    SampleRng rng(seed, static_cast<uint64_t>(index * batch + b));
    int64_t* row = in.data() + b * L;
    for (int64_t t = 0; t < L; ++t) row[t] = 1 + rng.below(vocab - 1);
    int64_t at = rng.below(L - 3);  // trigger at `at`, target at at+1, before the final trigger
    int64_t target = row[at + 1];
    row[at] = trigger;
    row[L - 1] = trigger;
    tg[b * L + L - 1] = target;
  }
  return {coil::tensor(in, {batch, L}), coil::tensor(tg, {batch, L})};
}

// Fraction of scored positions whose argmax is the target.
inline double accuracy(const Tensor& logits, const Tensor& targets) {
  std::vector<int64_t> pred = coil::to_vector<int64_t>(logits.argmax(-1));
  std::vector<int64_t> tg = coil::to_vector<int64_t>(targets);
  int64_t hit = 0, n = 0;
  for (size_t i = 0; i < tg.size(); ++i)
    if (tg[i] >= 0) {
      ++n;
      hit += pred[i] == tg[i];
    }
  return n ? static_cast<double>(hit) / n : 0;
}

inline coil::nn::MambaConfig task_model(int64_t vocab, bool selective, int64_t layers = 2,
                                        int64_t d_model = 64) {
  coil::nn::MambaConfig c;
  c.vocab_size = vocab;
  c.hidden_size = d_model;
  c.num_hidden_layers = layers;
  c.selective = selective;
  c.pad_vocab_size_multiple = 1;
  return c;
}

struct TrainSettings {
  int64_t steps = 1000, warmup = 50, eval_every = 100, eval_batches = 4;
  double lr = 2e-3, weight_decay = 0.1;
  double min_lr_ratio = 0.1;  // the cosine schedule ends at lr * min_lr_ratio
  double clip = 1.0;          // gradient-norm clipping; 0: none
  // Log the mean training loss since the last evaluation too: with few scored tokens per batch
  // (induction heads scores one per sequence) one batch's loss is too noisy to follow.
  bool mean_loss = false;
  uint64_t seed = 1;
};

// Trains on batches from make_batch(index) and reports eval accuracy on fresh batches
// (make_eval(index)); returns the (step, accuracy) curve. log: print each evaluation.
inline std::vector<std::pair<int64_t, double>> train(
    coil::nn::MambaLM& model, const TrainSettings& s,
    const std::function<Batch(int64_t)>& make_batch, const std::function<Batch(int64_t)>& make_eval,
    bool log = true) {
  using namespace coil;
  auto groups = model.weight_decay_groups();
  optim::AdamWOptions o;
  o.lr = s.lr;
  o.beta2 = 0.95;
  o.weight_decay = s.weight_decay;
  optim::AdamW opt({{groups.decay}, {groups.no_decay, -1, 0.0}}, o);
  optim::LRScheduler sched(opt, optim::LRSchedule::cosine(s.warmup, s.steps, s.min_lr_ratio));
  auto evaluate = [&] {
    NoGradGuard ng;
    double acc = 0;
    for (int64_t i = 0; i < s.eval_batches; ++i) {
      Batch b = make_eval(i);
      acc += accuracy(model.forward(b.inputs), b.targets);
    }
    return acc / s.eval_batches;
  };
  std::vector<std::pair<int64_t, double>> curve;
  double loss_sum = 0;
  int64_t loss_n = 0;
  for (int64_t step = 1; step <= s.steps; ++step) {
    Batch b = make_batch(step);
    Tensor logits = model.forward(b.inputs);
    Tensor loss = cross_entropy(logits.reshape({-1, logits.size(2)}), b.targets.reshape({-1}));
    opt.zero_grad();
    loss.backward();
    if (s.clip > 0) optim::clip_grad_norm_(model.parameters(), s.clip);
    opt.step();
    sched.step();
    if (s.mean_loss) {
      loss_sum += loss.item<double>();
      ++loss_n;
    }
    if (step % s.eval_every == 0 || step == s.steps) {
      double acc = evaluate();
      curve.emplace_back(step, acc);
      if (log && s.mean_loss)
        std::printf("step %6lld  loss %.4f  mean loss %.3g  eval accuracy %.4f\n",
                    static_cast<long long>(step), loss.item<double>(), loss_sum / loss_n, acc);
      else if (log)
        std::printf("step %6lld  loss %.4f  eval accuracy %.4f\n", static_cast<long long>(step),
                    loss.item<double>(), acc);
      if (log) std::fflush(stdout);
      loss_sum = 0;
      loss_n = 0;
    }
  }
  return curve;
}

}  // namespace tasks
