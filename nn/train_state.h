// A training script's own checkpoint in one safetensors file: the module's state_dict, the
// optimizer's (moments and step counts), the RNG, the step and any extra metadata the script
// wants back (its options). Written atomically with per-tensor checksums (nn/io/safetensors.h).
// Under expert or tensor parallelism every rank saves its own file (train_state_path): its
// parameters are its own pieces. LMTrainer keeps its own format (nn/lm_trainer.h).
//
//   nn::save_train_state(nn::train_state_path(dir), model, opt, step, {{"lr", "0.003"}});
//   int64_t step = nn::load_train_state(nn::train_state_path(dir), model, opt);
#pragma once
#include <string>

#include "io/safetensors.h"
#include "module.h"
#include "optim/optim.h"

namespace coil::nn {

// The tensors of a training checkpoint: "model.<name>" (a DTensor as this rank's piece), then
// "optim.<name>"; and back (another name is a coil::Error naming `who` and the file).
io::NamedTensors checkpoint_tensors(const Module& model, const optim::Optimizer& opt);
void split_checkpoint_tensors(const io::SafetensorsFile& f, const std::string& who,
                              const std::string& path, NamedTensors& model,
                              optim::StateDict& optim);

// A checkpoint's metadata entries; errors name `who` and the file. An unsigned number is decimal
// digits only (stoull alone would read "-1" as 2^64 - 1); a step is at most 2^53 (exact as a
// double, far from int64's end).
struct CheckpointMeta {
  const io::Metadata& meta;
  std::string who, path;
  bool has(const std::string& key) const;
  std::string str(const std::string& key) const;
  uint64_t u64(const std::string& key) const;
  int64_t step(const std::string& key) const;
};

// dir + "/checkpoint.rank<r>.safetensors" for this process's rank in the world.
std::string train_state_path(const std::string& dir);
void save_train_state(const std::string& path, const Module& model, const optim::Optimizer& opt,
                      int64_t step, const io::Metadata& extra = {});
// Restores what save_train_state wrote (the RNG included) and returns the step; `extra` gets the
// metadata. A file from another model or optimizer is a coil::Error naming it, and leaves the
// model and the optimizer as they were when the tensors do not fit.
int64_t load_train_state(const std::string& path, Module& model, optim::Optimizer& opt,
                         io::Metadata* extra = nullptr);

}  // namespace coil::nn
