#include "train_state.h"

#include <unordered_map>

#include "../autograd/grad_mode.h"
#include "../core/error.h"
#include "../core/rng.h"
#include "../dist/dtensor.h"
#include "../dist/process_group.h"

namespace coil::nn {

namespace {
constexpr const char* kFormat = "coil.train_state";

// The model's tensors as this rank holds them: a DTensor's local piece (an expert-parallel
// layer's own experts). The optimizer's state already holds pieces.
NamedTensors local_state(const Module& m) {
  NamedTensors out;
  for (auto& [name, t] : m.state_dict_untied())
    out.emplace_back(name, dist::is_dtensor(t) ? dist::to_local(t) : t);
  return out;
}
}  // namespace

bool CheckpointMeta::has(const std::string& key) const {
  for (const auto& kv : meta)
    if (kv.first == key) return true;
  return false;
}

std::string CheckpointMeta::str(const std::string& key) const {
  for (const auto& [k, v] : meta)
    if (k == key) return v;
  fail(who, ": '", path, "' has no '", key, "' in its metadata");
}

uint64_t CheckpointMeta::u64(const std::string& key) const {
  const std::string s = str(key);
  bool digits = !s.empty() && s.size() <= 19;  // 19 digits always fit in 64 bits
  for (char c : s) digits = digits && c >= '0' && c <= '9';
  COIL_CHECK(digits, who, ": '", path, "': ", key, " is not a number: '", s, "'");
  return std::stoull(s);
}

int64_t CheckpointMeta::step(const std::string& key) const {
  const uint64_t v = u64(key);
  COIL_CHECK(v <= (uint64_t(1) << 53), who, ": '", path, "': ", key, " ", v,
             " is out of range (at most 2^53)");
  return static_cast<int64_t>(v);
}

io::NamedTensors checkpoint_tensors(const Module& model, const optim::Optimizer& opt) {
  io::NamedTensors tensors;
  for (auto& [name, t] : local_state(model)) tensors.emplace_back("model." + name, t);
  for (auto& [name, t] : opt.state_dict()) tensors.emplace_back("optim." + name, t);
  return tensors;
}

void split_checkpoint_tensors(const io::SafetensorsFile& f, const std::string& who,
                              const std::string& path, NamedTensors& model,
                              optim::StateDict& optim) {
  for (auto& [name, t] : f.tensors) {
    if (name.rfind("model.", 0) == 0)
      model.emplace_back(name.substr(6), t);
    else if (name.rfind("optim.", 0) == 0)
      optim.emplace_back(name.substr(6), t);
    else
      fail(who, ": '", path, "': unexpected tensor '", name, "'");
  }
}

std::string train_state_path(const std::string& dir) {
  return dir + "/checkpoint.rank" + std::to_string(dist::rank()) + ".safetensors";
}

void save_train_state(const std::string& path, const Module& model, const optim::Optimizer& opt,
                      int64_t step, const io::Metadata& extra) {
  const io::NamedTensors tensors = checkpoint_tensors(model, opt);
  const RngState rng = get_rng_state();
  io::Metadata meta = {{"format", kFormat},
                       {"step", std::to_string(step)},
                       {"rng_seed", std::to_string(rng.seed)},
                       {"rng_offset", std::to_string(rng.offset)}};
  for (const auto& kv : extra) {
    COIL_CHECK(kv.first != "format" && kv.first != "step" && kv.first.rfind("rng_", 0) != 0,
               "save_train_state: extra metadata may not use the reserved key '", kv.first, "'");
    meta.push_back(kv);
  }
  io::save_safetensors(path, tensors, meta);
}

int64_t load_train_state(const std::string& path, Module& model, optim::Optimizer& opt,
                         io::Metadata* extra) {
  io::SafetensorsFile f = io::load_safetensors(path);
  const CheckpointMeta m{f.metadata, "load_train_state", path};
  const std::string format = m.has("format") ? m.str("format") : "";
  COIL_CHECK(format == kFormat, "load_train_state: '", path,
             "' is not a coil training state (format '", format, "')");
  const int64_t step = m.step("step");
  const RngState rng{m.u64("rng_seed"), m.u64("rng_offset")};
  NamedTensors model_state;
  optim::StateDict optim_state;
  split_checkpoint_tensors(f, "load_train_state", path, model_state, optim_state);
  // The model's tensors (pieces, for DTensors) by name: every one present with its shape and
  // dtype before anything is written; then the optimizer, which checks its own; then the copies.
  const NamedTensors mine = local_state(model);
  std::unordered_map<std::string, const Tensor*> from_file;
  for (const auto& [name, t] : model_state) from_file[name] = &t;
  COIL_CHECK(from_file.size() == mine.size(), "load_train_state: '", path, "' holds ",
             from_file.size(), " model tensors, the model has ", mine.size());
  for (const auto& [name, t] : mine) {
    auto it = from_file.find(name);
    COIL_CHECK(it != from_file.end(), "load_train_state: '", path, "' has no tensor '", name, "'");
    COIL_CHECK(it->second->sizes() == t.sizes() && it->second->dtype() == t.dtype(),
               "load_train_state: '", path, "': '", name, "' is ", it->second->dtype(), " ",
               it->second->shape_str(), ", the model's is ", t.dtype(), " ", t.shape_str());
  }
  try {
    opt.load_state_dict(optim_state);
  } catch (const Error& e) {
    fail("load_train_state: '", path, "': ", e.what());
  }
  {
    NoGradGuard ng;
    for (const auto& [name, t] : mine) const_cast<Tensor&>(t).copy_(*from_file.at(name));
  }
  set_rng_state(rng);
  if (extra) *extra = f.metadata;
  return step;
}

}  // namespace coil::nn
