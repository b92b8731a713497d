#include "hybrid.h"

#include "../autograd/grad_mode.h"
#include "../ops/ops.h"

namespace coil::nn {

void HybridConfig::validate() const {
  COIL_CHECK(vocab_size > 0 && hidden_size > 0 && num_hidden_layers > 0,
             "HybridConfig: vocab_size, hidden_size and num_hidden_layers must be positive");
  // Layers are built (and written to config.json) one by one: an absurd count would hang.
  COIL_CHECK(num_hidden_layers <= MambaConfig::kMaxLayers, "HybridConfig: num_hidden_layers ",
             num_hidden_layers, " is more than ", MambaConfig::kMaxLayers);
  COIL_CHECK(layer_types.empty() || static_cast<int64_t>(layer_types.size()) == num_hidden_layers,
             "HybridConfig: layer_types has ", layer_types.size(), " entries for ",
             num_hidden_layers, " layers");
  for (size_t i = 0; i < layer_types.size(); ++i)
    COIL_CHECK(layer_types[i] == "mamba" || layer_types[i] == "linear_attention",
               "HybridConfig: layer ", i, " is '", layer_types[i],
               "': coil builds mamba layers only (attention layers are not supported)");
  for (auto [field, v] : {std::pair<const char*, int64_t>{"mamba_n_heads", mamba_n_heads},
                          {"mamba_d_head", mamba_d_head},
                          {"mamba_d_state", mamba_d_state},
                          {"mamba_n_groups", mamba_n_groups},
                          {"mamba_d_conv", mamba_d_conv},
                          {"mamba_chunk_size", mamba_chunk_size}})
    COIL_CHECK(v > 0, "HybridConfig: ", field, " must be positive, got ", v);
  int64_t d_inner = 0;
  COIL_CHECK(!__builtin_mul_overflow(mamba_n_heads, mamba_d_head, &d_inner),
             "HybridConfig: mamba_n_heads ", mamba_n_heads, " x mamba_d_head ", mamba_d_head,
             " is out of range");
  COIL_CHECK(d_inner % hidden_size == 0, "HybridConfig: mamba_n_heads * mamba_d_head = ", d_inner,
             " must be a multiple of hidden_size ", hidden_size);
  COIL_CHECK(pad_token_id >= -1 && pad_token_id < vocab_size, "HybridConfig: pad_token_id ",
             pad_token_id, " is not a token of the vocabulary of ", vocab_size, " (-1: none)");
  COIL_CHECK(num_local_experts >= 0 && (num_local_experts == 0 || num_experts_per_tok >= 1),
             "HybridConfig: num_local_experts ", num_local_experts, ", num_experts_per_tok ",
             num_experts_per_tok);
}

MambaConfig HybridConfig::mamba_config() const {
  MambaConfig m;
  m.model_type = "mamba2";
  m.vocab_size = vocab_size;
  m.hidden_size = hidden_size;
  m.num_hidden_layers = num_hidden_layers;
  m.state_size = mamba_d_state;
  m.expand = mamba_n_heads * mamba_d_head / hidden_size;
  m.num_heads = mamba_n_heads;
  m.head_dim = mamba_d_head;
  m.n_groups = mamba_n_groups;
  m.conv_kernel = mamba_d_conv;
  m.chunk_size = mamba_chunk_size;
  m.use_bias = mamba_proj_bias;
  m.use_conv_bias = mamba_conv_bias;
  m.layer_norm_epsilon = rms_norm_eps;
  m.time_step_limit_min = time_step_limit_min;
  m.time_step_limit_max = time_step_limit_max;
  m.norm_per_group = true;  // transformers' GraniteMoeHybridRMSNormGated: d_inner / n_groups
  return m;
}

HybridBlock::HybridBlock(const HybridConfig& c, DType dtype)
    : residual_multiplier(c.residual_multiplier) {
  input_layernorm = register_module(
      "input_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, dtype));
  mamba = register_module("mamba", std::make_shared<Mamba2>(c.mamba_config(), dtype));
  post_attention_layernorm = register_module(
      "post_attention_layernorm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, dtype));
  if (c.num_local_experts > 0) {
    MoEOptions o;
    o.router.num_experts = c.num_local_experts;
    o.router.top_k = c.num_experts_per_tok;
    o.router.normalize_topk = true;  // Granite: softmax over the k selected logits
    o.router.aux_loss_coef = c.router_aux_loss_coef;
    o.ffn_hidden = c.intermediate_size;
    block_sparse_moe =
        register_module("block_sparse_moe", std::make_shared<MoE>(c.hidden_size, o, dtype));
  }
  if (c.shared_intermediate_size > 0)
    shared_mlp = register_module(
        "shared_mlp", std::make_shared<GatedMLP>(c.hidden_size, c.shared_intermediate_size, dtype));
}

Tensor HybridBlock::forward(const Tensor& x) const {
  Tensor h = x + mamba->forward(input_layernorm->forward(x)) * residual_multiplier;
  Tensor n = post_attention_layernorm->forward(h);
  Tensor f;
  if (block_sparse_moe) f = block_sparse_moe->forward(n);
  if (shared_mlp) f = f.defined() ? f + shared_mlp->forward(n) : shared_mlp->forward(n);
  return f.defined() ? h + f * residual_multiplier : h;
}

HybridModel::HybridModel(const HybridConfig& c, DType dtype) {
  embed_tokens = register_module(
      "embed_tokens",
      std::make_shared<Embedding>(c.vocab_size, c.hidden_size, dtype, c.initializer_range));
  if (c.pad_token_id >= 0) {
    embed_tokens->padding_idx = c.pad_token_id;
    NoGradGuard ng;
    embed_tokens->weight.select(0, c.pad_token_id).zero_();
  }
  layers = register_module("layers", std::make_shared<ModuleList>());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    layers->push_back(std::make_shared<HybridBlock>(c, dtype));
  norm = register_module("norm", std::make_shared<RMSNorm>(c.hidden_size, c.rms_norm_eps, dtype));
}

HybridLM::HybridLM(const HybridConfig& config, DType dtype) : config_(config) {
  config_.validate();
  model = register_module("model", std::make_shared<HybridModel>(config_, dtype));
  // a tied head gets the embedding itself (built with one row: no init thrown away)
  const bool tied = config_.tie_word_embeddings;
  lm_head = register_module(
      "lm_head",
      std::make_shared<Linear>(config_.hidden_size, tied ? 1 : config_.vocab_size, false, dtype));
  if (tied) lm_head->weight = model->embed_tokens->weight;
}

Tensor HybridLM::forward(const Tensor& ids) const {
  COIL_CHECK(ids.dim() == 2, "HybridLM: ids must be (batch, L), got ", ids.shape_str());
  Tensor x = model->embed_tokens->forward(ids) * config_.embedding_multiplier;
  for (const auto& [name, layer] : model->layers->named_children())
    x = std::static_pointer_cast<HybridBlock>(layer)->forward(x);
  Tensor logits = lm_head->forward(model->norm->forward(x));
  return config_.logits_scaling == 1.0 ? logits : logits / config_.logits_scaling;
}

Tensor HybridLM::aux_loss() const {
  Tensor total = zeros({}, Options(kF32));
  for (const auto& [name, layer] : model->layers->named_children()) {
    auto b = std::static_pointer_cast<HybridBlock>(layer);
    if (b->block_sparse_moe && b->block_sparse_moe->aux_loss().defined())
      total = total + b->block_sparse_moe->aux_loss().to(kF32);
  }
  return total;
}

void HybridLM::set_expert_parallel(const dist::ExpertParallel& ep) {
  for (const auto& [name, layer] : model->layers->named_children()) {
    auto b = std::static_pointer_cast<HybridBlock>(layer);
    if (b->block_sparse_moe) b->block_sparse_moe->set_expert_parallel(ep);
  }
}

}  // namespace coil::nn
