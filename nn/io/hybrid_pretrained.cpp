// Hugging Face directories for HybridLM: config.json with GraniteMoeHybridConfig's field names,
// and model.safetensors or a sharded index.
#include <filesystem>

#include "../../core/error.h"
#include "../../dist/dtensor.h"
#include "../hybrid.h"
#include "file.h"
#include "json.h"
#include "safetensors.h"

namespace coil::nn {

HybridConfig HybridConfig::from_json(const std::string& text, const std::string& what) {
  json::Value j = json::parse(text, what);
  COIL_CHECK(j.is_object(), "HybridConfig: ", what, " must hold a JSON object, got ",
             j.type_name());
  const std::string type = j.get<std::string>("model_type", "granitemoehybrid");
  COIL_CHECK(type == "granitemoehybrid", "HybridConfig: ", what, " has model_type '", type,
             "', expected 'granitemoehybrid'");
  HybridConfig c;
  c.vocab_size = j.get<int64_t>("vocab_size", c.vocab_size);
  c.hidden_size = j.get<int64_t>("hidden_size", c.hidden_size);
  c.num_hidden_layers = j.get<int64_t>("num_hidden_layers", c.num_hidden_layers);
  if (const json::Value* lt = j.find("layer_types")) {
    COIL_CHECK(lt->is_array(), "HybridConfig: ", what, ": layer_types must be an array");
    for (const json::Value& v : lt->items())  // transformers 5 calls a mamba layer so
      c.layer_types.push_back(v.as_string() == "linear_attention" ? "mamba" : v.as_string());
  }
  c.num_local_experts = j.get<int64_t>("num_local_experts", c.num_local_experts);
  c.num_experts_per_tok = j.get<int64_t>("num_experts_per_tok", c.num_experts_per_tok);
  c.intermediate_size = j.get<int64_t>("intermediate_size", c.intermediate_size);
  c.shared_intermediate_size =
      j.get<int64_t>("shared_intermediate_size", c.shared_intermediate_size);
  c.router_aux_loss_coef = j.get<double>("router_aux_loss_coef", c.router_aux_loss_coef);
  c.mamba_n_heads = j.get<int64_t>("mamba_n_heads", c.mamba_n_heads);
  c.mamba_d_state = j.get<int64_t>("mamba_d_state", c.mamba_d_state);
  c.mamba_n_groups = j.get<int64_t>("mamba_n_groups", c.mamba_n_groups);
  c.mamba_d_conv = j.get<int64_t>("mamba_d_conv", c.mamba_d_conv);
  c.mamba_chunk_size = j.get<int64_t>("mamba_chunk_size", c.mamba_chunk_size);
  c.mamba_conv_bias = j.get<bool>("mamba_conv_bias", c.mamba_conv_bias);
  c.mamba_proj_bias = j.get<bool>("mamba_proj_bias", c.mamba_proj_bias);
  json::python_float_pair(j, "time_step_limit", "HybridConfig: " + what + ": time_step_limit",
                          c.time_step_limit_min, c.time_step_limit_max);
  COIL_CHECK(j.get<std::string>("hidden_act", "silu") == "silu", "HybridConfig: ", what,
             ": hidden_act must be \"silu\", got \"", j.get<std::string>("hidden_act", ""), "\"");
  const json::Value* dh = j.find("mamba_d_head");
  if (dh && dh->is_string()) {
    COIL_CHECK(dh->as_string() == "auto", "HybridConfig: ", what, ": mamba_d_head '",
               dh->as_string(), "' is neither a number nor \"auto\"");
    const int64_t expand = j.get<int64_t>("mamba_expand", 2);
    int64_t inner = 0;
    COIL_CHECK(expand > 0 && c.hidden_size > 0 && c.mamba_n_heads > 0 &&
                   !__builtin_mul_overflow(expand, c.hidden_size, &inner),
               "HybridConfig: ", what, ": mamba_d_head \"auto\" needs positive mamba_expand ",
               expand, ", hidden_size ", c.hidden_size, " and mamba_n_heads ", c.mamba_n_heads,
               " (and their product in range)");
    c.mamba_d_head = inner / c.mamba_n_heads;
  } else if (dh) {
    c.mamba_d_head = dh->as_int();
  }
  c.rms_norm_eps = j.get<double>("rms_norm_eps", c.rms_norm_eps);
  c.embedding_multiplier = j.get<double>("embedding_multiplier", c.embedding_multiplier);
  c.residual_multiplier = j.get<double>("residual_multiplier", c.residual_multiplier);
  c.logits_scaling = j.get<double>("logits_scaling", c.logits_scaling);
  c.tie_word_embeddings = j.get<bool>("tie_word_embeddings", c.tie_word_embeddings);
  c.pad_token_id = j.get<int64_t>("pad_token_id", c.pad_token_id);  // null: none
  c.initializer_range = j.get<double>("initializer_range", c.initializer_range);
  c.validate();
  return c;
}

HybridConfig HybridConfig::load(const std::string& path) {
  return from_json(io::read_file(path), path);
}

std::string HybridConfig::to_json() const {
  json::Value j = json::Value::object();
  j.set("architectures", json::Value(std::vector<json::Value>{"GraniteMoeHybridForCausalLM"}));
  j.set("model_type", "granitemoehybrid");
  j.set("vocab_size", vocab_size);
  j.set("hidden_size", hidden_size);
  j.set("num_hidden_layers", num_hidden_layers);
  std::vector<json::Value> types;
  for (int64_t i = 0; i < num_hidden_layers; ++i)
    types.emplace_back(layer_types.empty() ? std::string("mamba") : layer_types[i]);
  j.set("layer_types", json::Value(types));
  j.set("num_local_experts", num_local_experts);
  j.set("num_experts_per_tok", num_experts_per_tok);
  j.set("intermediate_size", intermediate_size);
  j.set("shared_intermediate_size", shared_intermediate_size);
  j.set("router_aux_loss_coef", router_aux_loss_coef);
  j.set("mamba_n_heads", mamba_n_heads);
  j.set("mamba_d_head", mamba_d_head);
  j.set("mamba_d_state", mamba_d_state);
  j.set("mamba_n_groups", mamba_n_groups);
  j.set("mamba_d_conv", mamba_d_conv);
  j.set("mamba_expand", mamba_n_heads * mamba_d_head / hidden_size);
  j.set("mamba_chunk_size", mamba_chunk_size);
  j.set("mamba_conv_bias", mamba_conv_bias);
  j.set("mamba_proj_bias", mamba_proj_bias);
  j.set("time_step_limit",
        json::Value(std::vector<json::Value>{time_step_limit_min, time_step_limit_max}));
  j.set("rms_norm_eps", rms_norm_eps);
  j.set("embedding_multiplier", embedding_multiplier);
  j.set("residual_multiplier", residual_multiplier);
  j.set("logits_scaling", logits_scaling);
  j.set("tie_word_embeddings", tie_word_embeddings);
  j.set("pad_token_id", pad_token_id >= 0 ? json::Value(pad_token_id) : json::Value());
  j.set("initializer_range", initializer_range);
  j.set("hidden_act", "silu");
  j.set("torch_dtype", "float32");
  return j.dump(2) + "\n";
}

void HybridConfig::save(const std::string& path) const {
  io::write_text_file_atomic(path, to_json());
}

std::shared_ptr<HybridLM> HybridLM::from_pretrained(const std::string& dir, DType dtype) {
  namespace fs = std::filesystem;
  COIL_CHECK(fs::is_directory(dir), "HybridLM::from_pretrained: '", dir, "' is not a directory");
  HybridConfig c = HybridConfig::load((fs::path(dir) / "config.json").string());
  io::SafetensorsFile weights = io::load_safetensors_dir(dir);
  std::shared_ptr<HybridLM> m;
  {
    SkipInitGuard skip;  // every value comes from the file
    m = std::make_shared<HybridLM>(c, dtype);
  }
  try {
    m->load_state_dict(weights.tensors, /*strict=*/true);
  } catch (const Error& e) {
    fail("HybridLM::from_pretrained: '", dir, "': ", e.what());
  }
  return m;
}

void HybridLM::save_pretrained(const std::string& dir) const {
  namespace fs = std::filesystem;
  const NamedTensors state = state_dict_untied();
  for (const auto& [name, t] : state)
    COIL_CHECK(!dist::is_dtensor(t), "HybridLM::save_pretrained: '", name,
               "' is sharded over ranks (expert parallelism); save before set_expert_parallel, "
               "or use io::save_distributed");
  std::error_code ec;
  fs::create_directories(dir, ec);
  COIL_CHECK(!ec, "HybridLM::save_pretrained: cannot create '", dir, "': ", ec.message());
  config_.save((fs::path(dir) / "config.json").string());
  io::save_safetensors_sharded(dir, state, int64_t(5) << 30);
}

}  // namespace coil::nn
