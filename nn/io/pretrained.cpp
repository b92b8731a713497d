// Hugging Face directories for MambaLM: config.json (MambaConfig / Mamba2Config field names) and
// model.safetensors or a sharded index.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "../../core/error.h"
#include "../mamba.h"
#include "../layers.h"
#include "file.h"
#include "json.h"
#include "safetensors.h"

namespace coil::nn {

MambaConfig MambaConfig::from_json(const std::string& text, const std::string& what) {
  json::Value j = json::parse(text, what);
  COIL_CHECK(j.is_object(), "MambaConfig: ", what, " must hold a JSON object, got ", j.type_name());
  MambaConfig c;
  c.model_type = j.get<std::string>("model_type", "mamba");
  const bool m2 = c.model_type == "mamba2";
  // A field config.json leaves out has the default of transformers' config class (5.24.0, the
  // version tests/fixtures pins), which is not always coil's mamba-130m default.
  c.num_hidden_layers = m2 ? 64 : 32;
  if (m2) {  // Mamba2Config's defaults where they differ from MambaConfig's
    c.vocab_size = 32768;
    c.hidden_size = 4096;
    c.state_size = 128;
    c.tie_word_embeddings = false;
    c.n_groups = 8;
    c.num_heads = 128;
    c.pad_token_id = 1;
    c.eos_token_id = 2;
  }
  // Hub checkpoints carry no field for the gated norm's grouping: per group (the struct's
  // default) is what transformers computes; coil's own config.json writes norm_per_group.
  c.vocab_size = j.get<int64_t>("vocab_size", c.vocab_size);
  c.hidden_size = j.get<int64_t>("hidden_size", c.hidden_size);
  c.state_size = j.get<int64_t>("state_size", c.state_size);
  c.num_hidden_layers = j.get<int64_t>("num_hidden_layers", c.num_hidden_layers);
  c.expand = j.get<int64_t>("expand", c.expand);
  c.conv_kernel = j.get<int64_t>("conv_kernel", c.conv_kernel);
  c.use_bias = j.get<bool>("use_bias", c.use_bias);
  c.use_conv_bias = j.get<bool>("use_conv_bias", c.use_conv_bias);
  if (const json::Value* r = j.find("time_step_rank"); r && !r->is_null()) {
    if (r->is_string()) {
      COIL_CHECK(r->as_string() == "auto", "MambaConfig: ", what,
                 ": time_step_rank must be an integer or \"auto\", got \"", r->as_string(), "\"");
      c.time_step_rank = 0;
    } else {
      c.time_step_rank = j.get<int64_t>("time_step_rank", 0);
    }
  }
  c.time_step_min = j.get<double>("time_step_min", c.time_step_min);
  c.time_step_max = j.get<double>("time_step_max", c.time_step_max);
  c.time_step_floor = j.get<double>("time_step_floor", c.time_step_floor);
  c.time_step_scale = j.get<double>("time_step_scale", c.time_step_scale);
  c.layer_norm_epsilon = j.get<double>("layer_norm_epsilon", c.layer_norm_epsilon);
  c.residual_in_fp32 = j.get<bool>("residual_in_fp32", c.residual_in_fp32);
  c.tie_word_embeddings = j.get<bool>("tie_word_embeddings", c.tie_word_embeddings);
  c.pad_vocab_size_multiple = j.get<int64_t>("pad_vocab_size_multiple", c.pad_vocab_size_multiple);
  c.bos_token_id = j.get<int64_t>("bos_token_id", c.bos_token_id);
  c.eos_token_id = j.get<int64_t>("eos_token_id", c.eos_token_id);
  c.pad_token_id = j.get<int64_t>("pad_token_id", c.pad_token_id);
  c.num_heads = j.get<int64_t>("num_heads", c.num_heads);
  c.head_dim = j.get<int64_t>("head_dim", c.head_dim);
  c.n_groups = j.get<int64_t>("n_groups", c.n_groups);
  c.chunk_size = j.get<int64_t>("chunk_size", c.chunk_size);
  const std::string where = "MambaConfig: " + what + ": ";
  json::python_float_pair(j, "time_step_limit", where + "time_step_limit", c.time_step_limit_min,
                          c.time_step_limit_max);
  json::python_float_pair(j, "A_init_range", where + "A_init_range", c.A_init_min, c.A_init_max);
  c.norm_per_group = j.get<bool>("norm_per_group", c.norm_per_group);
  c.selective = j.get<bool>("selective", c.selective);
  COIL_CHECK(j.get<std::string>("hidden_act", "silu") == "silu", "MambaConfig: ", what,
             ": hidden_act must be \"silu\", got \"", j.get<std::string>("hidden_act", ""), "\"");
  if (m2) {
    COIL_CHECK(j.get<bool>("rms_norm", true), "MambaConfig: ", what,
               ": rms_norm false (no gated norm) is not supported");
    COIL_CHECK(!j.get<bool>("norm_before_gate", false), "MambaConfig: ", what,
               ": norm_before_gate true is not supported");
  }
  c.validate();
  return c;
}

MambaConfig MambaConfig::load(const std::string& path) {
  return from_json(io::read_file(path), path);
}

std::string MambaConfig::to_json() const {
  json::Value j = json::Value::object();
  const bool m2 = is_mamba2();
  j.set("architectures",
        json::Value(std::vector<json::Value>{m2 ? "Mamba2ForCausalLM" : "MambaForCausalLM"}));
  j.set("model_type", model_type);
  j.set("vocab_size", vocab_size);
  j.set("hidden_size", hidden_size);
  j.set("state_size", state_size);
  j.set("num_hidden_layers", num_hidden_layers);
  j.set("expand", expand);
  j.set("conv_kernel", conv_kernel);
  if (!m2) j.set("intermediate_size", intermediate_size());
  if (!selective) j.set("selective", false);
  j.set("use_bias", use_bias);
  j.set("use_conv_bias", use_conv_bias);
  j.set("hidden_act", "silu");
  if (time_step_rank > 0)
    j.set("time_step_rank", time_step_rank);
  else
    j.set("time_step_rank", "auto");
  j.set("time_step_min", time_step_min);
  j.set("time_step_max", time_step_max);
  j.set("time_step_floor", time_step_floor);
  j.set("time_step_scale", time_step_scale);
  j.set("time_step_init_scheme", "random");
  j.set("layer_norm_epsilon", layer_norm_epsilon);
  j.set("residual_in_fp32", residual_in_fp32);
  j.set("tie_word_embeddings", tie_word_embeddings);
  j.set("pad_vocab_size_multiple", pad_vocab_size_multiple);
  j.set("bos_token_id", bos_token_id);
  j.set("eos_token_id", eos_token_id);
  j.set("pad_token_id", pad_token_id);
  if (m2) {
    j.set("num_heads", num_heads);
    j.set("head_dim", head_dim);
    j.set("n_groups", n_groups);
    j.set("chunk_size", chunk_size);
    j.set("time_step_limit",
          json::Value(std::vector<json::Value>{time_step_limit_min, time_step_limit_max}));
    j.set("A_init_range", json::Value(std::vector<json::Value>{A_init_min, A_init_max}));
    j.set("rms_norm", true);
    j.set("norm_per_group", norm_per_group);
  }
  j.set("torch_dtype", "float32");
  return j.dump(2) + "\n";
}

void MambaConfig::save(const std::string& path) const {
  io::write_text_file_atomic(path, to_json());
}

std::shared_ptr<MambaLM> MambaLM::from_pretrained(const std::string& dir, DType dtype) {
  namespace fs = std::filesystem;
  COIL_CHECK(fs::is_directory(dir), "MambaLM::from_pretrained: '", dir, "' is not a directory");
  MambaConfig c = MambaConfig::load((fs::path(dir) / "config.json").string());
  io::SafetensorsFile weights = io::load_safetensors_dir(dir);
  std::shared_ptr<MambaLM> m;
  {
    SkipInitGuard skip;  // every value comes from the file
    m = std::make_shared<MambaLM>(c, dtype);
  }
  try {
    m->load_state_dict(weights.tensors, /*strict=*/true);
  } catch (const Error& e) {
    fail("MambaLM::from_pretrained: '", dir, "': ", e.what());
  }
  return m;
}

void MambaLM::save_pretrained(const std::string& dir) const {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  COIL_CHECK(!ec, "MambaLM::save_pretrained: cannot create '", dir, "': ", ec.message());
  config_.save((fs::path(dir) / "config.json").string());
  // A tied head is stored once, under the embedding's name, as transformers does.
  io::save_safetensors_sharded(dir, state_dict_untied(), int64_t(5) << 30);
}

}  // namespace coil::nn
