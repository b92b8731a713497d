// The hybrid Mamba + MoE language model of IBM's Granite 4.0-H, as Hugging Face's
// GraniteMoeHybrid with mamba layers only (MATH.md section 7): blocks of (RMSNorm, Mamba-2 mixer,
// residual, RMSNorm, MoE + shared MLP, residual), embedding, residual and logit multipliers.
//
//   HybridLM
//     model.embed_tokens                          Embedding (vocab, d_model)
//     model.layers.{i}.input_layernorm            RMSNorm
//     model.layers.{i}.mamba                      Mamba2 (in_proj, conv1d, dt_bias, A_log, D,
//                                                 norm, out_proj)
//     model.layers.{i}.post_attention_layernorm   RMSNorm
//     model.layers.{i}.block_sparse_moe           MoE (router.layer, input_linear, output_linear)
//     model.layers.{i}.shared_mlp                 GatedMLP (input_linear, output_linear)
//     model.norm                                  RMSNorm
//     lm_head                                     tied to the embedding unless told otherwise
//
// Attention layers (layer_types "attention") are not part of coil: such a config is rejected.
#pragma once
#include <limits>
#include <string>
#include <vector>

#include "mamba.h"
#include "moe.h"

namespace coil::nn {

// Field names are Hugging Face's GraniteMoeHybridConfig.
struct HybridConfig {
  int64_t vocab_size = 256;
  int64_t hidden_size = 256;
  int64_t num_hidden_layers = 4;
  // "mamba" (transformers 5 writes "linear_attention", read as "mamba") per layer; empty: all
  std::vector<std::string> layer_types;
  int64_t num_local_experts = 8;  // 0: no MoE, the shared MLP alone is the feed-forward
  int64_t num_experts_per_tok = 2;
  int64_t intermediate_size = 512;         // each expert's hidden size
  int64_t shared_intermediate_size = 512;  // 0: no shared MLP (transformers: a zero-width one)
  double router_aux_loss_coef = 0;         // coil's Switch loss (MATH.md 6), 0: off
  int64_t mamba_n_heads = 8, mamba_d_head = 64, mamba_d_state = 64, mamba_n_groups = 1;
  int64_t mamba_d_conv = 4, mamba_chunk_size = 64;
  bool mamba_conv_bias = true, mamba_proj_bias = false;
  double time_step_limit_min = 0.0;  // dt clamp, time_step_limit in config.json
  double time_step_limit_max = std::numeric_limits<double>::infinity();
  double rms_norm_eps = 1e-6;
  double embedding_multiplier = 1.0, residual_multiplier = 1.0, logits_scaling = 1.0;
  bool tie_word_embeddings = true;
  // The embedding row that gets no gradient (and starts at zero), as transformers' padding_idx;
  // -1 (null in config.json): none.
  int64_t pad_token_id = -1;
  double initializer_range = 0.02;

  void validate() const;             // coil::Error naming the offending field
  MambaConfig mamba_config() const;  // the mixer's config
  // config.json as transformers writes it (model_type "granitemoehybrid"); a field left out
  // keeps coil's default above. mamba_d_head "auto" is mamba_expand * hidden / mamba_n_heads.
  static HybridConfig from_json(const std::string& text, const std::string& what = "config");
  static HybridConfig load(const std::string& path);
  std::string to_json() const;
  void save(const std::string& path) const;  // written to a temporary name, then renamed
};

class HybridBlock : public Module {
 public:
  HybridBlock(const HybridConfig& c, DType dtype = kF32);
  Tensor forward(const Tensor& x) const;
  std::shared_ptr<RMSNorm> input_layernorm, post_attention_layernorm;
  std::shared_ptr<Mamba2> mamba;
  std::shared_ptr<MoE> block_sparse_moe;  // null for a dense block
  std::shared_ptr<GatedMLP> shared_mlp;   // the shared experts, or the whole dense MLP
  double residual_multiplier;
};

class HybridModel : public Module {
 public:
  HybridModel(const HybridConfig& c, DType dtype = kF32);
  std::shared_ptr<Embedding> embed_tokens;
  std::shared_ptr<ModuleList> layers;
  std::shared_ptr<RMSNorm> norm;
};

class HybridLM : public Module {
 public:
  explicit HybridLM(const HybridConfig& config, DType dtype = kF32);
  // ids (batch, L) -> logits (batch, L, vocab)
  Tensor forward(const Tensor& ids) const;
  // The MoE layers' balancing losses of the last forward, summed (a scalar).
  Tensor aux_loss() const;
  // Experts spread over ep.group in every MoE layer (dist/expert_parallel.h).
  void set_expert_parallel(const dist::ExpertParallel& ep);
  // Hugging Face directory: config.json + model.safetensors (or a sharded index). Saving needs
  // whole tensors: call it before set_expert_parallel (or use io::save_distributed).
  static std::shared_ptr<HybridLM> from_pretrained(const std::string& dir, DType dtype = kF32);
  void save_pretrained(const std::string& dir) const;
  const HybridConfig& config() const { return config_; }
  std::shared_ptr<HybridModel> model;
  std::shared_ptr<Linear> lm_head;

 private:
  HybridConfig config_;
};

}  // namespace coil::nn
