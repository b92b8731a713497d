// generate: sample text from a model saved by train_lm (or any byte-level MambaLM folder).
//   generate RUN [--prompt TEXT] [--max-new N] [--temperature X] [--top-k K] [--top-p P]
//                [--greedy] [--seed N]
#include <coil/coil.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "text_util.h"

using namespace coil;

int main(int argc, char** argv) try {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::printf(
        "usage: generate RUN [--prompt TEXT] [--max-new N] [--temperature X] [--top-k K] "
        "[--top-p P] [--greedy] [--seed N]\n");
    return argc < 2 ? 1 : 0;
  }
  std::string run = argv[1], prompt = "The ";
  int64_t max_new = 300;
  uint64_t seed = 0;
  nn::SamplingOptions s;
  s.temperature = 0.8;
  s.top_k = 40;
  s.top_p = 0.95;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      COIL_CHECK(i + 1 < argc, "generate: ", k, " needs a value");
      return argv[++i];
    };
    if (k == "--prompt")
      prompt = val();
    else if (k == "--max-new")
      max_new = std::stoll(val());
    else if (k == "--temperature")
      s.temperature = std::stod(val());
    else if (k == "--top-k")
      s.top_k = std::stoll(val());
    else if (k == "--top-p")
      s.top_p = std::stod(val());
    else if (k == "--greedy")
      s.greedy = true;
    else if (k == "--seed")
      seed = std::stoull(val());
    else
      fail("generate: unknown option '", k, "'");
  }
  COIL_CHECK(!prompt.empty(), "generate: --prompt must not be empty");
  manual_seed(seed);
  auto model = nn::MambaLM::from_pretrained(run);
  COIL_CHECK(model->config().vocab_size >= 256, "generate: ", run,
             " is not a byte-level model (vocab_size ", model->config().vocab_size, ")");
  auto t0 = std::chrono::steady_clock::now();
  Tensor out = model->generate(demo::bytes_to_ids(prompt), max_new, s);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%s\n", demo::ids_to_text(out.select(0, 0)).c_str());
  std::fprintf(stderr, "(%lld bytes in %.2f s, %.0f tokens/s)\n", static_cast<long long>(max_new),
               secs, max_new / secs);
  return 0;
} catch (const coil::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
