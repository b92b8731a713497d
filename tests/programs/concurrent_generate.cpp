// Inference from several threads on one shared model (issue 10): four threads generate at once
// from the same MambaLM and the same Mamba-2 LM, in eval mode under NoGradGuard, greedily and by
// sampling. Greedy outputs must equal those of a run on one thread. Built with COIL_TSAN=ON
// (ThreadSanitizer, no OpenMP) it shows that nothing they share is written without a lock.
#include <coil/coil.h>

#include <cstdio>
#include <thread>
#include <vector>

using namespace coil;

namespace {

nn::MambaConfig config(bool mamba2) {
  nn::MambaConfig c;
  c.model_type = mamba2 ? "mamba2" : "mamba";
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.state_size = 8;
  c.num_heads = 4;
  c.head_dim = 16;
  c.n_groups = 1;
  c.chunk_size = 8;
  return c;
}

std::vector<int64_t> ids_of(const Tensor& t) {
  const Tensor c = t.contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

}  // namespace

int main() try {
  constexpr int kThreads = 4, kTokens = 12;
  int checked = 0;
  for (bool mamba2 : {false, true}) {
    manual_seed(11);
    auto model = std::make_shared<nn::MambaLM>(config(mamba2));
    model->eval();
    std::vector<Tensor> prompts;
    for (int t = 0; t < kThreads; ++t) prompts.push_back(randint(0, 64, {2, 5 + t}, Options(kI64)));
    nn::SamplingOptions greedy;
    greedy.greedy = true;
    nn::SamplingOptions sampled;
    sampled.temperature = 0.9;
    sampled.top_k = 10;
    std::vector<std::vector<int64_t>> expected;
    {
      NoGradGuard ng;
      for (int t = 0; t < kThreads; ++t)
        expected.push_back(ids_of(model->generate(prompts[t], kTokens, greedy)));
    }
    std::vector<std::vector<int64_t>> got(kThreads), sample_shape(kThreads);
    std::vector<std::string> errors(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        try {
          NoGradGuard ng;
          for (int rep = 0; rep < 2; ++rep) {
            got[t] = ids_of(model->generate(prompts[t], kTokens, greedy));
            Tensor s = model->generate(prompts[t], kTokens, sampled);
            sample_shape[t] = {s.size(0), s.size(1)};
          }
        } catch (const std::exception& e) {
          errors[t] = e.what();
        }
      });
    for (auto& th : threads) th.join();
    for (int t = 0; t < kThreads; ++t) {
      if (!errors[t].empty()) fail("thread ", t, ": ", errors[t]);
      if (got[t] != expected[t])
        fail(mamba2 ? "mamba2" : "mamba", ": thread ", t, "'s greedy tokens differ from the ",
             "single-threaded run's");
      if (sample_shape[t] != std::vector<int64_t>{2, 5 + t + kTokens})
        fail("thread ", t, ": sampled output has the wrong shape");
      ++checked;
    }
  }
  std::printf(
      "concurrent_generate: %d threads x 2 models generated concurrently; greedy tokens "
      "equal the single-threaded run's (%d checks)\n",
      kThreads, checked);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "concurrent_generate: %s\n", e.what());
  return 1;
}
