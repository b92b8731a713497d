// LMTrainer::load_checkpoint on arbitrary bytes, into a tiny Mamba LM (vocabulary 16, width 4,
// one layer) made afresh for each input. A bad checkpoint is a coil::Error; one that loads must
// leave a trainer that takes a step and saves again.
#include "fuzz_util.h"

#include <coil/nn/lm_trainer.h>

using namespace coil;

namespace {

std::string path, corpus_path, saved_path;

nn::MambaConfig tiny_config() {
  nn::MambaConfig c;
  c.vocab_size = 16;
  c.hidden_size = 4;
  c.state_size = 2;
  c.num_hidden_layers = 1;
  c.conv_kernel = 2;
  return c;
}

std::unique_ptr<nn::LMTrainer> make_trainer() {
  manual_seed(0);
  nn::TrainOptions o;
  o.batch = 1;
  o.seq_len = 8;
  o.total_steps = 20;
  o.warmup_steps = 2;
  return std::make_unique<nn::LMTrainer>(std::make_shared<nn::MambaLM>(tiny_config()),
                                         nn::ByteCorpus::open(corpus_path), o);
}

void write_seeds(const std::string& dir) {
  auto t = make_trainer();
  t->save_checkpoint(dir + "/step0.safetensors");
  t->train_step();
  t->save_checkpoint(dir + "/step1.safetensors");
  const std::string step1 = io::read_file(dir + "/step1.safetensors");
  fuzz::write_file(dir + "/step1_no_checksums.safetensors", fuzz::strip_checksums(step1));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_common();
  // The training text: tokens below the vocabulary of 16.
  corpus_path = fuzz::temp_dir() + "/text";
  std::string text(256, '\0');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>((i * 7) % 16);
  fuzz::write_file(corpus_path, text);
  fuzz::write_seeds_if_asked(write_seeds);
  path = fuzz::temp_dir() + "/checkpoint.safetensors";
  saved_path = fuzz::temp_dir() + "/saved.safetensors";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::write_file(path, data, size);
  auto t = make_trainer();
  try {
    t->load_checkpoint(path);
  } catch (const Error&) {
    return 0;
  }
  // Loaded: the restored state trains and saves (an Error here is a bug: not caught).
  t->train_step();
  t->save_checkpoint(saved_path);
  make_trainer()->load_checkpoint(saved_path);
  return 0;
}
